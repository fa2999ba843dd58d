"""Helpers for tests that talk to :class:`~tests.fakekube.fake_kube_api.FakeKubeAPI`.

Plain functions and classes (no pytest fixtures: test modules define their own from these).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

__all__ = ["FakeClock", "closed_port", "deployment", "workload"]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class FakeClock:
    """A monotonic clock that moves only when :meth:`pause` is called (no sleeping)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def pause(self, cancel: threading.Event, seconds: float) -> bool:
        self.pauses.append(seconds)
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
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": metadata, "spec": spec}


def deployment(name: str, **kwargs: Any) -> dict[str, Any]:
    """An apps/v1 Deployment; keyword arguments as for :func:`workload`."""
    return workload("Deployment", name, **kwargs)
