"""Prometheus metrics of the hub (docs/scale.md, "Metrics"), with ``prometheus-client``.

Three kinds, kept apart because they live in different places:

* **Hub-wide figures from the database** (:class:`HubCollector`): deployments by environment
  and state, the age of the oldest queued deployment, agents by presence, bundles exported,
  results imported and rejected, the audit head. Every process reads the same database, so
  these are the same from any web process: the web's ``/metrics`` exposes them (the live
  servers do not, or a sum over processes would count them twice). Computed at scrape time,
  a handful of grouped queries.
* **One live server's own figures** (:class:`LiveMetrics`, a registry per
  :class:`hub.live_hub.LiveHub`): connected agents, push latency (queued → confirmed by the
  agent), transfer bytes, bundles exported and results imported by this process, errors by
  kind. Each live process serves them on its own port (``GET /metrics`` beside ``/live``):
  Prometheus scrapes every live process and sums.
* **Web workers' own figures** (:func:`web_metrics`): requests by status class and errors by
  kind. gunicorn runs several worker processes behind one port, so ``hub serve`` turns on the
  client's multiprocess mode (:func:`enable_multiprocess`): every worker writes its values to
  files in ``<data_dir>/run/metrics-web/``, the scrape (whichever worker answers) adds them
  up, and a worker that exits is marked dead (:func:`worker_exited`).

Deliberately not here: agent ids or any other per-agent label (10,000 agents would be
10,000 series; the web pages show agents), authentication of ``/metrics`` (like
``/healthz``, it is meant for the monitoring network: docs/security.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

__all__ = [
    "CONTENT_TYPE_LATEST",
    "MULTIPROC_ENV",
    "HubCollector",
    "LiveMetrics",
    "clear_multiprocess",
    "enable_multiprocess",
    "render",
    "single_process",
    "sweep_multiprocess",
    "web_metrics",
    "web_registry",
    "worker_exited",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's multiprocess directory
# Seconds from "queued" to "the agent confirmed the bundle": one deployment alone takes well
# under a second, a rollout burst to thousands of agents tens of seconds (docs/benchmarks.md).
PUSH_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                        3600.0)


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of ``registry`` (media type :data:`CONTENT_TYPE_LATEST`)."""
    data: bytes = generate_latest(registry)
    return data


# -- hub-wide, from the database ------------------------------------------------------------


class HubCollector(Collector):
    """Hub-wide figures read from the database at each scrape (see the module docstring).

    ``session_factory`` opens a session (closed after the scrape, never committed);
    ``clock`` is the hub's clock (aware UTC). A database that does not answer gives
    ``tiangong_database_up 0`` and nothing else, never an error page.
    """

    def __init__(self, session_factory: Callable[[], Session],
                 clock: Callable[[], datetime]) -> None:
        self.session_factory = session_factory
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only (no query when registered)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("tiangong_database_up",
                               "1 when the hub database answered this scrape, else 0")
        try:
            with contextlib.closing(self.session_factory()) as session:
                found = list(self._collect(session))
                session.rollback()
        except SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from found

    def _collect(self, session: Session) -> Iterator[Metric]:
        from hub.db import Agent, AuditEvent, AuditHead, Deployment, DeploymentAttempt, Environment
        from hub.services.presence import presence_state

        now = self.clock()
        deployments = GaugeMetricFamily("tiangong_deployments",
                                        "Deployments by environment and state",
                                        labels=["environment", "state"])
        rows = session.execute(
            select(Environment.name, Deployment.state, func.count(Deployment.id))
            .join(Environment, Deployment.environment_id == Environment.id)
            .group_by(Environment.name, Deployment.state)).all()
        for env, state, n in rows:
            deployments.add_metric([env, state], int(n))
        yield deployments

        age = GaugeMetricFamily("tiangong_queue_oldest_age_seconds",
                                "Seconds the oldest deployment still queued has waited, by "
                                "environment (absent: nothing queued)",
                                labels=["environment"])
        oldest = session.execute(
            select(Environment.name, func.min(Deployment.queued_at))
            .join(Environment, Deployment.environment_id == Environment.id)
            .where(Deployment.state == "queued").group_by(Environment.name)).all()
        for env, queued_at in oldest:
            if queued_at is not None:
                age.add_metric([env], max(0.0, (now - queued_at).total_seconds()))
        yield age

        agents = GaugeMetricFamily("tiangong_agents",
                                   "Enrolled and revoked agents by environment and presence "
                                   "(online, offline, never, revoked)",
                                   labels=["environment", "presence"])
        counts: dict[tuple[str, str], int] = {}
        for env, status, seen, until in session.execute(
                select(Environment.name, Agent.status, Agent.last_seen, Agent.online_until)
                .join(Environment, Agent.environment_id == Environment.id)):
            key = (env, presence_state(status, seen, until, now))
            counts[key] = counts.get(key, 0) + 1
        for (env, state), n in sorted(counts.items()):
            agents.add_metric([env, state], n)
        yield agents

        exported = CounterMetricFamily("tiangong_bundles_exported",
                                       "Bundles exported (media or live), all processes")
        exported.add_metric([], int(session.scalar(
            select(func.count(Deployment.id)).where(Deployment.bundle_id.is_not(None))) or 0))
        yield exported

        imported = CounterMetricFamily("tiangong_results_imported",
                                       "Results imported (media or live) by the state they "
                                       "reported", labels=["status"])
        for status, n in session.execute(
                select(DeploymentAttempt.status, func.count(DeploymentAttempt.id))
                .group_by(DeploymentAttempt.status)).all():
            imported.add_metric([status], int(n))
        yield imported

        rejected = CounterMetricFamily("tiangong_results_rejected",
                                       "Result files the importer refused (result.rejected)")
        rejected.add_metric([], int(session.scalar(
            select(func.count()).select_from(AuditEvent)
            .where(AuditEvent.action == "result.rejected")) or 0))
        yield rejected

        head = GaugeMetricFamily("tiangong_audit_head_seq",
                                 "Sequence number of the newest audit event")
        head.add_metric([], int(session.scalar(select(func.max(AuditHead.seq))) or 0))
        yield head


# -- one live server ------------------------------------------------------------------------


class LiveMetrics:
    """The figures of one live-server process, in a registry of their own.

    ``connected`` and ``unauthenticated`` are read at scrape time (callables).
    """

    def __init__(self, connected: Callable[[], float],
                 unauthenticated: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        ProcessCollector(registry=reg)
        Gauge("tiangong_live_connected_agents", "Agents with an authenticated live connection "
              "to this process", registry=reg).set_function(connected)
        Gauge("tiangong_live_unauthenticated_connections", "Connections to this process not "
              "authenticated yet", registry=reg).set_function(unauthenticated)
        self.push_latency = Histogram(
            "tiangong_live_push_latency_seconds",
            "Seconds from a deployment being queued to its agent confirming the bundle",
            buckets=PUSH_LATENCY_BUCKETS, registry=reg)
        self.transfer_bytes = Counter(
            "tiangong_live_transfer_bytes", "File bytes sent to agents (out) and received from "
            "them (in) by this process", ["direction"], registry=reg)
        self.exports = Counter("tiangong_live_bundles_exported", "Bundles this process "
                               "exported for live delivery", registry=reg)
        self.delivered = Counter("tiangong_live_bundles_delivered", "Bundles agents confirmed "
                                 "(received, or have-it)", ["how"], registry=reg)
        self.imports = Counter("tiangong_live_results", "Results received by this process, "
                               "by the importer's answer", ["status"], registry=reg)
        self.errors = Counter("tiangong_live_errors", "Errors of this process by kind "
                              "(refusal codes, export_failed, import_failed, push_loop, "
                              "send_timeout, send_buffer, forbidden, …)", ["kind"],
                              registry=reg)
        self.wakeups = Counter("tiangong_live_wakeups", "Rounds of the push loop by what "
                               "started them (poll; notify: PostgreSQL; local: a "
                               "datagram, SQLite)", ["by"], registry=reg)
        for direction in ("in", "out"):
            self.transfer_bytes.labels(direction)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def render(self) -> bytes:
        return render(self.registry)


# -- web workers (gunicorn: multiprocess mode) ----------------------------------------------


class _WebMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter("tiangong_web_requests", "HTTP requests answered by the web "
                                "processes, by status class (2xx, 3xx, 4xx, 5xx)", ["status"],
                                registry=registry)
        self.errors = Counter("tiangong_web_errors", "Unhandled errors of the web processes "
                              "by exception class", ["kind"], registry=registry)


_web: _WebMetrics | None = None
_web_local = CollectorRegistry(auto_describe=True)  # without multiprocess mode


def enable_multiprocess(directory: Path) -> None:
    """Turn on prometheus-client's multiprocess mode for this process and the workers it
    forks: values go to files in ``directory``, emptied first (a previous run's files would
    add up with this run's). Call before any web metric exists (``hub serve`` does it before
    building the app)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def sweep_multiprocess(parent: Path, prefix: str) -> None:
    """Remove ``parent/<prefix><pid>`` directories of processes that no longer run (a
    ``hub serve`` that was killed could not clean up after itself)."""
    for directory in parent.glob(f"{prefix}*"):
        pid = directory.name[len(prefix):]
        if pid.isdecimal() and not _running(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def single_process() -> None:
    """This process keeps its metrics in memory, whatever ``PROMETHEUS_MULTIPROC_DIR`` says
    (the live server: one process serving its own figures; inherited from ``hub serve``, the
    variable would put them into the web workers' files and onto the web's ``/metrics``)."""
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def web_metrics() -> _WebMetrics:
    """This process's web metrics (created once; in multiprocess mode they write files)."""
    global _web
    if _web is None:
        _web = _WebMetrics(None if _multiproc_dir() else _web_local)
    return _web


def web_registry(collector: HubCollector) -> CollectorRegistry:
    """A registry for one web scrape: every worker's figures (multiprocess mode) or this
    process's, and the hub-wide ``collector``."""
    web_metrics()
    registry = CollectorRegistry(auto_describe=False)
    directory = _multiproc_dir()
    if directory:
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(_web_local))
    registry.register(collector)
    return registry


class _Forward(Collector):
    """Collects another registry (the process-local web metrics) into a scrape's registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return iter(self.source.collect())


def worker_exited(pid: int) -> None:
    """gunicorn's ``child_exit`` hook: drop a dead worker's live gauges (counters stay)."""
    directory = _multiproc_dir()
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def clear_multiprocess(directory: Path) -> None:
    """Remove the multiprocess directory (``hub serve`` ends)."""
    shutil.rmtree(directory, ignore_errors=True)
