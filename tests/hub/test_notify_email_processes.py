"""E-mail and the scheduler's own events with real processes: thresholds and an e-mail
target set with ``tiangong hub notifications … --json``, the relay in hub.toml's ``[smtp]``
table, and a real ``tiangong hub scheduler`` that notices an agent last seen two hours ago
(beyond the 1 h threshold), mails it once through a real SMTP server on 127.0.0.1 and
records the incident (docs/operations.md "Notifications")."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from hub.db import Agent, AuditEvent, NotificationThresholds
from hub.services.context import utc_now
from tests.e2e.conftest import TIANGONG, wait_for
from tests.hub.realhub import ENV, RealHub
from tests.hub.smtp_receiver import mailbox

DEADLINE = 60.0  # seconds a real process gets to act


def _json(out: subprocess.CompletedProcess[str]) -> object:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_real_scheduler_mails_an_agent_offline_once(tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    hub.seed_people()
    hub.enroll(2)
    with mailbox() as box:
        with (hub.data / "hub.toml").open("a") as toml:
            toml.write(f'\n[smtp]\nhost = "{box.host}"\nport = {box.port}\n'
                       'from = "hub@plant.example"\n')
        target = _json(hub.cli("notifications", "add-email", ENV,
                               "ops@plant.example,dba@plant.example", "--events",
                               "agent.offline,result.overdue", "--json", user="admin"))
        assert isinstance(target, dict) and target["kind"] == "email"
        # a threshold under a minute is refused, naming the option and the rule; nothing set
        refused = hub.cli("notifications", "thresholds", ENV, "--agent-offline", "10s",
                          user="admin")
        assert refused.returncode == 1
        assert "--agent-offline 10s: at least 1 minute" in refused.stderr
        with hub.ctx() as ctx:
            assert ctx.session.scalars(select(NotificationThresholds)).all() == []
        shown = _json(hub.cli("notifications", "thresholds", ENV, "--agent-offline", "1h",
                              "--json", user="admin"))
        assert shown == {"environment": ENV, "agent_offline_s": 3600,
                         "result_overdue_s": None, "updated_by": "admin",
                         "updated_at": shown["updated_at"]}  # type: ignore[index]
        with hub.ctx() as ctx:  # site-01 was last seen two hours ago; site-02 just now
            now = utc_now()
            for agent in ctx.session.scalars(select(Agent)):
                agent.last_seen = now - timedelta(hours=2 if agent.agent_id == "site-01"
                                                  else 0)
        log = tmp_path / "scheduler.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*TIANGONG, "hub", "scheduler"], stdout=out,
                                    stderr=subprocess.STDOUT, env=hub.env)
        try:
            wait_for(lambda: proc.poll() is not None or box.wait_count() >= 1, DEADLINE,
                     "the scheduler to mail the offline agent")
            assert proc.poll() is None, log.read_text()
            delivered = _json(hub.cli("notifications", "log", ENV, "--json"))
            assert isinstance(delivered, list)
            wait_for(lambda: _json(hub.cli("notifications", "log", ENV, "--json"))[0][
                "state"] == "delivered", DEADLINE, "the delivery to be recorded")  # type: ignore[index]
        finally:
            proc.terminate()
            proc.wait(DEADLINE)
        assert proc.returncode == 0, log.read_text()
        [(sender, rcpts, msg)] = box.messages  # once, for site-01 only
        assert sender == "hub@plant.example"
        assert sorted(rcpts) == ["dba@plant.example", "ops@plant.example"]
        assert msg["Subject"] == f"[tiangong] agent.offline: {ENV} site-01"
        assert "threshold_s: 3600" in msg.get_content()
    incidents = _json(hub.cli("notifications", "incidents", ENV, "--open", "--json"))
    assert [(i["kind"], i["subject"]) for i in incidents] == [  # type: ignore[union-attr,index]
        ("agent.offline", "site-01")]
    [row] = _json(hub.cli("notifications", "log", ENV, "--json"))  # type: ignore[misc]
    assert (row["kind"], row["event"], row["state"], row["attempts"]) == (
        "email", "agent.offline", "delivered", 1)
    with hub.ctx() as ctx:
        [event] = ctx.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "notification.incident.open")).all()
        assert event.actor == "system:scheduler"
    hub.close()
