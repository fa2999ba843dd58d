"""Shared pieces of the k8s executor tests: manifests, a step harness, an injectable clock.

The tests run against the real API server of ``tests/fixtures/kube.py``; this module only
builds what they send and the contexts the agent would build (no fixtures, no I/O but the
staged files).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import yaml

from agent.executors.base import Connection, StepContext, StepLog, StepOutcome
from agent.executors.k8s import KubernetesExecutor

__all__ = ["FakeClock", "Harness", "actions", "deployment", "workload"]


class FakeClock:
    """A monotonic clock that moves only when :meth:`pause` is called (no sleeping).

    ``on_pause(n)``, if set, runs at the ``n``-th pause (1-based) before the clock moves: the
    test plays the workload's controller there, between two polls of the executor.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.pauses: list[float] = []
        self.on_pause: Any = None

    def __call__(self) -> float:
        return self.now

    def pause(self, cancel: threading.Event, seconds: float) -> bool:
        self.pauses.append(seconds)
        if self.on_pause is not None:
            self.on_pause(len(self.pauses))
        self.now += seconds
        return cancel.is_set()


def workload(
    kind: str,
    name: str,
    *,
    namespace: str | None = None,
    replicas: int = 2,
    image: str | None = "nginx:1.25",
    labels: dict[str, str] | None = None,
    selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An apps/v1 Deployment, StatefulSet or DaemonSet (DaemonSets get no ``replicas``)."""
    labels = {"app": name} if labels is None else labels
    container: dict[str, Any] = {"name": name}
    if image is not None:
        container["image"] = image
    spec: dict[str, Any] = {
        "selector": {"matchLabels": labels if selector is None else selector},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
    }
    if kind != "DaemonSet":
        spec["replicas"] = replicas
    if kind == "StatefulSet":
        spec["serviceName"] = name
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": metadata, "spec": spec}


def deployment(name: str, **kwargs: Any) -> dict[str, Any]:
    """An apps/v1 Deployment; keyword arguments as for :func:`workload`."""
    return workload("Deployment", name, **kwargs)


class Harness:
    """Builds StepContexts the way the agent would: staged files, a workdir, a StepLog.

    Steps default to ``namespace`` (the test's own namespace on the shared server).
    """

    def __init__(self, tmp_path: Path, kubeconfig: Path, namespace: str = "default") -> None:
        self.tmp_path = tmp_path
        self.namespace = namespace
        self.connection = Connection("cluster", "kubernetes", {"kubeconfig": str(kubeconfig)})
        self.files: dict[str, Path] = {}
        self.log = StepLog()
        self.cancel = threading.Event()

    def stage(self, name: str, *docs: Any, text: str | None = None) -> str:
        path = self.tmp_path / "staging" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text is not None else yaml.safe_dump_all(docs), encoding="utf-8")
        self.files[name] = path
        return name

    def step(self, manifests: list[str], **fields: Any) -> dict[str, Any]:
        step = {
            "name": "deploy-shop",
            "kind": "k8s",
            "timeout_s": 60,
            "on_failure": "stop",
            "connection": "cluster",
            "manifests": manifests,
            "namespace": self.namespace,
        } | fields
        KubernetesExecutor().validate(step)
        return step

    def run(
        self,
        step: dict[str, Any],
        executor: KubernetesExecutor | None = None,
        deadline: float | None = None,
    ) -> StepOutcome:
        self.log = StepLog()
        workdir = self.tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        if deadline is None:
            deadline = time.monotonic() + step["timeout_s"]
        ctx = StepContext(
            bundle_id="shop-1.0.0",
            release={"product": "shop", "version": "1.0.0"},
            index=0,
            step=step,
            files=self.files,
            workdir=workdir,
            connection=self.connection,
            secrets={},
            log=self.log,
            deadline=deadline,
            cancel=self.cancel,
        )
        return (executor or KubernetesExecutor()).run(ctx)

    def lines(self) -> list[str]:
        return [line.text for line in self.log.lines() if line.stream == "k8s"]


def actions(outcome: StepOutcome) -> dict[str, str]:
    """``{"Kind/name": action}`` of every object in the outcome's details."""
    return {f"{o['kind']}/{o['name']}": o["action"] for o in outcome.details["objects"]}
