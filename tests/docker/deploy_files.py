"""Read what a container engine or systemd would read from docker/: the Dockerfiles'
instructions, compose.yaml's services and the units' ExecStart lines, so the tests can run the
same command lines against a real install (no container engine runs on our machines)."""

from __future__ import annotations

import json
import os
import re
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
REPO = DOCKER_DIR.parent
START_DEADLINE_S = 120  # seconds for a hub (init + gunicorn + live) or agent to come up
STOP_DEADLINE_S = 60  # seconds for a clean exit after SIGTERM


@dataclass
class Dockerfile:
    path: Path
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuations joined
    env: dict[str, str] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)  # destination -> source

    def one(self, name: str) -> str:
        found = [args for instr, args in self.instructions if instr == name]
        assert len(found) == 1, f"{self.path.name}: expected one {name}, found {len(found)}"
        return found[0]

    def exec_form(self, name: str) -> list[str]:
        """ENTRYPOINT/CMD/VOLUME in JSON (exec) form: a shell form would swallow signals."""
        args = self.one(name)
        try:
            value = json.loads(args)
        except json.JSONDecodeError as e:
            raise AssertionError(f"{self.path.name}: {name} is not in JSON exec form: "
                                 f"{args}") from e
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
        return value

    def healthcheck(self) -> list[str]:
        """HEALTHCHECK's CMD (exec form), its --options left out."""
        args = self.one("HEALTHCHECK")
        words = args.split(" ")
        cmd = " ".join(words[words.index("CMD") + 1:])
        value = json.loads(cmd)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
        return value

    def runs(self) -> list[str]:
        return [args for instr, args in self.instructions if instr == "RUN"]


def read_dockerfile(path: Path) -> Dockerfile:
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: ends inside a continued line"
    instructions = []
    for line in joined:
        instr, _, args = line.partition(" ")
        instructions.append((instr.upper(), args.strip()))
    df = Dockerfile(path, instructions)
    for instr, args in instructions:
        if instr == "ENV":
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                assert sep, f"{path.name}: ENV {word!r} is not KEY=VALUE"
                df.env[key] = value
        elif instr == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            *sources, dest = words
            for src in sources:
                df.copies[dest] = src
    return df


def read_compose(path: Path, variables: dict[str, str]) -> dict[str, dict[str, object]]:
    """compose.yaml's services, with ``${VAR}`` / ``${VAR:?message}`` interpolated from
    ``variables`` the way compose does (a missing required variable is an error)."""

    def interpolate(match: re.Match[str]) -> str:
        name, _, rest = match.group(1).partition(":")
        if name in variables:
            return variables[name]
        raise AssertionError(f"{path.name}: ${{{name}}} is required: {rest.lstrip('?')}")

    text = re.sub(r"\$\{([^}]+)\}", interpolate, path.read_text())
    data = yaml.safe_load(text)
    services: dict[str, dict[str, object]] = data["services"]
    return services


def compose_comment_command(path: Path, prefix: str) -> list[str]:
    """The command line a comment in ``path`` gives after ``prefix`` (with ``\\`` continuations)."""
    lines = [ln.lstrip("# ").rstrip() for ln in path.read_text().splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith(prefix))
    text = lines[start][len(prefix):]
    i = start
    while text.endswith("\\"):
        i += 1
        text = text[:-1] + " " + lines[i]
    return shlex.split(text)


def compose_env(service: dict[str, object]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "write environment: as a mapping"
    return {str(k): str(v) for k, v in env.items()}


def compose_volumes(service: dict[str, object]) -> dict[str, str]:
    """volume name -> mount point."""
    out = {}
    for spec in service.get("volumes", []):  # type: ignore[attr-defined]
        name, _, target = str(spec).partition(":")
        out[name] = target.split(":")[0]
    return out


def unit_exec_start(path: Path) -> list[str]:
    lines = [ln.split("=", 1)[1] for ln in path.read_text().splitlines()
             if ln.startswith("ExecStart=")]
    assert len(lines) == 1, f"{path.name}: expected one ExecStart, found {len(lines)}"
    return shlex.split(lines[0])


def unit_environment(path: Path) -> dict[str, str]:
    env = {}
    for ln in path.read_text().splitlines():
        if ln.startswith("Environment="):
            for word in shlex.split(ln.split("=", 1)[1]):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def remap(value: str, mapping: dict[str, str]) -> str:
    """Replace the image paths/addresses in ``value`` by the test's (longest first)."""
    for old in sorted(mapping, key=len, reverse=True):
        value = value.replace(old, mapping[old])
    return value


def remap_all(values: list[str], mapping: dict[str, str]) -> list[str]:
    return [remap(v, mapping) for v in values]


def clean_env() -> dict[str, str]:
    """The test process's environment without anything Tiangong or pip would read."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TIANGONG_", "PIP_"))}


def healthz(port: int) -> dict[str, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            body: dict[str, str] = json.load(resp)
            return body if resp.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None
