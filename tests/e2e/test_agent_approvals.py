"""Approvals the site verifies, end to end with real processes: bundles made by hand with the
release key (``tiangong bundle create``), approvals signed with ``tiangong keys approve``, and
a real ``tiangong agent run --once`` that refuses every bundle whose approvals do not meet its
environment's delegation — signed ``rejected`` result naming the bundle and the reason,
nothing run, the sequence left for the good bundle — and runs the ones that do."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from signing.approvals import (
    ApprovalDocument,
    AttestationDocument,
    AttestedApprover,
    sign_approval,
    sign_attestation,
)
from signing.delegations import Approver, Delegation
from signing.keyfile import KdfParams, save_private_key, write_public_key
from signing.keys import SigningKey
from signing.roots import KeyEntry, RootDocument, sign_root
from tests.e2e.agent_site import verified_results, write_release
from tests.e2e.conftest import HubKeys, drop_settled, run, set_fast_inbox
from tests.fixtures.trust import TrustKit, make_trust

PASS = {"TIANGONG_KEY_PASSPHRASE": "test-pass"}
FAST = KdfParams(1, 8192)
GROUPS = {"alice": "dba", "bob": "ops", "carol": "dba", "dave": "sec"}
DAY = 86400


def _key_file(path: Path, key: SigningKey, role: str) -> Path:
    info = save_private_key(path, key, role=role, label=path.stem, passphrase="test-pass",
                            kdf=FAST)
    write_public_key(f"{path}.pub", info)
    return path


def _trust(tmp: Path, now: int, people: dict[str, SigningKey]) -> tuple[HubKeys, TrustKit]:
    """A root delegating plant-a (2 signed approvals from 2 groups; dave's key revoked) and
    plant-h (2 hub-attested approvals from 2 groups); plant-z is not delegated."""
    approval_key = SigningKey.generate()
    kit = make_trust(now=now, approval_key=approval_key, approver_keys=[
        KeyEntry(k.public) for k in people.values()], approvals={
        "plant-a": Delegation("signed", 2, 2, {people[n].key_id: Approver(n, g)
                                                for n, g in GROUPS.items()}),
        "plant-h": Delegation("hub", 2, 2, {})})
    doc = replace(kit.trusted.document, revoked=frozenset({people["dave"].key_id}))
    kit = replace(kit, root_envelope=sign_root(RootDocument.from_bytes(doc.to_bytes()),
                                               [kit.root_key]))
    d = tmp / "hubkeys"
    d.mkdir()
    release = _key_file(d / "release.key", kit.release_key, "release")
    return HubKeys(kit, kit.write_root(d), release), kit


def _site(tmp: Path, keys: HubKeys, environment: str) -> Path:
    home = tmp / f"site-{environment}"
    run("agent", "init", str(home), "--root", str(keys.root_json), "--id", "site-01",
        "--environment", environment)
    set_fast_inbox(home)
    return home


def _release(tmp: Path, name: str, extra_step: bool = False) -> Path:
    steps = ['name = "mark"\nkind = "shell"\nscript = "mark.sh"']
    if extra_step:
        steps.append('name = "again"\nkind = "shell"\nscript = "mark.sh"')
    return write_release(tmp / name, "billing", "1.4.0", steps,
                         {"mark.sh": f'echo ran >> "{tmp / "ran"}"\n'})


def _approve(tmp: Path, key: Path, name: str, release: Path, env: str = "plant-a") -> Path:
    out = tmp / f"approval-{key.stem}-{name}-{env}-{release.name}.json"
    run("keys", "approve", "--key", str(key), "--approver", name, "--release", str(release),
        "--environment", env, "-o", str(out), env=PASS)
    return out


def _write(tmp: Path, name: str, envelope: bytes) -> Path:
    (tmp / name).write_bytes(envelope)
    return tmp / name


def _bundle(tmp: Path, keys: HubKeys, release: Path, name: str, approvals: list[Path],
            environment: str, author: str = "erin") -> str:
    args = ["bundle", "create", str(release), "--key", str(keys.release_key), "--root",
            str(keys.root_json), "--agent", "site-01", "--environment", environment,
            "--sequence", "1", "--author", author, "-o", str(tmp / f"{name}.tgb"), "--json"]
    for a in approvals:
        args += ["--approval", str(a)]
    out = run(*args, env=PASS)
    return str(json.loads(out.stdout)["bundle_id"])


def _results_by_bundle(home: Path, keys: HubKeys, tmp: Path) -> dict[str, dict[str, Any]]:
    return {str(r["bundle_id"]): r for r in verified_results(home, keys, tmp)}


def test_the_site_refuses_bundles_without_the_approvals_its_root_requires(
        tmp_path: Path) -> None:
    now = int(time.time())
    people = {n: SigningKey.generate() for n in (*GROUPS, "mallory")}
    keys, kit = _trust(tmp_path, now, people)
    files = {n: _key_file(tmp_path / f"{n}.key", k, "approver") for n, k in people.items()}
    rel = _release(tmp_path, "billing-1.4.0")
    changed = _release(tmp_path, "billing-1.4.0-changed", extra_step=True)
    ok = {n: _approve(tmp_path, files[n], n, rel) for n in ("alice", "bob", "carol", "dave")}
    expired_bob = _write(tmp_path, "expired-bob.json", sign_approval(ApprovalDocument(
        "billing", "1.4.0", json.loads(run("keys", "approval", "show", str(ok["bob"]),
                                           "--json").stdout)["content_hash"],
        ("plant-a",), "bob", now - 9 * DAY, now - DAY), people["bob"]))
    home = _site(tmp_path, keys, "plant-a")

    # (bundle name, release, approval files, author, words the refusal must contain)
    cases: list[tuple[str, Path, list[Path], str, str]] = [
        ("none", rel, [], "erin", "found 0 valid (the bundle carries no approvals)"),
        ("forged", rel, [ok["alice"], _approve(tmp_path, files["mallory"], "bob", rel)], "erin",
         "which is not an approver key of environment plant-a"),
        ("steps-changed", changed, [ok["alice"], ok["bob"]], "erin",
         "(steps or files differ)"),
        ("other-environment", rel, [ok["alice"], _approve(tmp_path, files["bob"], "bob", rel,
                                                          "lab")], "erin",
         "bob: approves environments lab, not plant-a"),
        ("expired", rel, [ok["alice"], expired_bob], "erin", "bob: expired at"),
        ("author", rel, [ok["alice"], ok["bob"]], "bob", "bob: bob is the release's author"),
        ("revoked", rel, [ok["alice"], ok["dave"]], "erin",
         "dave: approver key " + people["dave"].key_id[:16] + " is revoked"),
        ("below-threshold", rel, [ok["alice"]], "erin", "found 1 valid (alice/dba)"),
        ("one-group", rel, [ok["alice"], ok["carol"]], "erin",
         "found 2 valid (alice/dba, carol/dba) from only 1 group"),
    ]
    ids = {}
    for name, release, approvals, author, _ in cases:
        ids[name] = _bundle(tmp_path, keys, release, name, approvals, "plant-a", author)
    # 'bundle verify --environment' judges the approvals as that environment's agent will.
    verify = run("bundle", "verify", str(tmp_path / "one-group.tgb"), "--trust",
                 str(keys.root_json), "--agent-id", "site-01", "--environment", "plant-a",
                 check=False)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "from only 1 group [check: approvals]" in verify.stderr
    for name, *_ in cases:
        drop_settled(tmp_path / f"{name}.tgb", home)
    out = run("agent", "run", "--home", str(home), "--once")
    assert out.stdout.count(": rejected: ") == len(cases), out.stdout + out.stderr

    found = _results_by_bundle(home, keys, tmp_path)
    for name, _, _, _, words in cases:
        res = found[ids[name]]
        assert res["status"] == "rejected" and res["body"]["check"] == "approvals", name
        summary = res["body"]["summary"]
        assert "environment plant-a needs 2 approvals from 2 groups" in summary, summary
        assert words in summary, (name, summary)
        assert (home / "quarantine" / f"{name}.tgb.reason.txt").exists()
    # Nothing ran and no sequence was used: the approved bundle now runs as sequence 1.
    assert not (tmp_path / "ran").exists()
    status = run("agent", "status", "--home", str(home)).stdout
    assert ("approvals required here: 2 approvals from 2 groups (signed by approver keys)"
            in status), status
    assert status.count("[approvals]") == len(cases), status
    assert json.loads(run("agent", "status", "--home", str(home), "--json").stdout)[
        "bundles"] == []
    good = _bundle(tmp_path, keys, rel, "good", [ok["alice"], ok["bob"], ok["carol"]], "plant-a")
    run("bundle", "verify", str(tmp_path / "good.tgb"), "--trust", str(keys.root_json),
        "--agent-id", "site-01", "--environment", "plant-a")
    # An approval can also be made from the bundle itself (content hash recomputed).
    from_bundle = tmp_path / "alice-from-bundle.json"
    run("keys", "approve", "--key", str(files["alice"]), "--approver", "alice", "--bundle",
        str(tmp_path / "good.tgb"), "--environment", "plant-a", "-o", str(from_bundle),
        env=PASS)
    shown = json.loads(run("keys", "approval", "show", str(from_bundle), "--json").stdout)
    assert shown["content_hash"] == json.loads(run("keys", "approval", "show", str(ok["bob"]),
                                                   "--json").stdout)["content_hash"]
    drop_settled(tmp_path / "good.tgb", home)
    out = run("agent", "run", "--home", str(home), "--once")
    assert "good.tgb: succeeded" in out.stdout, out.stdout + out.stderr
    assert (tmp_path / "ran").read_text() == "ran\n"
    assert _results_by_bundle(home, keys, tmp_path)[good]["status"] == "succeeded"

    # plant-h: hub-attested approvals. An attestation signed by the release key is refused;
    # one signed by the root's approval role runs.
    assert kit.approval_key is not None
    home_h = _site(tmp_path, keys, "plant-h")
    content_hash = json.loads(run("keys", "approval", "show", str(ok["bob"]), "--json")
                              .stdout)["content_hash"]
    attestation = AttestationDocument(
        "billing", "1.4.0", content_hash, ("plant-h",),
        (AttestedApprover("alice", "dba", now - 120), AttestedApprover("bob", "ops", now - 90)),
        now - 60, now + DAY)
    by_release = _write(tmp_path, "att-release.json",
                        sign_attestation(attestation, [kit.release_key]))
    by_hub = _write(tmp_path, "att-hub.json", sign_attestation(attestation, [kit.approval_key]))
    forged = _bundle(tmp_path, keys, rel, "att-forged", [by_release], "plant-h")
    drop_settled(tmp_path / "att-forged.tgb", home_h)
    out = run("agent", "run", "--home", str(home_h), "--once")
    res = _results_by_bundle(home_h, keys, tmp_path)[forged]
    assert res["status"] == "rejected", out.stdout
    assert "attestation 1: not signed by the hub's approval key" in res["body"]["summary"]
    assert (tmp_path / "ran").read_text() == "ran\n"
    attested = _bundle(tmp_path, keys, rel, "att-ok", [by_hub], "plant-h")
    drop_settled(tmp_path / "att-ok.tgb", home_h)
    out = run("agent", "run", "--home", str(home_h), "--once")
    assert _results_by_bundle(home_h, keys, tmp_path)[attested]["status"] == "succeeded", \
        out.stdout + out.stderr
    assert (tmp_path / "ran").read_text() == "ran\nran\n"

    # plant-z: no delegation, nothing required — a bundle without approvals runs as before.
    home_z = _site(tmp_path, keys, "plant-z")
    plain = _bundle(tmp_path, keys, rel, "plain", [], "plant-z")
    drop_settled(tmp_path / "plain.tgb", home_z)
    out = run("agent", "run", "--home", str(home_z), "--once")
    assert _results_by_bundle(home_z, keys, tmp_path)[plain]["status"] == "succeeded", \
        out.stdout + out.stderr
    assert json.loads(run("agent", "status", "--home", str(home_z), "--json").stdout)[
        "approvals_required"] is None
