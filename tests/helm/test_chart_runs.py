"""The chart's pod, run without a cluster: the init container, then the web and live
containers, each with the image's entrypoint and exactly the args and environment the chart
renders (Secrets given as the files and values the kubelet would give, `$(VAR)` expanded the
way the kubelet expands it), against this environment's real `tiangong`. A command line the
CLI does not accept, an init that is not idempotent or a probe path the hub does not serve
fails here."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.docker.deploy_files import START_DEADLINE_S, healthz
from tests.docker.test_images import HUB, Container, make_container
from tests.fixtures.dbservers import free_port, wait_for
from tests.helm.chart import VALUES, HelmMissingError, by_kind, documents, helm_path, render

PASSPHRASE = "helm-test-root-passphrase"


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (``$$`` escapes; unknown names stay as written)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), arg)


def pod_containers(text: str) -> dict[str, dict[str, Any]]:
    spec = by_kind(documents(text))[("Deployment", "hub-tiangong")]["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]}


def as_container(tmp: Path, spec: dict[str, Any], secrets: dict[tuple[str, str], str],
                 mapping: dict[str, str]) -> Container:
    env: dict[str, str] = {}
    for item in spec["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[(ref["name"], ref["key"])]
    tmp.mkdir(exist_ok=True)
    return make_container(HUB, {"environment": env}, tmp, spec["name"], mapping)


def probe(scheme: str, port: int, path: str) -> int:
    """An httpGet probe as the kubelet makes it (HTTPS without checking the certificate)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"{scheme.lower()}://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:  # noqa: S310 - http(s) on loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("case", ["postgres-ingress", "single-container"])
def test_the_rendered_pod_initialises_once_and_serves(
    tmp_path: Path, case: str, pg_db: str
) -> None:
    try:
        helm_path()
    except HelmMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    (tmp_path / "helm").mkdir()
    containers = pod_containers(render(tmp_path / "helm", VALUES[case]))
    http, live = free_port(), free_port()
    data, secret_dir = tmp_path / "data", tmp_path / "secrets"
    data.mkdir(mode=0o700)
    secret_dir.mkdir()
    (secret_dir / "root-passphrase").write_text(PASSPHRASE + "\n")
    (secret_dir / "admin-password").write_text("a long admin password\n")
    secrets = {("tiangong-db", "url"): pg_db}
    mapping = {"/var/lib/tiangong-hub": str(data), "/run/secrets/tiangong-admin": str(secret_dir),
               "/run/secrets/tiangong": str(secret_dir), "0.0.0.0:8400": f"127.0.0.1:{http}",
               "0.0.0.0:8401": f"127.0.0.1:{live}"}

    for start in ("first", "second"):  # a pod restart runs the init container again
        init = as_container(tmp_path / start, containers["init"], secrets, mapping)
        argv = init.argv([expand(a, init.env) for a in containers["init"]["args"]])
        proc = subprocess.run(argv, env=init.env, capture_output=True, text=True, timeout=180,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        listed = [{k: e[k] for k in ("name", "required_approvals", "description")}
                  for e in json.loads(proc.stdout)]
        assert listed == ([{"name": "plant-a", "required_approvals": 1, "description": ""}]
                          if case == "postgres-ingress" else [])
        assert ("first start: initialising" in proc.stderr) == (start == "first")

    hub_toml = (data / "hub.toml").read_text()
    assert (pg_db.rsplit("/", 1)[1] in hub_toml) == (case == "postgres-ingress")
    running = []
    try:
        for name in ("web", "live"):
            if name not in containers:
                continue
            c = as_container(tmp_path / "run", containers[name], secrets, mapping)
            proc_ = c.start([expand(a, c.env) for a in containers[name]["args"]])
            running.append((c, proc_))
        want = {"status": "ok", "database": "ok"}
        if case == "single-container":  # the live child is checked by /healthz too
            want["live"] = "ok"

        def serving() -> bool:
            for c, p in running:
                if p.poll() is not None:
                    raise AssertionError(f"{case}: {c.log.name} exited {p.returncode}:\n"
                                         f"{c.log_text()}")
            return healthz(http) == want and listening(live)

        wait_for(serving, START_DEADLINE_S, f"{case}: the web and live servers")
        # Every probe the chart renders, asked as the kubelet asks it, answers 200.
        ports = {"http": http, "live": live}
        probes = [(name, kind, containers[name][kind]["httpGet"])
                  for name in containers if name != "init"
                  for kind in ("livenessProbe", "readinessProbe")]
        assert len(probes) == 2 * (len(containers) - 1)
        for name, kind, get in probes:
            assert probe(get["scheme"], ports[get["port"]], get["path"]) == 200, (name, kind)
    finally:
        for c, p in reversed(running):
            assert c.stop(p) == 0, c.log_text()
