"""The live server killed between moving confirmed bundles into ``sent/`` and committing
their ``delivered`` record (crash point ``hub.live-delivering``, a real process killed with
SIGKILL): the bundles are never offered again (they are in ``sent/``), and nothing else ever
recorded them, so their deployments stayed ``exported`` for good. The next live server
records them at its start (:meth:`hub.live_hub.LiveHub.recover_delivered`), each once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from hub.config import load_config
from hub.db import AuditEvent, make_engine, make_session_factory
from hub.keystore import load_hub_keys
from hub.live_hub import LiveHub
from tests.hub.test_live_exports import AGENTS, _deployments, _hub

LIVE_POINTS = ["hub.live-delivering"]

#: A live server that has just had its agents confirm every spooled bundle: it records them.
_DELIVER = """
import sys
from pathlib import Path
from hub.config import load_config
from hub.db import make_engine, make_session_factory
from hub.keystore import load_hub_keys
from hub.live_hub import LiveHub
data = Path(sys.argv[1])
config, keys = load_config(data), load_hub_keys(data)
engine = make_engine(config.database_url, audit_mac=keys.audit_mac)
hub = LiveHub(session_factory=make_session_factory(engine), keys=keys, data_dir=data,
              actor=None)
hub._mark_delivered([(a, n, "received") for a, n in
                     (item.split("/") for item in sys.argv[2:])])
"""


def _live_hub(data: Path) -> LiveHub:
    config, keys = load_config(data), load_hub_keys(data)
    engine = make_engine(config.database_url, audit_mac=keys.audit_mac)
    return LiveHub(session_factory=make_session_factory(engine), keys=keys, data_dir=data,
                   actor=None)


def _events(data: Path) -> Counter[str]:
    engine = make_engine(load_config(data).database_url)
    try:
        with make_session_factory(engine)() as s:
            return Counter(s.scalars(select(AuditEvent.action).where(AuditEvent.action.in_(
                ["live.delivered", "deployment.delivered"]))))
    finally:
        engine.dispose()


def test_bundles_moved_to_sent_by_a_killed_live_server_are_recorded_delivered_once(
        tmp_path: Path) -> None:
    data = _hub(tmp_path)
    hub = _live_hub(data)
    assert hub._export_many(AGENTS) == {a: (1, 0) for a in AGENTS}
    confirmed = []
    for agent_id in AGENTS:  # what LiveHub._sent does once the agent says RECEIVED
        (spooled,) = (hub.spool_root / agent_id).glob("*.tgb")
        assert (spooled.parent / "sent").is_dir()  # made by the export
        spooled.rename(spooled.parent / "sent" / spooled.name)
        confirmed.append(f"{agent_id}/{spooled.name}")
    env = {**os.environ, "TIANGONG_CRASH_AT": LIVE_POINTS[0]}
    killed = subprocess.run([sys.executable, "-c", _DELIVER, str(data), *confirmed],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [state for state, _ in _deployments(data)] == ["exported"] * len(AGENTS)
    assert _events(data) == Counter()

    again = _live_hub(data)
    assert again.recover_delivered() == len(AGENTS)
    assert [state for state, _ in _deployments(data)] == ["delivered"] * len(AGENTS)
    assert again.recover_delivered() == 0  # once each
    assert _events(data) == Counter({"live.delivered": len(AGENTS),
                                     "deployment.delivered": len(AGENTS)})
    for agent_id in AGENTS:  # never offered again: nothing left in the spool
        assert not list((again.spool_root / agent_id).glob("*.tgb"))
