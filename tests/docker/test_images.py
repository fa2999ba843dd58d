"""The container images and compose.yaml, run without a container engine: the Dockerfiles'
ENTRYPOINT/CMD/ENV/USER/VOLUME and compose.yaml's services are parsed, and every entrypoint
script and command line runs against the real ``tiangong`` of this environment, with the
image's environment and its paths remapped to temporary directories. An option in the wrong
place, a missing ``init`` or an unpublished port fails here."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docker.deploy_files import (
    DOCKER_DIR,
    REPO,
    START_DEADLINE_S,
    STOP_DEADLINE_S,
    Dockerfile,
    clean_env,
    compose_comment_command,
    compose_env,
    compose_volumes,
    healthz,
    read_compose,
    read_dockerfile,
    remap,
    remap_all,
)
from tests.fixtures.dbservers import free_port, wait_for

TIANGONG = Path(sys.executable).parent / "tiangong"
DB_PASSWORD = "compose-test-password"  # ${TIANGONG_DB_PASSWORD} for compose.yaml
PASSPHRASE = "compose-test-root-passphrase"

HUB = read_dockerfile(DOCKER_DIR / "Dockerfile.hub")
AGENT = read_dockerfile(DOCKER_DIR / "Dockerfile.agent")
SERVICES = read_compose(DOCKER_DIR / "compose.yaml", {"TIANGONG_DB_PASSWORD": DB_PASSWORD})
COMPOSE_ENROLL = compose_comment_command(DOCKER_DIR / "compose.yaml", "docker compose exec hub ")


@pytest.mark.parametrize("df", [HUB, AGENT], ids=["hub", "agent"])
def test_image_runs_as_non_root_with_data_on_a_volume_and_builds_offline(df: Dockerfile) -> None:
    user = df.one("USER")
    assert user not in ("root", "0") and not user.startswith("0:"), user
    volumes = df.exec_form("VOLUME")
    home = df.env.get("TIANGONG_HUB_DATA_DIR") or df.env["TIANGONG_AGENT_HOME"]
    assert volumes == [home]
    # The image creates the volume's directory owned by the user, so a fresh named volume is.
    assert any(f"chown {user}:{user} {home}" in run for run in df.runs())
    # Built from the offline kit only: every pip install names --no-index and the kit's wheels.
    installs = [run for run in df.runs() if "pip install" in run]
    assert installs and all("--no-index" in run and "/tmp/wheels" in run for run in installs)
    assert df.copies["/tmp/wheels"] == "wheels"
    for run in df.runs():
        for fetcher in ("apt-get", "apk ", "curl ", "wget ", "git "):
            assert fetcher not in run, f"{df.path.name}: RUN uses the network: {run}"
    entrypoint = df.exec_form("ENTRYPOINT")
    assert len(entrypoint) == 1
    script = next(src for dest, src in df.copies.items() if dest.endswith("/" + entrypoint[0]))
    assert (REPO / script).is_file() and os.access(REPO / script, os.X_OK)
    assert df.exec_form("CMD")[0] in ("hub", "agent")


def test_compose_publishes_the_hub_ports_and_agrees_with_postgres() -> None:
    assert set(SERVICES) == {"postgres", "hub", "agent"}
    hub = SERVICES["hub"]
    command = hub["command"]
    assert isinstance(command, list)
    binds = {command[i + 1] for i, arg in enumerate(command) if arg in ("--bind", "--live-bind")}
    ports = {str(p).split(":")[1] for p in hub["ports"]}  # type: ignore[attr-defined]
    exposed = set(HUB.one("EXPOSE").split())
    assert {b.rsplit(":", 1)[1] for b in binds} == ports == exposed == {"8400", "8401"}
    pg = compose_env(SERVICES["postgres"])
    assert compose_env(hub)["TIANGONG_HUB_DATABASE_URL"] == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{pg['POSTGRES_DB']}")
    assert hub["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert SERVICES["agent"]["depends_on"] == {"hub": {"condition": "service_healthy"}}
    assert HUB.healthcheck()[0] == "python"  # a compose "service_healthy" needs one
    # The agent reads root.json where the hub publishes it: the same named volume.
    agent = SERVICES["agent"]
    hub_mounts, agent_mounts = compose_volumes(hub), compose_volumes(agent)
    publish = compose_env(hub)["TIANGONG_HUB_PUBLISH_DIR"]
    shared = next(name for name, target in hub_mounts.items() if target == publish)
    assert Path(compose_env(agent)["TIANGONG_AGENT_ROOT"]).parent == Path(agent_mounts[shared])
    assert hub_mounts["hub-data"] == HUB.env["TIANGONG_HUB_DATA_DIR"]
    assert agent_mounts["agent-home"] == AGENT.env["TIANGONG_AGENT_HOME"]


@dataclass
class Container:
    """One image's runtime, simulated: its ENV with paths remapped, its entrypoint on PATH."""

    df: Dockerfile
    mapping: dict[str, str]
    env: dict[str, str]
    log: Path

    def argv(self, command: list[str]) -> list[str]:
        return remap_all([*self.df.exec_form("ENTRYPOINT"), *command], self.mapping)

    def start(self, command: list[str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(self.argv(command), env=self.env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=STOP_DEADLINE_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def make_container(df: Dockerfile, service: dict[str, object], tmp: Path, name: str,
                   mapping: dict[str, str]) -> Container:
    bindir = tmp / f"{name}-bin"
    bindir.mkdir()
    (bindir / "tiangong").symlink_to(TIANGONG)
    (bindir / "python").symlink_to(TIANGONG.parent / "python")  # the image's venv python
    for dest, src in df.copies.items():
        if dest.startswith("/usr/local/bin/"):
            (bindir / Path(dest).name).symlink_to(REPO / src)
    mapping = {**mapping, "/opt/tiangong/bin": str(bindir),
               "/usr/local/bin": f"{bindir}:/usr/local/bin"}
    for volume in df.exec_form("VOLUME"):
        if volume in mapping:  # a volume the caller shares between containers (one pod)
            continue
        mapping[volume] = str(tmp / f"{name}-volume")
        (tmp / f"{name}-volume").mkdir(mode=0o700)
    for vol_name, target in compose_volumes(service).items():
        if target not in mapping:
            (tmp / vol_name).mkdir(exist_ok=True)
            mapping[target] = str(tmp / vol_name)
    env = clean_env()
    env.update({k: remap(v, mapping) for k, v in df.env.items()})
    env.update({k: remap(v, mapping) for k, v in compose_env(service).items()})
    return Container(df, mapping, env, tmp / f"{name}.log")


def _until_up(c: Container, proc: subprocess.Popen[bytes], up: object, what: str) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}:\n{c.log_text()}")
        return bool(up() if callable(up) else up)
    wait_for(ready, START_DEADLINE_S, what)


@pytest.mark.slow
def test_compose_site_starts_initialises_once_and_stops(tmp_path: Path, pg_db: str) -> None:
    """The hub service with compose's environment on a real PostgreSQL: the first start
    runs `hub init` and serves /healthz with its live server; the second start (the image's own
    CMD) does not initialise again. Then the agent service creates its home from the root.json
    the hub published, runs, and restarts without a second init."""
    http, live = free_port(), free_port()
    secret = tmp_path / "root_passphrase"
    secret.write_text(PASSPHRASE + "\n")
    compose_url = compose_env(SERVICES["hub"])["TIANGONG_HUB_DATABASE_URL"]
    mapping = {"0.0.0.0:8400": f"127.0.0.1:{http}", "0.0.0.0:8401": f"127.0.0.1:{live}",
               "/run/secrets/root_passphrase": str(secret), compose_url: pg_db,
               "wss://hub:8401": f"wss://127.0.0.1:{live}"}
    hub = make_container(HUB, SERVICES["hub"], tmp_path, "hub", mapping)
    data = Path(hub.env["TIANGONG_HUB_DATA_DIR"])
    published = Path(hub.env["TIANGONG_HUB_PUBLISH_DIR"]) / "root.json"

    proc = hub.start(SERVICES["hub"]["command"])  # type: ignore[arg-type]
    _until_up(hub, proc, lambda: healthz(http) == {"status": "ok", "database": "ok",
                                                    "live": "ok"}, "hub serve (first start)")
    # The image's HEALTHCHECK command says healthy too.
    health_argv = remap_all(HUB.healthcheck(), {"127.0.0.1:8400": f"127.0.0.1:{http}",
                                                 **hub.mapping})
    check = subprocess.run(health_argv, env=hub.env, capture_output=True, text=True,
                           timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    assert hub.stop(proc) == 0, hub.log_text()
    down = subprocess.run(health_argv, env=hub.env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert down.returncode != 0  # and unhealthy once stopped
    assert "first start: initialising" in hub.log_text()
    assert (data / "hub.toml").is_file()
    assert published.read_bytes() == (data / "root.json").read_bytes()
    assert pg_db.rsplit("/", 1)[1] in (data / "hub.toml").read_text()
    root_before = (data / "root.json").read_bytes()

    hub.log.write_text("")
    proc = hub.start(HUB.exec_form("CMD"))
    try:
        _until_up(hub, proc, lambda: healthz(http) is not None, "hub serve (second start)")
        assert "initialising" not in hub.log_text()
        assert (data / "root.json").read_bytes() == root_before

        agent = make_container(AGENT, SERVICES["agent"], tmp_path, "agent", hub.mapping)
        home = Path(agent.env["TIANGONG_AGENT_HOME"])
        assert agent.env["TIANGONG_AGENT_ROOT"] == str(published)
        aproc = agent.start(SERVICES["agent"]["command"])  # type: ignore[arg-type]
        _until_up(agent, aproc, lambda: "waiting for the hub's enrollment response"
                  in agent.log_text(), "the agent's enrollment request")
        # The operator's step, exactly as compose.yaml's comment gives it.
        enroll = subprocess.run(remap_all(COMPOSE_ENROLL, hub.mapping), env=hub.env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert enroll.returncode == 0, enroll.stderr
        _until_up(agent, aproc, lambda: "watching" in agent.log_text(), "agent run (first start)")
        assert agent.stop(aproc) == 0, agent.log_text()
        assert "first start: creating the agent home" in agent.log_text()
        config = (home / "agent.toml").read_text()
        assert "plant-a-01" in config and f"wss://127.0.0.1:{live}" in config
        keys_before = sorted(p.name for p in home.rglob("*.key"))

        agent.log.write_text("")
        aproc = agent.start(AGENT.exec_form("CMD"))
        _until_up(agent, aproc, lambda: "watching" in agent.log_text(), "agent run (second start)")
        assert agent.stop(aproc) == 0, agent.log_text()
        assert "first start" not in agent.log_text()
        assert sorted(p.name for p in home.rglob("*.key")) == keys_before
    finally:
        hub.stop(proc)


def test_hub_entrypoint_refuses_to_init_without_a_passphrase(tmp_path: Path) -> None:
    service = {**SERVICES["hub"], "environment": {
        k: v for k, v in compose_env(SERVICES["hub"]).items()
        if k not in ("TIANGONG_ROOT_PASSPHRASE_FILE", "TIANGONG_HUB_DATABASE_URL")}}
    hub = make_container(HUB, service, tmp_path, "hub", {})
    data = Path(hub.env["TIANGONG_HUB_DATA_DIR"])
    proc = subprocess.run(hub.argv(HUB.exec_form("CMD")), env=hub.env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 64
    assert "TIANGONG_ROOT_PASSPHRASE_FILE" in proc.stderr and str(data) in proc.stderr
    assert list(data.iterdir()) == []
    assert list(Path(hub.env["TIANGONG_HUB_PUBLISH_DIR"]).iterdir()) == []


def test_hub_entrypoint_sets_up_local_sign_in_from_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "root_passphrase"
    secret.write_text(PASSPHRASE + "\n")
    password = tmp_path / "admin_password"
    password.write_text("a long admin password\n")
    service = {**SERVICES["hub"], "environment": {
        **{k: v for k, v in compose_env(SERVICES["hub"]).items()
           if k != "TIANGONG_HUB_DATABASE_URL"},
        "TIANGONG_HUB_ADMIN_PASSWORD_FILE": "/run/secrets/admin_password"}}
    hub = make_container(HUB, service, tmp_path, "hub", {
        "/run/secrets/root_passphrase": str(secret),
        "/run/secrets/admin_password": str(password)})
    proc = subprocess.run(hub.argv(["hub", "--local-admin", "admin", "users", "list", "--json"]),
                          env=hub.env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [u["username"] for u in json.loads(proc.stdout)] == ["admin"]
    data = Path(hub.env["TIANGONG_HUB_DATA_DIR"])
    assert "local_login = true" in (data / "hub.toml").read_text()
    with sqlite3.connect(data / "hub.db") as db:
        (hashed,) = db.execute(
            "SELECT password_hash FROM users WHERE username = 'admin'").fetchone()
    assert hashed and "a long admin password" not in hashed


def test_agent_entrypoint_gives_up_when_root_json_never_appears(tmp_path: Path) -> None:
    agent = make_container(AGENT, SERVICES["agent"], tmp_path, "agent", {})
    agent.env["TIANGONG_AGENT_ROOT_WAIT_S"] = "0"
    home = Path(agent.env["TIANGONG_AGENT_HOME"])
    proc = subprocess.run(agent.argv(AGENT.exec_form("CMD")), env=agent.env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 66
    assert f"{agent.env['TIANGONG_AGENT_ROOT']} did not appear within 0 s" in proc.stderr
    assert list(home.iterdir()) == []
