"""Smoke run of bench/export_burst.py: every queued deployment is exported and the figures
are reported (never judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("as_live", [[], ["--worker-gc", "--made-dirs"]])
def test_export_burst_exports_every_deployment_and_reports_cpu(
        tmp_path: Path, as_live: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "export_burst.py"),
                           "--agents", "5", "--sql", "--workdir", str(tmp_path), *as_live],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    fields = dict(item.split("=") for item in result.split()[2:])
    assert set(fields) == {"agents", "calls", "written", "failed", "cpu_ms_per_export",
                           "user_ms", "sys_ms", "wall_ms_per_export", "sql_per_export", "load"}
    assert (fields["agents"], fields["calls"], fields["written"], fields["failed"]) == (
        "5", "1", "5", "0")
    assert float(fields["cpu_ms_per_export"]) > 0 < float(fields["sql_per_export"])
    assert float(fields["user_ms"]) >= 0 <= float(fields["sys_ms"])  # the CPU split in two
    assert list(tmp_path.iterdir()) == []  # the work directory is removed
