"""The agent's approval check (agent/approvalcheck.py, docs/agent.md): a verified bundle whose
approvals do not meet the delegation of the agent's OWN environment is refused before
acceptance — a signed ``rejected`` result naming the bundle and the reason, nothing run, the
sequence not consumed, the files quarantined. In-process agent with an injected clock; the
real-process flow is tests/e2e/test_agent_approvals.py."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.service import Agent, ProcessOutcome
from bundle.manifest import Manifest, Target
from bundle.reader import ExpectResult, VerifierState, verify_path
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from signing.approvals import (
    ApprovalDocument,
    AttestationDocument,
    AttestedApprover,
    sign_approval,
    sign_attestation,
)
from signing.delegations import Approver, Delegation
from signing.keys import SigningKey
from signing.roots import KeyEntry, RootDocument, sign_root
from tests.agent.conftest import Clock
from tests.fixtures.trust import NOW, TrustKit, make_trust

DAY = 86400
PEOPLE = {"alice": "dba", "bob": "ops", "carol": "dba", "dave": "sec", "erin": "ops"}


@dataclass
class Site:
    agent: Agent
    kit: TrustKit
    people: dict[str, SigningKey]
    tmp: Path
    content_hash: str
    sent: dict[str, tuple[bytes, ...]] = field(default_factory=dict)


def _release(tmp: Path, ran: Path, extra_step: bool = False) -> Path:
    d = tmp / f"rel-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    (d / "a.sh").write_text(f'echo ran >> "{ran}"\n')
    toml = ('format = 1\n[release]\nproduct = "billing"\nversion = "1.4.0"\n\n'
            '[[steps]]\nname = "one"\nkind = "shell"\nscript = "a.sh"\n')
    if extra_step:
        toml += '\n[[steps]]\nname = "two"\nkind = "shell"\nscript = "a.sh"\n'
    (d / "release.toml").write_text(toml)
    return d


def _make_site(tmp: Path, environment: str | None, approvals: dict[str, Delegation] | None,
               people: dict[str, SigningKey], *, revoked: Sequence[str] = (),
               expired: Sequence[str] = ()) -> Site:
    approval_key = SigningKey.generate()
    kit = make_trust(approvals=approvals, approval_key=approval_key, approver_keys=[
        KeyEntry(k.public, NOW - 1 if n in expired else None) for n, k in people.items()])
    if revoked:
        # A revoked key is listed in the root's revoked (made directly: the kit has one root).
        doc = kit.trusted.document
        doc = replace(doc, revoked=frozenset(people[n].key_id for n in revoked))
        kit = replace(kit, root_envelope=sign_root(RootDocument.from_bytes(doc.to_bytes()),
                                                   [kit.root_key]))
    home = tmp / "home"
    init_home(home, root_file=kit.write_root(tmp), agent_id="site-01",
              environment=environment, now=NOW)
    agent = Agent(load_config(home), clock=Clock())
    src = load_release(_release(tmp, tmp / "ran"))
    return Site(agent, kit, people, tmp, src.content_hash)


def _signed(ring: dict[str, SigningKey], threshold: int = 2, min_groups: int = 2,
            names: Sequence[str] = tuple(PEOPLE)) -> Delegation:
    return Delegation("signed", threshold, min_groups,
                      {ring[n].key_id: Approver(n, PEOPLE[n]) for n in names})


@pytest.fixture
def ring() -> dict[str, SigningKey]:
    return {n: SigningKey.generate() for n in PEOPLE}


@pytest.fixture
def site(tmp_path: Path, ring: dict[str, SigningKey]) -> Any:
    s = _make_site(tmp_path, "prod", {"prod": _signed(ring), "hubbed": Delegation(
        "hub", 2, 2, {})}, ring, revoked=("dave",), expired=("erin",))
    yield s
    s.agent.close()


def approve(s: Site, name: str, *, key: SigningKey | None = None, **kw: Any) -> bytes:
    fields: dict[str, Any] = dict(product="billing", version="1.4.0",
                                  content_hash=s.content_hash, environments=("prod",),
                                  approver=name, at=NOW - 3600, expires=NOW + 7 * DAY)
    fields.update(kw)
    fields["environments"] = tuple(fields["environments"])
    return sign_approval(ApprovalDocument(**fields), key or s.people[name])


def _bundle(s: Site, envelopes: Sequence[bytes], *, author: str = "zoe",
            environment: str | None = None, extra_step: bool = False,
            change: Callable[[Manifest], Manifest] | None = None,
            roots: Sequence[bytes] = (), root_version: int = 1) -> Path:
    rel = _release(s.tmp, s.tmp / "ran", extra_step)
    manifest, files = release_manifest(
        load_release(rel), bundle_id=f"b-{uuid.uuid4().hex[:8]}",
        issuer=s.kit.release_key.key_id,
        target=Target(agents=("site-01",), environment=environment),
        root_version=root_version,
        sequence=1, created=NOW - 60, expires=NOW + DAY, counter=1, author=author,
        approval_envelopes=envelopes)
    if change is not None:
        manifest = change(manifest)
    out = s.tmp / f"{manifest.bundle_id}.tgb"
    s.sent[out.name] = manifest.approvals
    return write_bundle(out, manifest, files, [s.kit.release_key], roots=roots).paths[0]


def _process(s: Site, bundle: Path) -> ProcessOutcome:
    dest = s.agent.config.inbox / bundle.name
    shutil.copyfile(bundle, dest)
    return s.agent.process(ReadyItem(dest.name, (dest,), dest.stat().st_size, "single", 0.0))


def _assert_refused(s: Site, bundle: Path, *words: str) -> None:
    out = _process(s, bundle)
    assert out.status == "rejected", out.summary
    for w in words:
        assert w in out.summary, out.summary
    assert "is refused before anything ran, and its sequence is not used up" in out.summary
    # Nothing ran, nothing was accepted, the sequence is untouched, nothing left in staging,
    # the file is quarantined with its reason.
    assert not (s.tmp / "ran").exists()
    assert s.agent.journal.bundles() == []
    assert s.agent.journal.trust(s.kit.hub_id).sequence == 0
    assert not list(s.agent.config.staging.iterdir())
    assert not (s.agent.config.inbox / bundle.name).exists()
    assert (s.agent.config.quarantine / f"{bundle.name}.reason.txt").exists()
    # The signed result names the verified bundle and the check.
    staging = s.tmp / f"hub-{uuid.uuid4().hex[:6]}"
    staging.mkdir()
    assert out.result is not None
    vb = verify_path(out.result, trusted_root=s.kit.trusted, state=VerifierState(),
                     expect=ExpectResult(hub_id=s.kit.hub_id, agent_id="site-01",
                                         agent_key=s.agent.keys.identity.public),
                     staging_dir=staging, clock=lambda: NOW)
    res = vb.manifest.result
    assert res is not None and res.status == "rejected"
    assert res.body["check"] == "approvals"
    assert res.bundle_id == out.bundle_id and res.bundle_id is not None
    assert res.bundle_envelope_sha256 is not None
    assert res.body["release"]["product"] == "billing"
    # The verdict travels in the result for the hub: what was required, who counted, and
    # why each envelope did not.
    verdict = res.body["approvals"]
    assert verdict["ok"] is False and verdict["message"] in out.summary
    assert verdict["environment"] == (s.agent.config.environment or "*")
    assert len(verdict["envelopes"]) == len(vb_manifest_approvals(s, bundle))


def vb_manifest_approvals(s: Site, bundle: Path) -> tuple[bytes, ...]:
    """The approvals the bundle carried (read from the hub's side copy, written by the test)."""
    return s.sent[bundle.name]


def _hub_attest(s: Site, names: Sequence[str], key: SigningKey | None = None,
                **kw: Any) -> bytes:
    fields: dict[str, Any] = dict(product="billing", version="1.4.0",
                                  content_hash=s.content_hash, environments=("hubbed",),
                                  approvers=tuple(AttestedApprover(n, PEOPLE[n], NOW - 100)
                                                  for n in names),
                                  issued=NOW - 60, expires=NOW + DAY)
    fields.update(kw)
    assert s.kit.approval_key is not None
    return sign_attestation(AttestationDocument(**fields), [key or s.kit.approval_key])


Case = Callable[[Site], tuple[Path, tuple[str, ...]]]

REFUSED: list[tuple[str, Case]] = [
    ("no-approvals", lambda s: (_bundle(s, ()), (
        "environment prod needs 2 approvals from 2 groups; found 0 valid (the bundle carries "
        "no approvals)",))),
    ("forged", lambda s: (_bundle(s, [approve(s, "alice"), approve(
        s, "bob", key=SigningKey.generate())]), (
        "found 1 valid (alice/dba)", "which is not an approver key of environment prod"))),
    ("signed-by-release-key", lambda s: (_bundle(s, [approve(s, "alice"), approve(
        s, "bob", key=s.kit.release_key)]), ("which is not an approver key",))),
    ("steps-changed", lambda s: (_bundle(s, [approve(s, "alice"), approve(s, "bob")],
                                         extra_step=True),
                                 ("found 0 valid", "(steps or files differ)"))),
    ("other-environment", lambda s: (_bundle(s, [approve(s, "alice", environments=["lab"]),
                                                 approve(s, "bob", environments=["lab"])]),
                                     ("alice: approves environments lab, not prod",))),
    ("expired", lambda s: (_bundle(s, [approve(s, "alice"), approve(
        s, "bob", at=NOW - 9 * DAY, expires=NOW - DAY)]), ("bob: expired at",))),
    ("author", lambda s: (_bundle(s, [approve(s, "alice"), approve(s, "bob")], author="bob"),
                          ("bob: bob is the release's author",))),
    ("revoked-key", lambda s: (_bundle(s, [approve(s, "alice"), approve(s, "dave")]),
                               ("dave: approver key", "is revoked in root version 1"))),
    ("expired-key", lambda s: (_bundle(s, [approve(s, "alice"), approve(s, "erin")]),
                               ("erin: approver key", "expired at"))),
    ("below-threshold", lambda s: (_bundle(s, [approve(s, "alice")]),
                                   ("found 1 valid (alice/dba)",))),
    ("one-group", lambda s: (_bundle(s, [approve(s, "alice"), approve(s, "carol")]),
                             ("found 2 valid (alice/dba, carol/dba) from only 1 group",))),
    ("bundle-claims-another-environment", lambda s: (
        _bundle(s, [approve(s, "alice", environments=["lab"]),
                    approve(s, "bob", environments=["lab"])], environment=None),
        ("approves environments lab, not prod",))),
    ("attestation-in-signed-mode", lambda s: (
        _bundle(s, [approve(s, "alice"), _hub_attest(s, ["bob"], environments=("prod",))]),
        ("an attestation is not counted",))),
]


@pytest.mark.parametrize("case", [c for _, c in REFUSED], ids=[n for n, _ in REFUSED])
def test_refused_before_acceptance(site: Site, case: Case) -> None:
    bundle, words = case(site)
    _assert_refused(site, bundle, *words)


def test_valid_signed_approvals_run(site: Site) -> None:
    out = _process(site, _bundle(site, [approve(site, "alice"), approve(site, "bob")]))
    assert out.status == "succeeded", out.summary
    assert (site.tmp / "ran").read_text() == "ran\n"
    assert site.agent.journal.trust(site.kit.hub_id).sequence == 1


def test_a_refused_bundle_does_not_use_up_its_sequence(site: Site) -> None:
    _assert_refused(site, _bundle(site, [approve(site, "alice")]), "found 1 valid")
    out = _process(site, _bundle(site, [approve(site, "alice"), approve(site, "bob")]))
    assert out.status == "succeeded", out.summary


def test_hub_attested_environment(tmp_path: Path, ring: dict[str, SigningKey]) -> None:
    s = _make_site(tmp_path, "hubbed", {"hubbed": Delegation("hub", 2, 2, {})}, ring)
    try:
        _assert_refused(s, _bundle(s, [_hub_attest(s, ["alice", "bob"],
                                                   key=s.kit.release_key)]),
                        "attestation 1: not signed by the hub's approval key")
        _assert_refused(s, _bundle(s, [approve(s, "alice", environments=["hubbed"]),
                                       approve(s, "bob", environments=["hubbed"])]),
                        "(mode hub); not counted")
        out = _process(s, _bundle(s, [_hub_attest(s, ["alice", "bob"])]))
        assert out.status == "succeeded", out.summary
    finally:
        s.agent.close()


def test_environment_without_delegation_runs_as_today(tmp_path: Path,
                                                      ring: dict[str, SigningKey]) -> None:
    s = _make_site(tmp_path, "lab", {"prod": _signed(ring)}, ring)
    try:
        out = _process(s, _bundle(s, ()))
        assert out.status == "succeeded", out.summary
    finally:
        s.agent.close()


def test_agent_without_environment_is_held_to_the_star_delegation(
        tmp_path: Path, ring: dict[str, SigningKey]) -> None:
    s = _make_site(tmp_path, None, {"*": _signed(ring, 1, 1)}, ring)
    try:
        _assert_refused(s, _bundle(s, [approve(s, "alice")]),
                        "environment * needs 1 approval from 1 group",
                        "approves environments prod, not *")
        out = _process(s, _bundle(s, [approve(s, "alice", environments=["*"])]))
        assert out.status == "succeeded", out.summary
    finally:
        s.agent.close()


def test_a_delegation_added_by_a_root_update_in_the_bundle_is_enforced(
        tmp_path: Path, ring: dict[str, SigningKey]) -> None:
    """The delegation comes from the trusted root AFTER the updates the bundle carries: a
    bundle cannot escape a new rule by carrying it, and a refused bundle's root update is not
    kept."""
    s = _make_site(tmp_path, "prod", None, ring)
    try:
        v1 = s.kit.trusted.document
        v2 = sign_root(replace(v1, version=2, approvals={"prod": _signed(ring, 2, 2)}),
                       [s.kit.root_key])
        _assert_refused(s, _bundle(s, (), roots=[v2], root_version=2),
                        "environment prod needs 2 approvals from 2 groups")
        assert s.agent.journal.trust(s.kit.hub_id).root_version == 1
        out = _process(s, _bundle(s, [approve(s, "alice"), approve(s, "bob")], roots=[v2],
                                  root_version=2))
        assert out.status == "succeeded", out.summary
        assert s.agent.journal.trust(s.kit.hub_id).root_version == 2
    finally:
        s.agent.close()
