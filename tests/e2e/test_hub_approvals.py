"""Approvals a site verifies, end to end with real processes: ``tiangong hub …`` and
``tiangong agent run`` over files.

1. The site's agent is enrolled under root version 1 (no delegation).
2. Root ceremony: root version 2 delegates environment plant-a to two approver keys from two
   groups; the hub installs it (``hub keys install-root``).
3. A release approved with alice's personal key only (``hub releases approve --key``): the
   hub refuses to export it with the agent's own message, uses no sequence, and audits the
   refusal.
4. Bob uploads his approval made with ``tiangong keys approve``: the export carries both
   approvals and root version 2; the real agent takes the new root from that bundle, checks
   the approvals and runs the release; its result comes back.
"""

from __future__ import annotations

import json
from pathlib import Path

from hub.services.approvers import add_group
from tests.e2e.conftest import HubCli, carry_home, media_site, run, run_agent_until
from tests.hub.realhub import RealHub

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
AGENT_TIMEOUT_S = 90.0  # seconds for the agent to run one bundle and write its result


def _agent_root_version(home: Path) -> int:
    """The root version the agent trusts now (its journal, as `agent status` says)."""
    status = json.loads(run("agent", "status", "--home", str(home), "--json").stdout)
    return int(status["root_version"])


def _bring_back(hub: HubCli, home: Path, back: Path) -> None:
    """The results of the site's outbox go home and are imported."""
    out = hub("import", str(carry_home(home, back)), user="carol")
    assert "imported" in out.stdout, out.stdout


def test_signed_approvals_and_a_root_rotation_reach_the_site(tmp_path: Path) -> None:
    pw = tmp_path / "approver-pass"
    pw.write_text("approver passphrase\n")
    hub, data, home = media_site(tmp_path, people=(
        ("dev", "developer"), ("alice", "approver"), ("bob", "approver"), ("carol", "operator")))
    # The groups through the services (what is under test below runs as real `tiangong
    # hub` and `tiangong agent` processes).
    real = RealHub(data)
    real.init_engine()
    with real.ctx() as admin:
        add_group(admin, "alice", "dba")
        add_group(admin, "bob", "ops")
    real.close()
    for who in ("alice", "bob"):
        run("keys", "generate", "--role", "approver", "--label", who, "-o",
            str(tmp_path / f"{who}.key"), "--passphrase-file", str(pw),
            "--kdf-profile", "interactive")
        hub("users", "add-key", who, str(tmp_path / f"{who}.key.pub"), user=who)
    assert _agent_root_version(home) == 1

    # The root ceremony (offline machine): plant-a needs alice (dba) and bob (ops)
    (tmp_path / "approvals.json").write_text(json.dumps({"plant-a": {
        "mode": "signed", "threshold": 2, "min_groups": 2,
        "approvers": [{"name": "alice", "group": "dba", "key": "alice.key.pub"},
                      {"name": "bob", "group": "ops", "key": "bob.key.pub"}]}}))
    run("keys", "root", "rotate", "--current", str(data / "root.json"), "--signing-key",
        str(data / "root-key.OFFLINE.json"), "--approvals", str(tmp_path / "approvals.json"),
        "-o", str(tmp_path / "root-v2.json"))
    installed = json.loads(hub("keys", "install-root", str(tmp_path / "root-v2.json"),
                               "--json").stdout)
    assert installed["version"] == 2 and installed["delegations"] == ["plant-a"]

    # A release with alice's signed approval only: the hub refuses to export it
    hub("releases", "create", str(HELLO), "--create-product", user="dev")
    hub("releases", "submit", "hello", "1.0.0", user="dev")
    hub("releases", "approve", "hello", "1.0.0", "--key", str(tmp_path / "alice.key"),
        "--environment", "plant-a", "--passphrase-file", str(pw), user="alice")
    hub("deployments", "queue", "hello", "1.0.0", "--environment", "plant-a", user="carol")
    usb = tmp_path / "usb"
    refused = hub("export", "--environment", "plant-a", "--out", str(usb), user="carol",
                  check=False)
    assert refused.returncode == 1
    assert ("environment plant-a needs 2 approvals from 2 groups; found 1 valid "
            "(alice/dba)") in refused.stderr, refused
    assert not list(usb.glob("*.tgb"))
    deps = json.loads(hub("deployments", "list", "--json", user="carol").stdout)
    assert [d["state"] for d in deps] == ["queued"]
    events = json.loads(hub("audit", "show", "--last", "5", "--json").stdout)
    failed = [e for e in events if e["action"] == "bundle.export_failed"]
    assert failed and "found 1 valid (alice/dba)" in json.dumps(failed)

    # Bob approves with `tiangong keys approve` and uploads the file: the export carries
    # both approvals and root version 2, with sequence 1 (the refusal used none)
    shown = json.loads(hub("releases", "show", "hello", "1.0.0", "--json").stdout)
    run("keys", "approve", "--key", str(tmp_path / "bob.key"), "--root",
        str(data / "root.json"), "--product", "hello", "--version", "1.0.0",
        "--content-hash", shown["content_hash"], "--environment", "plant-a",
        "-o", str(tmp_path / "bob-approval.json"), "--passphrase-file", str(pw))
    hub("releases", "approve", "hello", "1.0.0", "--signature",
        str(tmp_path / "bob-approval.json"), user="bob")
    out = hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    assert "sequence 1" in out.stdout, out.stdout
    inspected = json.loads(run("bundle", "inspect", str(next(usb.glob("*.tgb"))),
                               "--json").stdout)
    assert inspected["manifest"]["root_version"] == 2

    # The real agent takes root version 2 from the bundle, checks both approvals, runs it
    run_agent_until(home, usb.glob("*.tgb"), "1 result file", timeout_s=AGENT_TIMEOUT_S)
    assert _agent_root_version(home) == 2
    _bring_back(hub, home, tmp_path / "back")
    deps = json.loads(hub("deployments", "list", "--json", user="carol").stdout)
    assert [d["state"] for d in deps] == ["succeeded"]
