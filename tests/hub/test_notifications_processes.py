"""Webhooks with real ``tiangong hub notifications …`` processes: a deployment that fails is
POSTed, signed, to a real receiver on 127.0.0.1; a ``deliver`` killed before the POST, or
after it but before recording it, loses nothing: the next run delivers (at least once, the
same delivery id) (docs/operations.md "Notifications", docs/hub.md "Crash points")."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from sqlalchemy import select

from hub.db import Deployment
from hub.services.deployments import transition
from tests.hub.realhub import ENV, RealHub
from tests.hub.webhook_receiver import SECRET, receiver

NOTIFY_POINTS = ["hub.notify-sending", "hub.notify-sent"]


def _log(hub: RealHub) -> list[dict[str, object]]:
    out = hub.cli("notifications", "log", "--json")
    assert out.returncode == 0, out
    rows: list[dict[str, object]] = json.loads(out.stdout)
    return rows


def test_a_failed_deployment_is_delivered_once_the_killed_deliveries_are_rerun(
        tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    hub.seed(1)
    secret = tmp_path / "hook.secret"
    secret.write_bytes(SECRET)
    with receiver() as rec:
        out = hub.cli("notifications", "add-webhook", ENV, rec.url, "--events",
                      "deployment.failed,approval.needed", "--secret-file", str(secret),
                      "--json", user="admin")
        assert out.returncode == 0, out
        hook = json.loads(out.stdout)
        assert hook["events"] == ["approval.needed", "deployment.failed"]
        out = hub.cli("notifications", "list", ENV, "--json")
        assert [h["url"] for h in json.loads(out.stdout)] == [rec.url]

        with hub.ctx("op") as op:
            dep = op.session.scalars(select(Deployment)).one()
            transition(op, dep, "exported")
            transition(op, dep, "failed", summary={"step": "greet", "exit": 3})
            dep_id = dep.id

        killed = hub.cli("notifications", "deliver",
                         extra_env={"TIANGONG_CRASH_AT": "hub.notify-sending"})
        assert killed.returncode == -signal.SIGKILL, killed
        assert rec.posts == []
        [row] = _log(hub)
        assert (row["event"], row["state"], row["attempts"]) == ("deployment.failed",
                                                                 "pending", 0)

        killed = hub.cli("notifications", "deliver",
                         extra_env={"TIANGONG_CRASH_AT": "hub.notify-sent"})
        assert killed.returncode == -signal.SIGKILL, killed
        assert len(rec.posts) == 1  # received, but the hub died before recording it
        [row] = _log(hub)
        assert (row["state"], row["attempts"]) == ("pending", 0)

        out = hub.cli("notifications", "deliver", "--json")
        assert out.returncode == 0, out
        assert json.loads(out.stdout) == {"delivered": [row["id"]], "retrying": [],
                                          "failed": []}
        assert len(rec.posts) == 2
        first, second = rec.verified(0), rec.verified(1)
        assert first == second  # the same notification, the same delivery id
        assert (second["event"], second["deployment"], second["state"],
                second["environment"], second["agent"]) == (
            "deployment.failed", dep_id, "failed", ENV, "site-01")
        assert second["summary"] == {"step": "greet", "exit": 3}
        [row] = _log(hub)
        assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)

        out = hub.cli("notifications", "deliver", "--json")
        assert json.loads(out.stdout)["delivered"] == [] and len(rec.posts) == 2

        out = hub.cli("notifications", "remove", str(hook["id"]), "--json", user="admin")
        assert out.returncode == 0 and json.loads(out.stdout)["id"] == hook["id"]
        out = hub.cli("notifications", "list", "--json")
        assert json.loads(out.stdout) == []
    hub.close()
