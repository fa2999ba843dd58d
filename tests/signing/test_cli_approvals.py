"""``tiangong keys generate --role approver``, ``keys approve``, ``keys approval show`` and the
delegation options of ``keys root init/rotate/show`` (CliRunner, injected clock)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from signing.approvals import ReleaseRef, evaluate_approvals, peek_approval
from signing.roots import TrustedRoot
from tests.signing.clitools import PASS, KeyDir, check, init_args, run
from tests.signing.helpers import DAY, NOW

HASH = "ab" * 32


@pytest.fixture
def people(kd: KeyDir) -> KeyDir:
    for name in ("alice", "bob", "carol"):
        kd.make(name, "approver")
    kd.make("approval1", "approval")
    return kd


def _delegations(kd: KeyDir, doc: dict[str, Any], name: str = "approvals.json") -> str:
    path = kd.path / name
    path.write_text(json.dumps(doc))
    return str(path)


PROD = {"prod": {"mode": "signed", "threshold": 2, "min_groups": 2, "approvers": [
    {"name": "alice", "group": "dba", "key": "alice.key.pub"},
    {"name": "bob", "group": "ops", "key": "bob.key.pub"},
    {"name": "carol", "group": "dba", "key": "carol.key.pub"}]},
    "*": {"mode": "hub", "threshold": 1, "min_groups": 1}}


def _init(kd: KeyDir, delegations: dict[str, Any] = PROD, *extra: str) -> Path:
    check(run(init_args(kd, "root.json", "--approvals", _delegations(kd, delegations),
                        "--approval-key", kd.pub("approval1"), *extra)), 0)
    return kd.path / "root.json"


def test_generate_approver_key_is_always_encrypted(kd: KeyDir, fast_profiles: None) -> None:
    out = kd.path / "dora.key"
    res = check(run(["generate", "--role", "approver", "-o", str(out), "--json"]), 0)
    assert json.loads(res.output)["keys"][0]["role"] == "approver"
    assert "a personal key" in json.loads(res.output)["keep"]
    res = check(run(["generate", "--role", "approver", "-o", str(kd.path / "e.key"),
                     "--insecure-no-passphrase"]), 2)
    assert "always encrypted" in res.output and not (kd.path / "e.key").exists()


def test_root_init_with_delegations_and_show(people: KeyDir) -> None:
    root = _init(people)
    doc = TrustedRoot.pin(root.read_bytes(), NOW).document
    prod = doc.delegation("prod")
    assert prod is not None and prod.threshold == 2 and prod.min_groups == 2
    assert {a.name for a in prod.approvers.values()} == {"alice", "bob", "carol"}
    assert doc.delegation("lab") is not None and doc.roles["approval"][1] == 1
    text = check(run(["root", "show", str(root)]), 0).output
    assert "approval: threshold 1 of 1" in text
    assert "  prod: 2 approvals from 2 groups (signed by approver keys)" in text
    assert f"    alice (dba)  {people.ids['alice']}" in text
    assert "  every other environment (*): 1 approval from 1 group (attested by the hub)" in text
    shown = json.loads(check(run(["root", "show", str(root), "--json"]), 0).output)
    assert [a["name"] for a in shown["approvals"]["prod"]["approvers"]] == ["alice", "bob",
                                                                            "carol"]
    assert "approval" in shown["roles"]


@pytest.mark.parametrize(("delegations", "extra", "fragment"), [
    ({"prod": {"mode": "signed", "threshold": 3, "min_groups": 1, "approvers": [
        {"name": "alice", "group": "dba", "key": "alice.key.pub"}]}}, (),
     "threshold 3 is more than the 1 approver(s)"),
    ({"prod": {"mode": "hub", "threshold": 1, "min_groups": 1}}, ("--no-approval-key",),
     "mode hub needs the approval role"),
    ({"prod": {"mode": "signed", "threshold": 1, "min_groups": 1, "approvers": [
        {"name": "rel", "group": "x", "key": "release1.key.pub"}]}}, (),
     "holds a release key, an approver key is needed"),
    ({"prod": {"mode": "signed", "threshold": 1, "min_groups": 1, "approvers": [
        {"name": "alice", "group": "dba", "key": "alice.key"}]}}, (), "give its .pub file"),
    ({"prod": {"mode": "signed", "threshold": 1, "min_groups": 1, "approvers": [
        {"name": "alice", "group": "dba", "key": "alice.key.pub"},
        {"name": "alice", "group": "ops", "key": "bob.key.pub"}]}}, (),
     "approver name 'alice' is used by keys"),
    ({"prod": {"mode": "signed", "threshold": 1}}, (), "must have mode, threshold, min_groups"),
], ids=["threshold", "hub-without-role", "release-key", "private-file", "same-name",
        "missing-fields"])
def test_root_init_refuses_bad_delegations(people: KeyDir, delegations: dict[str, Any],
                                           extra: tuple[str, ...], fragment: str) -> None:
    args = init_args(people, "root.json", "--approvals", _delegations(people, delegations))
    if "--no-approval-key" not in extra:
        args += ["--approval-key", people.pub("approval1")]
    res = check(run(args), 1)
    assert fragment in res.output
    assert not (people.path / "root.json").exists()


def test_root_init_refuses_approver_key_in_a_role(people: KeyDir) -> None:
    res = check(run(init_args(people, "root.json", "--approvals", _delegations(people, PROD),
                              "--approval-key", people.pub("alice"))), 1)
    assert "holds a approver key, a approval key is needed here" in res.output
    assert not (people.path / "root.json").exists()


def test_rotate_keeps_delegations_and_revoking_an_approver_needs_new_ones(people: KeyDir
                                                                          ) -> None:
    root = _init(people)
    v2 = people.path / "v2.json"
    base = ["root", "rotate", "--current", str(root), "--signing-key", people.key("root1")]
    check(run([*base, "-o", str(v2)]), 0)
    doc = TrustedRoot.pin(root.read_bytes()).update(v2.read_bytes()).document
    assert doc.delegation("prod") == TrustedRoot.pin(root.read_bytes()).document.delegation("prod")
    assert doc.has_role("approval")
    # Revoking bob leaves alice and carol, both dba: 2 groups can no longer be met.
    res = check(run([*base, "--revoke", people.ids["bob"], "-o", str(people.path / "v2b.json")]),
                1)
    assert "would keep 2 approver(s) after revocation" in res.output
    assert not (people.path / "v2b.json").exists()
    # Revoking carol is fine: she is dropped from the delegation and stays revoked.
    check(run([*base, "--revoke", people.ids["carol"], "-o", str(people.path / "v2c.json")]), 0)
    doc = TrustedRoot.pin(root.read_bytes()).update(
        (people.path / "v2c.json").read_bytes()).document
    prod = doc.delegation("prod")
    assert prod is not None and people.ids["carol"] not in prod.approvers
    assert people.ids["carol"] in doc.revoked
    # --no-approvals drops them all, and the approval role with them.
    check(run([*base, "--no-approvals", "-o", str(people.path / "v2d.json")]), 0)
    doc = TrustedRoot.pin(root.read_bytes()).update(
        (people.path / "v2d.json").read_bytes()).document
    assert doc.approvals == {} and not doc.has_role("approval")


def test_rotate_adds_delegations_to_an_old_root(people: KeyDir, root_v1: Path) -> None:
    v2 = people.path / "v2.json"
    check(run(["root", "rotate", "--current", str(root_v1), "--signing-key",
               people.key("root1"), "--approvals", _delegations(people, PROD),
               "--approval-key", people.pub("approval1"), "-o", str(v2), "--json"]), 0)
    doc = TrustedRoot.pin(root_v1.read_bytes()).update(v2.read_bytes()).document
    assert doc.delegation("prod") is not None and doc.delegation("staging") is not None


def _approve(kd: KeyDir, who: str, *extra: str) -> Any:
    return run(["approve", "--key", kd.key(who), "--product", "billing", "--version", "1.4.0",
                "--content-hash", HASH, "--environment", "prod", *extra])


def test_approve_and_show(people: KeyDir) -> None:
    root = _init(people)
    out = people.path / "alice-approval.json"
    res = check(_approve(people, "alice", "--root", str(root), "--comment", "checked the SQL",
                         "-o", str(out)), 0)
    assert "alice approves billing 1.4.0" in res.output
    _, doc = peek_approval(out.read_bytes())
    assert (doc.approver, doc.at, doc.expires) == ("alice", NOW, NOW + 7 * DAY)  # type: ignore[union-attr]
    verdict = evaluate_approvals(TrustedRoot.pin(root.read_bytes()).document, "prod",
                                 ReleaseRef("billing", "1.4.0", "erin"), HASH,
                                 [out.read_bytes()], NOW)
    assert [c.name for c in verdict.counted] == ["alice"]
    shown = check(run(["approval", "show", str(out), "--root", str(root), "--environment",
                       "prod", "--author", "erin"]), 0).output
    assert "counts for prod as alice" in shown
    shown = check(run(["approval", "show", str(out), "--root", str(root), "--environment",
                       "prod", "--author", "alice"]), 1).output
    assert "does NOT count for prod: alice is the release's author" in shown
    plain = json.loads(check(run(["approval", "show", str(out), "--json"]), 0).output)
    assert plain["approver"] == "alice" and plain["comment"] == "checked the SQL"


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (("--root", "ROOT", "--environment", "lab"), 1, "is not an approver key of environment"),
    (("--root", "ROOT", "--approver", "bob"), 1, "lists key"),
    ((), 2, "give --approver NAME"),
    (("--approver", "alice", "--release", "nowhere", "--bundle", "x"), 2,
     "give the release once"),
], ids=["not-delegated-env", "wrong-name", "no-name", "two-sources"])
def test_approve_refusals(people: KeyDir, args: tuple[str, ...], code: int,
                          fragment: str) -> None:
    root = _init(people)
    out = people.path / "a.json"
    res = check(_approve(people, "alice", *[str(root) if a == "ROOT" else a for a in args],
                         "-o", str(out)), code)
    assert fragment in res.output
    assert not out.exists()


def test_approve_refuses_a_key_of_another_role(people: KeyDir) -> None:
    out = people.path / "a.json"
    res = check(run(["approve", "--key", people.key("release1"), "--approver", "x",
                     "--product", "billing", "--version", "1", "--content-hash", HASH,
                     "--environment", "prod", "-o", str(out)]), 1)
    assert "holds a release key; an approval is signed with a personal approver key" in res.output
    assert not out.exists()


def test_approve_wrong_passphrase(people: KeyDir) -> None:
    res = run(["approve", "--key", people.key("alice"), "--approver", "alice", "--product",
               "billing", "--version", "1", "--content-hash", HASH, "--environment", "prod",
               "-o", str(people.path / "a.json")], passphrase=PASS + "x")
    check(res, 1)
    assert "wrong passphrase" in res.output
