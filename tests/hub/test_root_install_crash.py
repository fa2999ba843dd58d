"""``tiangong hub keys install-root`` killed at its crash points (``TIANGONG_CRASH_AT``,
hub/faults.py), then run again: the new root is current, the old one kept under roots/,
exactly one ``root.install`` event, and the audit chain verifies."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.db import AuditEvent
from hub.services.audit import verify_database
from tests.e2e.conftest import run
from tests.hub.realhub import RealHub

ROOT_POINTS = ["hub.root-installing", "hub.root-installed"]


def _install(hub: RealHub, root: Path, point: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    extra = {"TIANGONG_CRASH_AT": point} if point else None
    return hub.cli("keys", "install-root", str(root), "--json", user="admin", extra_env=extra)


@pytest.mark.parametrize("point", ROOT_POINTS)
def test_killed_install_root_completes_when_run_again(tmp_path: Path, point: str) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    v1 = (hub.data / "root.json").read_bytes()
    v2 = tmp_path / "root-v2.json"
    run("keys", "root", "rotate", "--current", str(hub.data / "root.json"), "--signing-key",
        str(hub.data / "root-key.OFFLINE.json"), "-o", str(v2))
    killed = _install(hub, v2, point)
    assert killed.returncode == -signal.SIGKILL, killed
    assert (hub.data / "roots" / "root-v1.json").read_bytes() == v1
    current = (hub.data / "root.json").read_bytes()
    assert current == (v1 if point == "hub.root-installing" else v2.read_bytes())
    again = _install(hub, v2)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["version"] == 2
    assert (hub.data / "root.json").read_bytes() == v2.read_bytes()
    third = _install(hub, v2)
    assert third.returncode != 0 and "root version 2 is installed already" in third.stderr
    hub.init_engine()
    with hub.ctx() as ctx:
        events = ctx.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "root.install")).all()
        assert [e.object_id for e in events] == ["2"]
        assert verify_database(ctx.session, hub.keys).ok
    hub.close()
