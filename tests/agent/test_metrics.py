"""agent.metrics: the node-exporter textfile — its format (read back with Prometheus' own
parser), its atomic replacement, the ``[metrics] textfile`` setting, and the figures of a
real agent home before and after a bundle ran."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ConfigError, load_config
from agent.metrics import AgentFigures, render, write_textfile
from tests.agent.conftest import drop
from tests.agent.test_service import _make_bundle


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _figures(**changes: object) -> AgentFigures:
    base: dict[str, object] = dict(
        agent_id="site-01", environment="plant-a", hub_id="hub-1", sequence=3,
        root_version=1, bundles={"succeeded": 2, "failed": 1}, inbox_waiting=0,
        inbox_held=1, quarantined=0, results_waiting=2, live_connected=True,
        problems=("outbox",), written_at=1_700_000_000.5)
    base.update(changes)
    return AgentFigures(**base)  # type: ignore[arg-type]


def test_the_textfile_is_what_prometheus_parses() -> None:
    samples = _samples(render(_figures(environment='odd "env"\\ with\nnewline')))
    assert samples[("tiangong_agent_info", (("agent_id", "site-01"),
                                            ("environment", 'odd "env"\\ with\nnewline'),
                                            ("hub_id", "hub-1")))] == 1
    assert samples[("tiangong_agent_bundles", (("state", "failed"),))] == 1
    assert samples[("tiangong_agent_bundles", (("state", "succeeded"),))] == 2
    assert samples[("tiangong_agent_sequence", ())] == 3
    assert samples[("tiangong_agent_inbox_held", ())] == 1
    assert samples[("tiangong_agent_results_waiting", ())] == 2
    assert samples[("tiangong_agent_live_connected", ())] == 1
    assert samples[("tiangong_agent_problem", (("area", "outbox"),))] == 1
    assert samples[("tiangong_agent_textfile_written_timestamp_seconds", ())] == 1_700_000_000.5


def test_no_live_channel_no_live_metric_and_nothing_accepted_is_nan() -> None:
    samples = _samples(render(_figures(live_connected=None, sequence=None, problems=())))
    assert not any(name == "tiangong_agent_live_connected" for name, _ in samples)
    assert not any(name == "tiangong_agent_problem" for name, _ in samples)
    assert samples[("tiangong_agent_sequence", ())] != samples[("tiangong_agent_sequence", ())]


def test_the_textfile_is_replaced_atomically_and_readable_by_the_collector(
        tmp_path: Path) -> None:
    path = tmp_path / "tiangong-agent.prom"
    write_textfile(path, "old 1\n")
    write_textfile(path, render(_figures()))
    assert _samples(path.read_text())[("tiangong_agent_sequence", ())] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["tiangong-agent.prom"]  # no temporaries
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_unwritable_directory_raises_and_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ro" / "tiangong-agent.prom"
    path.parent.mkdir()
    write_textfile(path, "old 1\n")
    os.chmod(path.parent, 0o500)
    try:
        if os.access(path.parent, os.W_OK):  # root writes anyway: use a missing directory
            path = tmp_path / "missing" / "tiangong-agent.prom"
        with pytest.raises(OSError):
            write_textfile(path, render(_figures()))
    finally:
        os.chmod(tmp_path / "ro", 0o700)
    assert (tmp_path / "ro" / "tiangong-agent.prom").read_text() == "old 1\n"
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["tiangong-agent.prom"]


@pytest.mark.parametrize("value", ["metrics.txt", 7, "/var/lib/node_exporter/agent"])
def test_a_textfile_setting_that_the_collector_would_ignore_is_refused(
        site, value: object) -> None:  # type: ignore[no-untyped-def]
    agent, _, _ = site
    cfg = agent.config.home / "agent.toml"
    before = cfg.read_text()
    cfg.write_text(before + f"\n[metrics]\ntextfile = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=r"\[metrics\] textfile must be a path ending in "
                                          r"\.prom"):
        load_config(agent.config.home)
    cfg.write_text(before)
    assert load_config(agent.config.home).metrics_textfile is None


def test_a_real_agent_writes_its_state_before_and_after_a_bundle(
        site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent, kit, _ = site
    cfg = agent.config.home / "agent.toml"
    cfg.write_text(cfg.read_text() + '\n[metrics]\ntextfile = "metrics/agent.prom"\n')
    agent.config = load_config(agent.config.home)
    path = agent.config.home / "metrics" / "agent.prom"
    assert agent.config.metrics_textfile == path
    path.parent.mkdir()

    agent.write_metrics()
    before = _samples(path.read_text())
    assert before[("tiangong_agent_sequence", ())] == 0  # the pinned root, nothing accepted
    assert not any(name == "tiangong_agent_bundles" for name, _ in before)
    assert not any(name == "tiangong_agent_live_connected" for name, _ in before)

    out = agent.process(drop(agent, _make_bundle(kit, tmp_path / "hello.tgb", seq=1)))
    assert out.status == "succeeded"
    agent.write_metrics()  # within WRITE_EVERY_S of the last write: not rewritten
    assert _samples(path.read_text()) == before
    agent.write_metrics(force=True)  # what the loop does after a pass that did something
    after = _samples(path.read_text())
    assert after[("tiangong_agent_sequence", ())] == 1
    assert after[("tiangong_agent_bundles", (("state", "succeeded"),))] == 1
    assert after[("tiangong_agent_results_waiting", ())] == 1
