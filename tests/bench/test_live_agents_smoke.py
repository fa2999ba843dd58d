"""Smoke run of bench/live_agents.py: three agents, a tiny bundle, short windows.

Checks that the benchmark runs end to end against a real hub child process on 127.0.0.1 and
reports every figure it promises (the structure, never the timings: STYLE.md §15): the
agents in two worker processes of their own (how N = 10,000 fits the open-files limit),
over wss:// with the hub's pinned CA, every agent of the small burst served.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FLEET_KEYS = {
    "agents", "tls", "agent_processes", "agent_pids", "enroll_s", "connect_s",
    "connect_hub_cpu_s", "connect_settled_s",
    "heartbeat_s", "idle_window_s", "idle_hub_cpu_s_per_min", "idle_heartbeats",
    "hub_rss_mib", "hub_peak_rss_mib", "deliver_queued", "deliver_received",
    "deliver_min_ms", "deliver_p50_ms", "deliver_p99_ms", "deliver_max_ms",
    "deliver1_samples", "deliver1_received", "deliver1_p50_ms", "deliver1_p99_ms",
    "deliver1_max_ms", "deliver_bench_cpu_s",
    # the burst's timeline: where the agents were when (hub rows and the agents' stamps)
    "timeline_claimed_last_ms", "timeline_exported_last_ms", "timeline_offered_last_ms",
    "timeline_received_last_ms", "timeline_delivered_last_ms", "timeline_export_calls",
    "timeline_delivered_batches", "timeline_p50_ms", "timeline_p99_ms", "timeline_p100_ms",
    "timeline_export_to_offer_ms", "timeline_offer_to_received_ms",
    "timeline_received_to_delivered_ms",
    "log_agents", "log_messages", "log_stored_lines", "log_mb_s", "log_msgs_s",
}
TRANSFER_KEYS = {
    "transfer_mib", "rounds", "tiangong_disk_mb_s", "tiangong_memory_mb_s",
    "baseline_disk_mb_s", "baseline_memory_mb_s", "ratio_disk", "ratio_memory",
    "baseline_agent_disk_mb_s", "baseline_agent_memory_mb_s", "ratio_agent_disk",
    "ratio_agent_memory", "cpu_ratio_disk", "cpu_ratio_memory", "cpu_ratio_agent_disk",
    "cpu_ratio_agent_memory", "tiangong_disk_cpu_ms_per_mib", "baseline_disk_cpu_ms_per_mib",
    "tiangong_memory_recv_cpu_ms_per_mib", "tiangong_memory_send_cpu_ms_per_mib",
    "baseline_memory_recv_cpu_ms_per_mib", "baseline_memory_send_cpu_ms_per_mib",
    "load_average", "hub_peak_rss_mib", "runs",
}
# Every transfer of the series: both senders, every sink, each receiver's own figures.
RUN_KEYS = {"sender", "sink", "round", "seconds", "mb_s", "recv_cpu_s", "recv_loop_cpu_s",
            "send_cpu_s", "recv_faults", "load", "window"}


def test_three_agents_report_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "live_agents.py"), "--agents", "3", "--quick",
         "--idle-seconds", "1", "--log-messages", "20", "--transfer-mib", "2",
         "--agent-processes", "2", "--tls",
         "--workdir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (fleet,) = report["fleet"]
    assert "failed" not in fleet, fleet
    assert set(fleet) >= FLEET_KEYS, FLEET_KEYS - set(fleet)
    assert fleet["agents"] == 3
    # The agents ran in two processes of their own.
    assert fleet["agent_processes"] == 2
    assert len(set(fleet["agent_pids"])) == 2
    assert fleet["tls"] is True
    # Every agent got its bundle, every log line was stored once.
    # Every steady sample (one deployment at a time) arrived too.
    assert fleet["deliver_queued"] == fleet["deliver_received"] == 3
    # Every stage of the slowest agent stamped ("claimed/exported/offered/received/
    # delivered", ms after the queue's commit), in the order the protocol takes them.
    stages = [int(t) for t in fleet["timeline_p100_ms"].split("/")]
    assert len(stages) == 5
    assert stages[0] <= stages[1] and stages[2] <= stages[3] <= stages[4]
    assert fleet["deliver1_samples"] == fleet["deliver1_received"] == 3
    assert fleet["log_stored_lines"] == fleet["log_messages"] == 3 * 20
    transfer = report["transfer"]
    assert set(transfer) >= TRANSFER_KEYS, TRANSFER_KEYS - set(transfer)
    # One round: each sender into each of its sinks once, every run with its CPU figures.
    assert sorted((r["sender"], r["sink"]) for r in transfer["runs"]) == [
        ("bare", "agent_disk"), ("bare", "agent_memory"), ("bare", "disk"), ("bare", "memory"),
        ("tiangong", "disk"), ("tiangong", "memory")]
    assert all(set(r) >= RUN_KEYS for r in transfer["runs"]), transfer["runs"]
    assert all(r["send_cpu_s"] > 0 and r["recv_cpu_s"] > 0 for r in transfer["runs"])
    # each window on CLOCK_MONOTONIC (for perf record -k mono), as long as it measured
    assert all(r["window"][1] - r["window"][0] == pytest.approx(r["seconds"], abs=1e-3)
               and r["window"][2] > 0 for r in transfer["runs"])
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert [r.split()[1] for r in results] == ["live_agents_disk", "live_agents",
                                                "live_agents_transfer"]
    assert report["sqlite_commits_per_s"] > 0
    # The work directory is removed afterwards.
    assert not list(tmp_path.glob("tiangong-bench-live-*"))
