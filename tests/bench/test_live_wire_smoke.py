"""Smoke run of bench/live_wire.py: every figure is reported (never their values)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_live_wire_reports_send_and_receive_cost() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "live_wire.py"), "--mib", "2",
                           "--reps", "1"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    fields = dict(item.split("=") for item in result.split()[2:])
    assert set(fields) == {"send_ms_per_mib", "send_from_file_ms_per_mib",
                           "read_encode_ms_per_mib", "receive_ms_per_mib",
                           "receive_loop_ms_per_mib", "frames_stock_ms_per_mib",
                           "frames_one_copy_ms_per_mib", "socket_send_ws_ms_per_mib",
                           "socket_send_hub_ms_per_mib", "load"}
    assert float(fields["send_ms_per_mib"]) > 0 < float(fields["receive_ms_per_mib"])
    assert float(fields["send_from_file_ms_per_mib"]) > 0 < float(fields["read_encode_ms_per_mib"])
    assert (float(fields["frames_stock_ms_per_mib"]) > 0
            < float(fields["frames_one_copy_ms_per_mib"]))
    assert (float(fields["socket_send_ws_ms_per_mib"]) > 0
            < float(fields["socket_send_hub_ms_per_mib"]))
