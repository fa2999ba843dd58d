"""Channels end to end with real processes: `tiangong hub` commands promote a release
RELEASE → CANARY → STABLE under a rule, the environment subscribed to STABLE gets it, a
recall declares the exported bundle lost, and a real `tiangong agent run` process refuses
that bundle with the hub's reason after running the next one."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

from tests.e2e.conftest import TIANGONG, add_people, run, run_many, set_fast_inbox, wait_for

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


def _version(tmp: Path, version: str) -> Path:
    src = tmp / f"hello-{version}"
    shutil.copytree(HELLO, src)
    toml = src / "release.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
    return src


def test_promote_subscribe_recall_with_real_processes(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "root-pass"}

    def hub(*args: str, user: str = "admin",
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("hub", "--local-admin", user, *args, env=env, check=check)

    def js(*args: str, user: str = "admin") -> object:
        return json.loads(hub(*args, "--json", user=user).stdout)

    def as_(user: str, *args: str) -> tuple[str, ...]:  # for run_many (setup steps)
        return ("hub", "--local-admin", user, *args)

    hub("init", "--admin", "admin", "--hub-id", "hub-channels")
    add_people(env, (("alice", "developer"), ("bob", "approver"), ("carol", "operator"),
                     ("alice", "approver")))
    home = tmp_path / "agent"
    run("agent", "init", str(home), "--root", str(data / "root.json"), "--id", "site-01",
        "--environment", "plant-a")
    set_fast_inbox(home)
    enroll = tmp_path / "enroll"
    enroll.mkdir()
    shutil.copy(next((home / "outbox").glob("enrollment-*.json")), enroll)
    hub("import", str(enroll), user="carol")

    hub("releases", "create", str(HELLO), "--create-product", user="alice")
    hub("releases", "submit", "hello", "1.0.0", user="alice")
    hub("environments", "subscribe", "plant-a", "--product", "hello", "--channel", "stable")
    (sub,) = js("environments", "subscriptions", "plant-a")  # type: ignore[misc]
    assert (sub["product"], sub["channel"], sub["by"]) == ("hello", "STABLE", "admin")
    rule = js("channels", "rule", "hello", "STABLE", "--approvals", "1")
    assert rule["rule"] == "1 approver(s) of the promotion, not the author"  # type: ignore[index]
    hub("releases", "approve", "hello", "1.0.0", user="bob")
    listing = js("channels", "list", "hello")
    assert [(c["channel"], c["releases"], c["subscribers"])  # type: ignore[index]
            for c in listing] == [  # type: ignore[attr-defined]
        ("RELEASE", ["1.0.0"], []), ("CANARY", [], []), ("STABLE", [], ["plant-a"])]

    promoted = js("releases", "promote", "hello", "1.0.0", user="carol")
    assert (promoted["from"], promoted["to"]) == ("RELEASE", "CANARY")  # type: ignore[index]

    # Refused with what is missing; exit 1; nothing changed.
    refused = hub("releases", "promote", "hello", "1.0.0", user="carol", check=False)
    assert refused.returncode == 1
    assert ("promotion of release hello 1.0.0 from CANARY to STABLE refused; missing: "
            "approvals: 0 of 1 distinct approver(s) other than the author alice") in refused.stderr
    assert "Traceback" not in refused.stderr
    assert [c["releases"] for c in js("channels", "list", "hello")] == [  # type: ignore[attr-defined,index]
        ["1.0.0"], ["1.0.0"], []]
    assert js("deployments", "list") == []
    own = hub("releases", "approve-promotion", "hello", "1.0.0", user="alice", check=False)
    assert own.returncode == 1 and "alice is its author" in own.stderr

    hub("releases", "approve-promotion", "hello", "1.0.0", "--to", "STABLE", user="bob")
    stable = js("releases", "promote", "hello", "1.0.0", user="carol")
    (dep,) = stable["deployments"]  # type: ignore[index]
    assert (dep["environment"], dep["agent"], dep["state"]) == ("plant-a", "site-01", "queued")

    usb1 = tmp_path / "usb1"
    hub("export", "--environment", "plant-a", "--out", str(usb1), user="carol")
    (recalled_bundle,) = usb1.glob("*.tgb")

    bad = hub("releases", "recall", "hello", "1.0.0", "--channel", "STABLE", user="carol",
              check=False)
    assert bad.returncode == 2 and "--reason" in bad.stderr  # a usage error: nothing done
    recall = js("releases", "recall", "hello", "1.0.0", "--channel", "STABLE", "--reason",
                "breaks the invoice run", user="carol")
    assert recall["channels"] == ["STABLE"] and recall["lost"] == [dep["deployment"]]  # type: ignore[index]
    shown = js("deployments", "show", str(dep["deployment"]))
    assert shown["state"] == "lost"  # type: ignore[index]

    # The next release carries the decision to the site.
    run_many(as_("alice", "releases", "create", str(_version(tmp_path, "1.0.1"))),
             as_("alice", "releases", "submit", "hello", "1.0.1"),
             as_("bob", "releases", "approve", "hello", "1.0.1"),
             as_("carol", "releases", "promote", "hello", "1.0.1"),
             as_("bob", "releases", "approve-promotion", "hello", "1.0.1"),
             as_("carol", "releases", "promote", "hello", "1.0.1"), env=env)
    usb2 = tmp_path / "usb2"
    hub("export", "--environment", "plant-a", "--out", str(usb2), user="carol")
    (next_bundle,) = usb2.glob("*.tgb")

    agent = subprocess.Popen([*TIANGONG, "agent", "run", "--home", str(home)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    inbox = home / "inbox"
    try:
        shutil.copy(next_bundle, inbox / (next_bundle.name + ".part"))
        (inbox / (next_bundle.name + ".part")).rename(inbox / next_bundle.name)
        wait_for(lambda: len(list((home / "outbox").glob("*.tgr"))) == 1, 60, "1.0.1's result")
        shutil.copy(recalled_bundle, inbox / (recalled_bundle.name + ".part"))
        (inbox / (recalled_bundle.name + ".part")).rename(inbox / recalled_bundle.name)
        wait_for(lambda: len(list((home / "outbox").glob("*.tgr"))) == 2, 60,
                 "the refusal of the recalled bundle")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    reasons = list((home / "quarantine").glob("*.reason.txt"))
    assert len(reasons) == 1
    text = reasons[0].read_text()
    assert "declared lost by carol" in text
    assert "release hello 1.0.0 recalled from STABLE: breaks the invoice run" in text

    back = tmp_path / "back"
    back.mkdir()
    for f in (home / "outbox").glob("*.tgr"):
        shutil.copy(f, back)
    hub("import", str(back), user="carol")
    states = {d["release"]: d["state"] for d in js("deployments", "list")}  # type: ignore[attr-defined,index]
    assert states == {"hello 1.0.0": "lost", "hello 1.0.1": "succeeded"}
