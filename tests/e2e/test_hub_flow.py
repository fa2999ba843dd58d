"""The whole file-drop flow with real processes: hub CLI → USB directory → agent → hub.

hub init → release from examples/ → submit → approve as another user → export to a temp
"USB" directory → a real agent process picks it up → result → import → deployment
succeeded, audit verifies, audit export verifies offline.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

from tests.e2e.conftest import TIANGONG, add_people, run, set_fast_inbox, wait_for

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


def test_release_travels_by_file_and_comes_back(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "root-pass"}

    def hub(*args: str, user: str = "admin",
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("hub", "--local-admin", user, *args, env=env, check=check)

    hub("init", "--admin", "admin", "--hub-id", "hub-e2e")
    add_people(env, (("alice", "developer"), ("bob", "approver"), ("carol", "operator"),
                     ("aud", "auditor"),
                     ("alice", "approver")))  # so only four-eyes can stop her

    # A site agent, enrolled offline with its request file.
    home = tmp_path / "agent"
    run("agent", "init", str(home), "--root", str(data / "root.json"), "--id", "site-01",
        "--environment", "plant-a")
    set_fast_inbox(home)
    stick = tmp_path / "stick-1"
    stick.mkdir()
    shutil.copy(next((home / "outbox").glob("enrollment-*.json")), stick)
    out = hub("import", str(stick), user="carol")
    assert "1 enrolled" in out.stdout, out.stdout

    # Four eyes: alice writes, alice cannot approve, bob approves.
    hub("releases", "create", str(HELLO), "--create-product", user="alice", check=False)
    hub("releases", "submit", "hello", "1.0.0", user="alice")
    own = hub("releases", "approve", "hello", "1.0.0", user="alice", check=False)
    assert own.returncode != 0 and "author and cannot approve" in own.stderr
    hub("releases", "approve", "hello", "1.0.0", user="bob")
    hub("deployments", "queue", "hello", "1.0.0", "--environment", "plant-a", user="carol")

    usb = tmp_path / "usb"
    exp = hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    assert "sequence 1" in exp.stdout
    assert (usb / "INDEX-plant-a.txt").exists()
    again = hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    assert "nothing written" in again.stdout

    # The stick reaches the site; a real agent runs it.
    agent = subprocess.Popen([*TIANGONG, "agent", "run", "--home", str(home)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for f in usb.glob("*.tgb"):
            shutil.copy(f, home / "inbox" / (f.name + ".part"))
            (home / "inbox" / (f.name + ".part")).rename(home / "inbox" / f.name)
        wait_for(lambda: any((home / "outbox").glob("*.tgr")), 60, "the result file")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)

    back = tmp_path / "stick-back"
    back.mkdir()
    for f in (home / "outbox").glob("*.tgr"):
        shutil.copy(f, back)
    imp = hub("import", str(back), user="carol")
    assert "1 imported" in imp.stdout, imp.stdout
    dup = hub("import", str(back), user="carol")
    assert "1 duplicate" in dup.stdout

    deps = json.loads(hub("deployments", "list", "--json", user="carol").stdout)
    assert [d["state"] for d in deps] == ["succeeded"]

    verify = hub("audit", "verify", user="aud")
    assert verify.returncode == 0
    export = tmp_path / "audit.jsonl"
    hub("audit", "export", "--out", str(export), user="aud")
    offline = run("audit", "verify-export", str(export), "--trust", str(data / "root.json"))
    assert offline.returncode == 0
