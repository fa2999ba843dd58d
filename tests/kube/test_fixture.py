"""start_kube_server's own behaviour, with a stand-in for the server binary.

The stand-in is a shell script taking the real binary's arguments: it fails the way the real
one does when a port it picked was taken, or starts (prints ``ready URL``, writes the
kubeconfig, then waits for stdin to close, as the real one does).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.fixtures import kubeserver
from tests.fixtures.kubeserver import KubeStartError, start_kube_server, stop_kube_server

STAND_IN = """#!/bin/sh
# usage: apiserver -kubeconfig PATH -dir DIR
echo run >> "{runs}"
if [ "$(wc -l < "{runs}")" -le {failures} ]; then
    echo "apiserver: {error}" >&2
    exit 1
fi
cat > "$2" <<EOF
clusters: [{{cluster: {{certificate-authority-data: Q0E=, server: 'https://127.0.0.1:1'}}}}]
users: [{{user: {{token: t0ken}}}}]
EOF
echo "ready https://127.0.0.1:1"
cat > /dev/null
"""
TAKEN = "listen tcp 127.0.0.1:41234: bind: address already in use"


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int, error: str) -> Path:
    runs = tmp_path / "runs"
    script = tmp_path / "apiserver"
    script.write_text(STAND_IN.format(runs=runs, failures=failures, error=error))
    script.chmod(0o755)
    monkeypatch.setattr(kubeserver, "kube_binaries", lambda: (script, tmp_path / "kubectl"))
    return runs


def test_a_taken_port_means_another_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = stand_in(tmp_path, monkeypatch, failures=2, error=TAKEN)

    server = start_kube_server()

    try:
        assert (server.url, server.token) == ("https://127.0.0.1:1", "t0ken")
        assert server.ca_file.read_bytes() == b"CA"
        assert runs.read_text() == "run\n" * 3
    finally:
        stop_kube_server(server)
    assert server.process.returncode == -signal.SIGTERM  # asked to stop, not killed
    assert not server.work_dir.exists()


@pytest.mark.parametrize(
    ("failures", "error", "runs"),
    [(3, TAKEN, 3), (1, "etcd: data dir is not writable", 1)],
    ids=["port-taken-every-time", "other-error"],
)
def test_the_start_failure_carries_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int, error: str, runs: int
) -> None:
    ran = stand_in(tmp_path, monkeypatch, failures=failures, error=error)

    with pytest.raises(KubeStartError) as info:
        start_kube_server()

    assert str(info.value).startswith("the test API server exited with status 1 before it was ")
    assert str(info.value).endswith(f"apiserver: {error}")
    assert ran.read_text() == "run\n" * runs
