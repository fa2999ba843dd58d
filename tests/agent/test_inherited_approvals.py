"""A rollback runs on the approvals of the release it undoes (agent/approvalcheck.py,
docs/security.md "Approvals inherited by a rollback"): in an environment whose delegation
is mode ``signed``, an undo-only bundle carrying the ORIGINAL release's approvals runs only
when every step is the undo of a step of a bundle this agent ran and recorded undo data
for, and the approvals count against the release digest the agent recorded when it accepted
that bundle. Every refusal names what failed, runs nothing, restores nothing and does not
use up the sequence. In-process agent (the real-process flow is
tests/e2e/test_auto_rollback.py)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.jobs import installed_schedule
from agent.service import Agent, ProcessOutcome
from bundle.manifest import Target
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
from signing.roots import KeyEntry
from tests.agent.conftest import Clock
from tests.fixtures.trust import NOW, TrustKit, make_trust

DAY = 86400
PEOPLE = {"alice": "dba", "bob": "ops"}


class Site:
    """An agent in ``prod``, whose root needs alice (dba) and bob (ops) to sign."""

    def __init__(self, tmp: Path, mode: str = "signed") -> None:
        self.tmp = tmp
        self.mode = mode
        self.people = {n: SigningKey.generate() for n in PEOPLE}
        self.kit: TrustKit = make_trust(
            approvals={"prod": Delegation("signed", 2, 2, {
                k.key_id: Approver(n, PEOPLE[n]) for n, k in self.people.items()})
                if mode == "signed" else Delegation("hub", 2, 2, {})},
            approver_keys=[KeyEntry(k.public, None) for k in self.people.values()],
            approval_key=SigningKey.generate() if mode == "hub" else None)
        home = tmp / "home"
        init_home(home, root_file=self.kit.write_root(tmp), agent_id="site-01",
                  environment="prod", now=NOW)
        self.agent = Agent(load_config(home), clock=Clock())
        self.sequence = 0
        self.conf = tmp / "app.conf"
        self.conf.write_text("port=80\n")
        self.ran = tmp / "ran"

    def release(self, version: str, toml_steps: str, files: dict[str, str]) -> Path:
        d = self.tmp / f"rel-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text)
        (d / "release.toml").write_text(
            f'format = 1\n[release]\nproduct = "billing"\nversion = "{version}"\n\n'
            + toml_steps)
        return d

    def approvals(self, version: str, content_hash: str) -> list[bytes]:
        if self.mode == "hub":  # the hub's attestation of alice and bob, fresh at export
            assert self.kit.approval_key is not None
            return [sign_attestation(AttestationDocument(
                product="billing", version=version, content_hash=content_hash,
                environments=("prod",), approvers=tuple(
                    AttestedApprover(n, g, NOW - 100) for n, g in PEOPLE.items()),
                issued=NOW - 60, expires=NOW + DAY), [self.kit.approval_key])]
        return [sign_approval(ApprovalDocument(
            product="billing", version=version, content_hash=content_hash,
            environments=("prod",), approver=n, at=NOW - 3600, expires=NOW + 7 * DAY), k)
            for n, k in self.people.items()]

    def bundle(self, rel: Path, envelopes: Sequence[bytes], bundle_id: str) -> Path:
        self.sequence += 1
        manifest, files = release_manifest(
            load_release(rel), bundle_id=bundle_id, issuer=self.kit.release_key.key_id,
            target=Target(agents=("site-01",), environment="prod"), root_version=1,
            sequence=self.sequence, created=NOW - 60, expires=NOW + DAY,
            counter=self.sequence, author="zoe", approval_envelopes=envelopes)
        out = self.tmp / f"{bundle_id}.tgb"
        return write_bundle(out, manifest, files, [self.kit.release_key]).paths[0]

    def process(self, bundle: Path) -> ProcessOutcome:
        dest = self.agent.config.inbox / bundle.name
        shutil.copyfile(bundle, dest)
        return self.agent.process(ReadyItem(dest.name, (dest,), dest.stat().st_size,
                                            "single", 0.0))


def _original_steps(site: Site) -> str:
    return (f'[[steps]]\nname = "config"\nkind = "file"\nsource = "app.conf"\n'
            f'path = "{site.conf}"\n\n'
            '[[steps]]\nname = "marker"\nkind = "shell"\nscript = "make.sh"\n'
            'rollback = "unmake.sh"\n')


def _original_files(site: Site) -> dict[str, str]:
    return {"app.conf": "port=8080\n", "make.sh": f'echo made >> "{site.ran}"\n',
            "unmake.sh": f'echo unmade >> "{site.ran}"\n'}


def _undo_steps(target: str, *, script: str = "unmake.sh", extra: str = "",
                first: int = 2) -> str:
    """The steps the hub's rollback release has for the original (last step first)."""
    return (f'[[steps]]\nname = "undo 2: marker"\nkind = "undo"\nbundle = "{target}"\n'
            f'step = {first}\nscript = "{script}"\ninterpreter = "bash"\nenv = {{ }}\n'
            'args = []\nsecrets_via = "env"\non_failure = "continue"\n\n'
            f'[[steps]]\nname = "undo 1: config"\nkind = "undo"\nbundle = "{target}"\n'
            'step = 1\non_failure = "continue"\n' + extra)


@pytest.fixture
def site(tmp_path: Path) -> Any:
    s = Site(tmp_path)
    yield s
    s.agent.close()


def _run_original(site: Site, bundle_id: str = "billing-1.4.0-site-01-1") -> str:
    rel = site.release("1.4.0", _original_steps(site), _original_files(site))
    content_hash = load_release(rel).content_hash
    out = site.process(site.bundle(rel, site.approvals("1.4.0", content_hash), bundle_id))
    assert out.status == "succeeded", out.summary
    assert site.conf.read_text() == "port=8080\n"
    assert site.ran.read_text() == "made\n"
    rec = site.agent.journal.bundle(bundle_id)
    assert rec is not None and rec.release_digest == content_hash
    return content_hash


def _rollback(site: Site, target: str, envelopes: Sequence[bytes], *, steps: str | None = None,
              files: dict[str, str] | None = None, version: str = "1.4.0-rollback-7") -> Path:
    rel = site.release(version, steps if steps is not None else _undo_steps(target),
                       files if files is not None else
                       {"unmake.sh": _original_files(site)["unmake.sh"]})
    return site.bundle(rel, envelopes, f"rb-{uuid.uuid4().hex[:8]}")


def _assert_refused(site: Site, bundle: Path, *words: str, conf: str = "port=8080\n",
                    ran: str = "made\n") -> None:
    """Refused before anything ran: the reason, nothing restored or run (the file and the
    marker as they were: ``conf``, ``ran``), the sequence kept, the bundle not accepted,
    the file quarantined with its reason."""
    before = ([r.bundle_id for r in site.agent.journal.bundles()],
              site.agent.journal.trust(site.kit.hub_id).sequence)
    out = site.process(bundle)
    assert out.status == "rejected", out.summary
    for word in words:
        assert word in out.summary, out.summary
    assert "is refused before anything ran, and its sequence is not used up" in out.summary
    assert site.conf.read_text() == conf
    assert site.ran.read_text() == ran
    assert ([r.bundle_id for r in site.agent.journal.bundles()],
            site.agent.journal.trust(site.kit.hub_id).sequence) == before
    assert (site.agent.config.quarantine / f"{bundle.name}.reason.txt").exists()
    site.sequence -= 1  # not used up: the next bundle may take it


def test_a_rollback_runs_on_the_approvals_of_the_release_it_undoes(site: Site) -> None:
    content_hash = _run_original(site)
    out = site.process(_rollback(site, "billing-1.4.0-site-01-1",
                                 site.approvals("1.4.0", content_hash)))
    assert out.status == "succeeded", out.summary
    assert site.conf.read_text() == "port=80\n"
    assert site.ran.read_text() == "made\nunmade\n"
    rec = site.agent.journal.bundle(out.bundle_id or "")
    assert rec is not None and rec.undoes == "billing-1.4.0-site-01-1"

    # Replayed later as a new bundle (a new sequence, signed with the release key): refused.
    _assert_refused(site, _rollback(site, "billing-1.4.0-site-01-1",
                                    site.approvals("1.4.0", content_hash)),
                    "was already rolled back here by bundle", "needs its own approvals",
                    conf="port=80\n", ran="made\nunmade\n")


def _forged_never_ran(site: Site, content_hash: str) -> Path:
    return _rollback(site, "billing-1.4.0-site-01-9", site.approvals("1.4.0", content_hash))


CASES = [
    ("never-ran", _forged_never_ran,
     ("as an undo-only bundle of bundle billing-1.4.0-site-01-9",
      "bundle billing-1.4.0-site-01-9 never ran on this agent")),
    ("approvals-of-another-release", lambda s, h: _rollback(
        s, "billing-1.4.0-site-01-1", s.approvals("1.3.0", h)),
     ("its approvals do not count as approvals of billing 1.4.0",
      "found 0 valid")),
    ("approvals-of-the-rollback-hash-forged", lambda s, h: _rollback(
        s, "billing-1.4.0-site-01-1", s.approvals("1.4.0", "0" * 64)),
     ("its approvals do not count as approvals of billing 1.4.0",)),
    ("a-non-undo-step", lambda s, h: _rollback(
        s, "billing-1.4.0-site-01-1", s.approvals("1.4.0", h),
        steps=_undo_steps("billing-1.4.0-site-01-1", extra=(
            '\n[[steps]]\nname = "more"\nkind = "shell"\nscript = "unmake.sh"\n'))),
     ("environment prod needs 2 approvals from 2 groups; found 0 valid",)),
    ("another-script", lambda s, h: _rollback(
        s, "billing-1.4.0-site-01-1", s.approvals("1.4.0", h),
        files={"unmake.sh": f'echo pwned >> "{s.ran}"\n'}),
     ("is not the undo of step 2 of bundle billing-1.4.0-site-01-1",
      "not that step's rollback script (SHA-256 differs)")),
    ("a-shell-rollback-on-a-file-step", lambda s, h: _rollback(
        s, "billing-1.4.0-site-01-1", s.approvals("1.4.0", h),
        steps=_undo_steps("billing-1.4.0-site-01-1", first=1).replace(
            "step = 1\non_failure", "step = 2\non_failure")),
     ("step 1 ('undo 2: marker') is not the undo of step 1 of bundle "
      "billing-1.4.0-site-01-1: it runs with other settings",)),
    ("a-step-it-does-not-have", lambda s, h: _rollback(
        s, "billing-1.4.0-site-01-1", s.approvals("1.4.0", h),
        steps=_undo_steps("billing-1.4.0-site-01-1", first=3)),
     ("undoes step 3 of bundle billing-1.4.0-site-01-1, which has 2 step(s)",)),
    ("another-product", lambda s, h: _other_product(s, h),
     ("it is a release of shop and bundle billing-1.4.0-site-01-1 of billing",)),
]


def _other_product(site: Site, content_hash: str) -> Path:
    rel = site.release("9", _undo_steps("billing-1.4.0-site-01-1"),
                       {"unmake.sh": _original_files(site)["unmake.sh"]})
    toml = rel / "release.toml"
    toml.write_text(toml.read_text().replace('product = "billing"', 'product = "shop"'))
    return site.bundle(rel, site.approvals("1.4.0", content_hash), "rb-shop")


@pytest.mark.parametrize("make,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_what_is_not_exactly_an_undo_of_a_bundle_run_here_is_refused(
        site: Site, make: Any, words: tuple[str, ...]) -> None:
    content_hash = _run_original(site)
    _assert_refused(site, make(site, content_hash), *words)


def test_no_undo_data_or_a_later_release_refuses_the_inherited_approvals(site: Site) -> None:
    content_hash = _run_original(site)
    undo = site.agent.config.home / "undo" / "billing-1.4.0-site-01-1"
    moved = site.tmp / "undo-aside"
    undo.rename(moved)
    _assert_refused(site, _rollback(site, "billing-1.4.0-site-01-1",
                                    site.approvals("1.4.0", content_hash)),
                    "this agent recorded no undo data for bundle billing-1.4.0-site-01-1")
    moved.rename(undo)

    # billing 1.5.0 ran after it: undoing 1.4.0 now would clobber 1.5.0.
    rel = site.release("1.5.0", '[[steps]]\nname = "noop"\nkind = "shell"\nscript = "n.sh"\n',
                       {"n.sh": "true\n"})
    later = site.bundle(rel, site.approvals("1.5.0", load_release(rel).content_hash),
                        "billing-1.5.0-site-01-2")
    assert site.process(later).status == "succeeded"
    _assert_refused(site, _rollback(site, "billing-1.4.0-site-01-1",
                                    site.approvals("1.4.0", content_hash)),
                    "bundle billing-1.5.0-site-01-2 (billing 1.5.0) was accepted here after "
                    "bundle billing-1.4.0-site-01-1")


def test_the_refusal_travels_in_the_signed_result(site: Site) -> None:
    content_hash = _run_original(site)
    out = site.process(_forged_never_ran(site, content_hash))
    assert out.status == "rejected" and out.result is not None
    staging = site.tmp / "hub-staging"
    staging.mkdir()
    vb = verify_path(out.result, trusted_root=site.kit.trusted, state=VerifierState(),
                     expect=ExpectResult(hub_id=site.kit.hub_id, agent_id="site-01",
                                         agent_key=site.agent.keys.identity.public),
                     staging_dir=staging, clock=lambda: NOW)
    res = vb.manifest.result
    assert res is not None and res.status == "rejected" and res.body["check"] == "approvals"
    inherited = res.body["approvals"]["inherited"]
    assert inherited == {"bundle": "billing-1.4.0-site-01-9",
                         "refused": "bundle billing-1.4.0-site-01-9 never ran on this agent"}
    assert res.body["approvals"]["message"] in out.summary


def test_a_schema_3_journal_gains_the_release_digest_columns(tmp_path: Path) -> None:
    """A journal written by an agent before schema 4 opens and records digests from then on;
    its old bundles have none, so a rollback of them needs its own approvals."""
    import sqlite3

    from agent.journal import Journal

    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE bundles DROP COLUMN release_digest")
    db.execute("ALTER TABLE bundles DROP COLUMN undoes")
    db.execute("INSERT INTO bundles(bundle_id, envelope_sha256, source, issuer, root_version,"
               " sequence, manifest, state, received_at) VALUES ('old', 'e1', 's', 'hub', 1, 1,"
               " '{}', 'succeeded', 1)")
    db.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    db.commit()
    db.close()
    j = Journal(path, create=False)
    try:
        old = j.bundle("old")
        assert old is not None and old.release_digest is None and old.undoes is None
        j.accept_bundle(issuer="hub", root_envelope=b"r", root_version=1, sequence=2,
                        time_floor=NOW, bundle_id="new", envelope_sha256="e2", source="s",
                        manifest={}, staged_dir="", not_before=None, steps=[],
                        release_digest="ab" * 32, undoes="old")
        new = j.bundle("new")
        assert new is not None and new.release_digest == "ab" * 32 and new.undoes == "old"
        assert j.undone_by("old") == new
    finally:
        j.close()


def test_in_an_environment_of_hub_attested_approvals_too(tmp_path: Path) -> None:
    """Mode ``hub``: the rollback carries a (fresh) attestation of the ORIGINAL release; an
    attestation of another release's content does not count."""
    site = Site(tmp_path, mode="hub")
    try:
        content_hash = _run_original(site)
        _assert_refused(site, _rollback(site, "billing-1.4.0-site-01-1",
                                        site.approvals("1.4.0", "1" * 64)),
                        "its approvals do not count as approvals of billing 1.4.0")
        out = site.process(_rollback(site, "billing-1.4.0-site-01-1",
                                     site.approvals("1.4.0", content_hash)))
        assert out.status == "succeeded", out.summary
        assert site.conf.read_text() == "port=80\n"
    finally:
        site.agent.close()


def test_an_undo_only_bundle_carrying_a_schedule_is_refused(site: Site) -> None:
    """Its steps are exactly the undo of the bundle it names, but it also carries a
    ``schedule.toml`` and a script the undo steps never run: on inherited approvals that
    would install a job running code no approver saw. Refused, no job installed."""
    content_hash = _run_original(site)
    files = {"unmake.sh": _original_files(site)["unmake.sh"],
             "schedule.toml": '[[schedule]]\nname = "x"\ncron = "* * * * *"\n'
                              'script = "evil.sh"\n',
             "evil.sh": f'echo pwned >> "{site.ran}"\n'}
    _assert_refused(site, _rollback(site, "billing-1.4.0-site-01-1",
                                    site.approvals("1.4.0", content_hash), files=files),
                    "carries evil.sh, schedule.toml, which none of its undo steps runs")
    assert installed_schedule(site.agent.journal)[1] == []
