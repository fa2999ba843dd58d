"""Helpers for the signed-approval tests: approver key files, a hub root with approval
delegations, a submitted release."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from hub.db import Release
from hub.services.approvers import register_key
from hub.services.context import HubKeys
from hub.services.releases import create_product, create_release, submit_release
from signing.delegations import Approver, Delegation
from signing.keyfile import encode_private_key, export_public, parse_key_info
from signing.keys import SigningKey
from signing.roots import KeyEntry, RootDocument, TrustedRoot, sign_root
from tests.hub.conftest import Keys, World


def public_file(key: SigningKey, role: str = "approver", label: str = "") -> bytes:
    """The bytes of ``key``'s public key file (as ``keys generate`` writes it)."""
    data = encode_private_key(key, role=role, label=label or role, passphrase=None,
                              insecure_no_passphrase=True)
    return export_public(parse_key_info(data))


def private_file(key: SigningKey, role: str = "approver") -> bytes:
    """``key``'s private key file, stored without a passphrase."""
    return encode_private_key(key, role=role, label=role, passphrase=None,
                              insecure_no_passphrase=True)


def register(world: World, username: str, key: SigningKey) -> None:
    register_key(world.ctx(username), username, public_file(key))
    world.session.commit()


def submitted(world: World, release_dir: Callable[..., Path]) -> Release:
    ctx = world.ctx("dev")
    create_product(ctx, "hello")
    rel = create_release(ctx, release_dir())
    submit_release(ctx, rel)
    world.session.commit()
    return rel


def with_delegations(
    keys: Keys,
    approvals: Mapping[str, Delegation],
    approver_keys: Mapping[str, SigningKey],
    *,
    approval_key: SigningKey | None = None,
) -> HubKeys:
    """The test hub's keys with a root version 1 that lists ``approver_keys`` and
    delegates ``approvals`` (and the approval role when ``approval_key``)."""
    doc = TrustedRoot.pin(keys.hub.root_envelope).document
    entries = dict(doc.keys) | {k.key_id: KeyEntry(k.public) for k in approver_keys.values()}
    roles = dict(doc.roles)
    if approval_key is not None:
        entries[approval_key.key_id] = KeyEntry(approval_key.public)
        roles["approval"] = ((approval_key.key_id,), 1)
    doc = replace(doc, keys=entries, roles=roles, approvals=dict(approvals))
    return replace(keys.hub, root_envelope=sign_root(doc, [keys.root]),
                   approval_key=approval_key)


def signed(threshold: int, min_groups: int, people: Mapping[str, tuple[SigningKey, str]]
           ) -> Delegation:
    """A mode-signed delegation of ``people`` (name -> (key, group))."""
    return Delegation("signed", threshold, min_groups,
                      {k.key_id: Approver(name, group) for name, (k, group) in people.items()})


__all__ = ["RootDocument", "private_file", "public_file", "register", "signed", "submitted",
           "with_delegations"]
