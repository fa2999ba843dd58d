"""The Helm chart in docker/helm/tiangong and the real `helm` built by tests/helm/build.sh
(`make helm`, run by `make test`): render it, lint it, read what it renders."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "docker" / "helm" / "tiangong"
EXAMPLES = REPO / "docker" / "helm" / "examples"
BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
HELM_TIMEOUT_S = 120  # seconds for one helm command

#: The values files the tests render: the chart's defaults and each example.
VALUES = {
    "default": None,
    "postgres-ingress": EXAMPLES / "postgres-ingress.yaml",
    "single-container": EXAMPLES / "single-container.yaml",
}


class HelmMissingError(Exception):
    """helm is not built for the pinned sources."""


def helm_path() -> Path:
    """The `helm` built for the current tests/helm/cli sources.

    Raises:
        HelmMissingError: not built (the message says to run ``make helm``).
    """
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), "--path"], capture_output=True,
                          text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise HelmMissingError(proc.stderr.strip() or f"{BUILD_SCRIPT} --path failed")
    return Path(proc.stdout.strip())


def helm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm with its configuration, cache and data under ``home`` (nothing of the user's)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run([str(helm_path()), *args], env=env, capture_output=True, text=True,
                          timeout=HELM_TIMEOUT_S, check=False)


def values_args(values: Path | None, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["-f", str(values)] if values is not None else []
    for item in sets:
        args += ["--set", item]
    return args


def render(home: Path, values: Path | None, *, namespace: str = "tiangong",
           sets: tuple[str, ...] = ()) -> str:
    """``helm template hub CHART`` as YAML text.

    Raises:
        AssertionError: helm refused (its stderr in the message).
    """
    proc = helm(home, "template", "hub", str(CHART), "--namespace", namespace,
                *values_args(values, sets))
    assert proc.returncode == 0, f"helm template: {proc.stderr}"
    return proc.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}
