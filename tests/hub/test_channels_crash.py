"""A real ``tiangong hub releases recall`` killed like a power cut at the end of its work
(``TIANGONG_CRASH_AT=hub.audit-appended:4``: a bundle declared lost, a deployment cancelled,
the recall event appended — not committed) changes nothing; run again, it completes once.
A recall is one transaction: no crash point of its own is needed, and this test shows it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from sqlalchemy import select

from hub.db import AuditEvent, ChannelEntry, Deployment
from hub.services.audit import verify_database
from hub.services.channels import subscribe
from tests.hub.realhub import ENV, HELLO, RealHub


def _state(hub: RealHub) -> tuple[list[tuple[int, str]], list[object], int]:
    with hub.ctx() as sc:
        s = sc.session
        return ([(d.id, d.state) for d in s.scalars(select(Deployment).order_by(Deployment.id))],
                [e.recalled_at for e in s.scalars(select(ChannelEntry).order_by(ChannelEntry.id))],
                len(s.scalars(select(AuditEvent.seq)).all()))


def test_recall_killed_before_its_commit_changes_nothing_then_completes(tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    try:
        hub.seed_people()
        hub.enroll(2)
        for args in (("releases", "create", str(HELLO), "--create-product"),
                     ("releases", "submit", "hello", "1.0.0")):
            assert hub.cli(*args, user="dev").returncode == 0
        with hub.ctx() as admin:
            subscribe(admin, ENV, "hello", "CANARY")
        assert hub.cli("releases", "approve", "hello", "1.0.0", user="appr").returncode == 0
        assert hub.cli("releases", "promote", "hello", "1.0.0").returncode == 0
        out = hub.cli("export", "--environment", ENV, "--agent", "site-01", "--out",
                      str(tmp_path / "usb"))
        assert out.returncode == 0, out.stderr
        before = _state(hub)
        assert [s for _, s in before[0]] == ["exported", "queued"]

        recall = ("releases", "recall", "hello", "1.0.0", "--channel", "CANARY", "--reason",
                  "bad build", "--json")
        killed = hub.cli(*recall, extra_env={"TIANGONG_CRASH_AT": "hub.audit-appended:4"})
        assert killed.returncode == -signal.SIGKILL, killed
        assert _state(hub) == before
        with hub.ctx("aud") as aud:
            assert verify_database(aud.session, hub.keys).ok

        done = hub.cli(*recall)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (len(report["lost"]), len(report["cancelled"])) == (1, 1)
        after = _state(hub)
        assert [s for _, s in after[0]] == ["lost", "cancelled"]
        with hub.ctx("aud") as aud:
            assert verify_database(aud.session, hub.keys).ok
            recalls = aud.session.scalars(select(AuditEvent).where(
                AuditEvent.action == "channel.recall")).all()
        assert len(recalls) == 1
    finally:
        hub.close()
