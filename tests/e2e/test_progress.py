"""``--progress``: long commands (hub export, agent apply, hub import) report progress on
stderr even when it is not a terminal, and say nothing about it when not asked (stdout stays
what a script reads)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.conftest import run

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
LINE = re.compile(r"^(\w+): (\d+)% \((\d+) of (\d+)\)$")


def _progress_lines(stderr: str) -> dict[str, list[int]]:
    """phase -> the percentages reported, in order."""
    seen: dict[str, list[int]] = {}
    for line in stderr.splitlines():
        m = LINE.match(line.strip())
        if m:
            seen.setdefault(m.group(1), []).append(int(m.group(2)))
    return seen


def test_progress_on_export_apply_and_import_without_a_terminal(tmp_path: Path) -> None:
    data, usb, home = tmp_path / "hub", tmp_path / "usb", tmp_path / "agent"
    usb.mkdir()
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "pass"}

    def hub(*args: str) -> tuple[str, str]:
        proc = run("hub", *args, env=env)
        return proc.stdout, proc.stderr

    hub("init", "--admin", "admin", "--environment", "plant-a")
    hub("users", "add", "ops", "--role", "operator", "--role", "developer",
        "--local-admin", "admin")
    hub("users", "add", "bob", "--role", "approver", "--local-admin", "admin")
    run("agent", "init", str(home), "--root", str(data / "root.json"), "--id", "site-01",
        "--environment", "plant-a")
    (request,) = (home / "outbox").glob("enrollment-*.json")
    request.rename(usb / request.name)
    hub("import", str(usb), "--local-admin", "ops")
    (usb / request.name).unlink()
    response = usb / "enrollment-response-site-01.json"
    pinned = json.loads(run("agent", "enroll-response", str(response), "--home", str(home),
                            "--json").stdout)
    assert pinned["agent_id"] == "site-01" and pinned["environment"] == "plant-a"
    assert pinned["ca_pinned"] and Path(pinned["ca_pinned"]).is_file()
    response.unlink()
    hub("releases", "create", str(HELLO), "--create-product", "--local-admin", "ops")
    hub("releases", "submit", "hello", "1.0.0", "--local-admin", "ops")
    hub("releases", "approve", "hello", "1.0.0", "--local-admin", "bob")
    hub("deployments", "queue", "hello", "1.0.0", "--environment", "plant-a",
        "--local-admin", "ops")

    out, err = hub("export", "--environment", "plant-a", "--out", str(usb), "--local-admin", "ops",
                   "--json", "--progress")
    assert json.loads(out)["written"]  # stdout is still only the JSON
    assert _progress_lines(err), err
    assert all(p[-1] == 100 for p in _progress_lines(err).values()), err

    (bundle,) = usb.glob("*.tgb")
    applied = run("agent", "apply", str(bundle), "--home", str(home), "--json", "--progress")
    assert json.loads(applied.stdout)["status"] == "succeeded"
    phases = _progress_lines(applied.stderr)
    assert phases and all(p == sorted(p) and p[-1] == 100 for p in phases.values()), phases

    for result in (home / "outbox").glob("*.tgr"):
        (usb / result.name).write_bytes(result.read_bytes())
    out, err = hub("import", str(usb), "--local-admin", "ops", "--json", "--progress")
    assert [r["status"] for r in json.loads(out)] == ["imported"]
    assert _progress_lines(err) == {"import": [100]}, err

    # not asked, no terminal
    quiet = run("hub", "import", str(usb), "--local-admin", "ops", env=env)
    assert _progress_lines(quiet.stderr) == {}
    assert "0 imported, 1 duplicate" in quiet.stdout
