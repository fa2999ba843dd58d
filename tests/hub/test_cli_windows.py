"""``tiangong hub windows|freezes …`` and ``hub deployments why|override|confirm-override``
as real processes (hub.cli.windows): JSON out, refusals that change nothing."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func, select

from hub.db import AuditEvent, PolicyRule
from tests.hub.realhub import ENV, RealHub


def _count(hub: RealHub, model: object) -> int:
    with hub.ctx() as ctx:
        return ctx.session.scalar(select(func.count()).select_from(model)) or 0  # type: ignore[arg-type]


def test_windows_freezes_why_and_a_two_person_override(tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    try:
        hub.seed_people()
        hub.queue()
        # Refused: not an admin; a bad spec. Nothing stored.
        out = hub.cli("freezes", "add", "12-20..01-05 UTC: year end", user="op")
        assert out.returncode == 1 and "may not environment.update" in out.stderr
        out = hub.cli("windows", "add", "sat 01:00-05:00 Nowhere/Town", user="admin")
        assert out.returncode == 1 and "unknown time zone 'Nowhere/Town'" in out.stderr
        assert _count(hub, PolicyRule) == 0
        out = hub.cli("freezes", "add", "2020-01-01T00:00Z/2099-01-01T00:00Z: migration",
                      "--environment", ENV, "--json", user="admin")
        assert out.returncode == 0, out.stderr
        freeze = json.loads(out.stdout)
        assert freeze["spec"]["reason"] == "migration" and freeze["environment"] == ENV
        out = hub.cli("freezes", "list", "--environment", ENV, "--json")
        assert [r["id"] for r in json.loads(out.stdout)] == [freeze["id"]]
        out = hub.cli("deployments", "why", "1", "--json")
        (reason,) = json.loads(out.stdout)["waiting_for"]
        assert reason["kind"] == "freeze" and "(migration)" in reason["text"]
        assert reason["until"] == "2099-01-01T00:00:00+00:00"
        listed = json.loads(hub.cli("deployments", "list", "--json").stdout)
        assert listed[0]["waiting_for"] == [reason]
        out = hub.cli("export", "--environment", ENV, "--out", str(tmp_path / "usb"))
        assert out.returncode == 0 and "deployment 1: held, not exported: frozen" in out.stdout
        # The override: op asks, op cannot confirm (nothing changes), admin confirms.
        out = hub.cli("deployments", "override", "1", "--reason", "security fix", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["state"] == "requested"
        out = hub.cli("deployments", "confirm-override", "1")
        assert out.returncode == 1 and "op requested this override and cannot confirm it" \
            in out.stderr
        out = hub.cli("deployments", "why", "1")
        assert "override: override requested by op (security fix)" in out.stdout
        out = hub.cli("deployments", "confirm-override", "1", "--json", user="admin")
        assert out.returncode == 0 and json.loads(out.stdout)["confirmed_by"] == "admin"
        out = hub.cli("deployments", "why", "1")
        assert out.stdout.strip().endswith("is queued: waiting for nothing")
        out = hub.cli("freezes", "end", str(freeze["id"]), "--reason", "done", "--json",
                      user="admin")
        assert out.returncode == 0 and json.loads(out.stdout)["ended_by"] == "admin"
        with hub.ctx() as ctx:
            actions = list(ctx.session.scalars(select(AuditEvent.action).where(
                AuditEvent.action.in_(("freeze.add", "override.request", "override.confirm",
                                       "freeze.end"))).order_by(AuditEvent.seq)))
        assert actions == ["freeze.add", "override.request", "override.confirm", "freeze.end"]
    finally:
        hub.close()
