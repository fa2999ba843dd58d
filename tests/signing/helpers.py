"""Helpers for the signing tests: a fixed clock, a fast key-file KDF cost, key rings and root
documents built in memory (no files unless a test asks for them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from signing.envelope import TYPE_ROOT, sign_envelope
from signing.keyfile import KdfParams
from signing.keys import SigningKey
from signing.roots import KeyEntry, RootDocument, TrustedRoot, sign_root
from signing.strictjson import dumps_canonical

NOW = 1_800_000_000  # Unix seconds (2027-01-15), the injected clock of every test
DAY = 86_400
# The cheapest Argon2id cost libsodium allows: only for tests, never for real keys.
FAST_KDF = KdfParams(opslimit=1, memlimit=8192)


@dataclass
class Ring:
    """Named signing keys, made deterministically from a label so failures are reproducible."""

    keys: dict[str, SigningKey] = field(default_factory=dict)

    def __getitem__(self, name: str) -> SigningKey:
        if name not in self.keys:
            seed = name.encode().ljust(32, b".")[:32]
            self.keys[name] = SigningKey(seed)
        return self.keys[name]


def root_doc(
    ring: Ring,
    *,
    version: int = 1,
    root: Sequence[str] = ("root1",),
    release: Sequence[str] = ("release1",),
    audit: Sequence[str] = ("audit1",),
    thresholds: tuple[int, int, int] = (1, 1, 1),
    issued: int = NOW - DAY,
    expires: int = NOW + 365 * DAY,
    key_expires: Mapping[str, int] | None = None,
    revoked: Sequence[str] = (),
    hub_id: str = "hub-1",
) -> RootDocument:
    """A root document listing ``ring`` keys by name (revoked names become key ids)."""
    exp = dict(key_expires or {})
    keys: dict[str, KeyEntry] = {}
    roles: dict[str, tuple[tuple[str, ...], int]] = {}
    for role, names, thr in zip(("root", "release", "audit"), (root, release, audit),
                                thresholds, strict=True):
        ids = []
        for name in names:
            key = ring[name]
            keys[key.key_id] = KeyEntry(key.public, exp.get(name))
            ids.append(key.key_id)
        roles[role] = (tuple(ids), thr)
    return RootDocument(hub_id, version, issued, expires, keys, roles,
                        frozenset(ring[n].key_id for n in revoked))


def signed_root(doc: RootDocument, ring: Ring, signers: Sequence[str]) -> bytes:
    return sign_root(doc, [ring[n] for n in signers])


def sign_root_json(doc_json: dict[str, object], ring: Ring, signers: Sequence[str]) -> bytes:
    """Sign a hand-written root payload (for documents ``RootDocument`` cannot express)."""
    return sign_envelope(TYPE_ROOT, dumps_canonical(doc_json), [ring[n] for n in signers])


def snapshot(trusted: TrustedRoot) -> tuple[int, bytes, bytes]:
    """What must not change when an update is refused."""
    return trusted.version, trusted.envelope, trusted.document.to_bytes()
