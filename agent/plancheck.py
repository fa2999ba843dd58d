"""The checks of a preflight plan: can this site run the release, without changing anything?

A plan bundle (docs/bundle-format.md §6.11) carries a release's steps and files. Once it has
verified, :func:`run_checks` looks at the site with them (docs/agent.md, "Plan bundles"):

* **connections** — every connection a step names is defined in ``agent.toml`` with the type
  the step needs; a SQL connection connects and reports its server version; an http step's
  server answers a ``HEAD`` of its URL (``agent.executors.http.probe``);
* **server versions** — a sql step's ``server_version`` requirement against that version;
* **Kubernetes** — a server-side dry run (``dryRun=All``) of every manifest of every k8s step
  (``agent.executors.k8s``), which also shows the API server is reachable;
* **free space** — the agent's home holds the release's files twice (the bundle in the inbox
  and its staged files, like the hub's inventory check), and every file step's directory
  holds its file;
* **check scripts** — a step's ``check`` (docs/release-format.md §3.9): SQL inside a
  read-only transaction that is always rolled back, with transaction control refused; shell
  through the shell executor in a scratch directory, with ``TIANGONG_PLAN=1`` and no secrets.
  They are the release's code: where the trusted root requires signed approvals for this
  agent's environment, they run only when the plan carries approvals that meet it (the
  caller's ``scripts_refused``), else they are reported ``skipped`` — a plan never runs code
  a deployment of the same release could not. The same holds for an http step's ``HEAD``:
  its URL is the author's choice, and the probe carries the connection's credentials.

Every check is bounded by its step's timeout and the plan's deadline; one failing check never
stops the others (the point is to say everything that is wrong at once).

This module deliberately does not: verify bundles, keep state or write results
(``agent.plan``); apply, record undo data or run a step's own script; give a check script
the step's secrets.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError, resolve_connection
from agent.executors.base import Connection, StepContext, StepLog
from agent.executors.http import probe
from agent.executors.k8s import KubernetesExecutor
from agent.executors.shell import ShellExecutor
from agent.executors.sqlconn import (
    ConnectError,
    DsnError,
    Session,
    StatementError,
    open_session,
    parse_target,
)
from agent.executors.sqlsplit import Dialect, SqlSplitError, split_statements
from bundle.limits import format_bytes
from bundle.steps import needed_connection_type, version_satisfies

__all__ = ["DISK_FACTOR", "FAILED", "PASSED", "CheckResult", "run_checks"]

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
#: The release's files must fit this many times in the agent home (bundle + staging).
DISK_FACTOR = 2
#: Log kept from one check script (head and tail), in bytes.
CHECK_LOG_CAP = 16 * 1024  # bytes
#: Longest a SQL connection check may take to connect, in seconds.
CONNECT_TIMEOUT_S = 10  # seconds
#: Rows kept from one statement of a SQL check script (only the first is looked at).
_MAX_ROWS = 1
_FALSE = {"0", "f", "false", "no", "n", "off"}
#: Statements a SQL check may not run: they would end or widen its read-only transaction —
#: transaction control, and any SET that names a transaction, its access mode or autocommit.
_TX_CONTROL = re.compile(
    r"\s*(?:(?:begin|start|commit|end|rollback|abort|savepoint|release|prepare|lock|unlock|"
    r"xa|handler|load|flush|reset)\b|set\b.*(?:transaction|characteristics|read_only|"
    r"read\s+write|autocommit|completion_type))",
    re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class CheckResult:
    """One check of a plan: what (``check``), for which step and target, and how it went."""

    check: str  # connection | server-version | k8s-dry-run | http | free-space | check-script
    status: str  # passed | failed | skipped
    summary: str
    step: str | None = None
    target: str | None = None
    log: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "summary": self.summary,
                "step": self.step, "target": self.target, "log": self.log}


class _Checks:
    def __init__(self, config: AgentConfig, steps: Sequence[Mapping[str, Any]],
                 files: Mapping[str, Path], sizes: Mapping[str, int], bundle_id: str,
                 release: Mapping[str, Any], workdir: Path, cancel: threading.Event,
                 deadline: float, clock: Callable[[], float],
                 scripts_refused: str | None) -> None:
        self.scripts_refused = scripts_refused
        self.config = config
        self.steps = steps
        self.files = files
        self.sizes = sizes
        self.bundle_id = bundle_id
        self.release = release
        self.workdir = workdir
        self.cancel = cancel
        self.deadline = deadline
        self.clock = clock
        self.out: list[CheckResult] = []
        self.connections: dict[str, Connection | None] = {}
        self.versions: dict[str, str] = {}

    def add(self, check: str, ok: bool, summary: str, step: str | None = None,
            target: str | None = None, log: str | None = None) -> None:
        self.out.append(CheckResult(check, PASSED if ok else FAILED, summary, step, target,
                                    log))

    # -- free space -------------------------------------------------------------------------

    def free_space(self) -> None:
        total = sum(self.sizes.values())
        need = total * DISK_FACTOR
        self._space(self.config.home, need, f"the release's files ({format_bytes(total)}) "
                    f"{DISK_FACTOR} times (bundle and staging)", None)
        for step in self.steps:
            if step.get("kind") == "file":
                size = self.sizes.get(str(step.get("source")), 0)
                self._space(Path(str(step["path"])).parent, size,
                            f"{step['source']}", str(step["name"]))

    def _space(self, path: Path, need: int, what: str, step: str | None) -> None:
        probe_at = path
        while not probe_at.exists() and probe_at != probe_at.parent:
            probe_at = probe_at.parent  # a directory the release creates: its file system
        try:
            free = shutil.disk_usage(probe_at).free
        except OSError as exc:
            self.add("free-space", False, f"cannot read the free space of {path}: "
                     f"{exc.strerror or exc}", step, str(path))
            return
        ok = free >= need
        self.add("free-space", ok, f"{path}: {format_bytes(free)} free, "
                 f"{format_bytes(need)} needed for {what}", step, str(path))

    # -- connections ------------------------------------------------------------------------

    def connection(self, step: Mapping[str, Any]) -> Connection | None:
        """The step's connection, checked once per name (defined, of the right type; a SQL
        one connects). None when the check failed (already reported)."""
        name = step.get("connection")
        if not isinstance(name, str):
            return None
        if name in self.connections:
            return self.connections[name]
        conn: Connection | None = None
        try:
            conn = resolve_connection(self.config, name)
        except ConfigError as exc:
            self.add("connection", False, str(exc), str(step.get("name")), name)
        else:
            want = needed_connection_type(step)
            if want is not None and conn.type != want:
                self.add("connection", False, f"connection {name!r} is of type {conn.type}; "
                         f"step {step.get('name')!r} needs one of type {want}",
                         str(step.get("name")), name)
                conn = None
            elif conn.type in ("postgres", "mysql"):
                conn = self._sql_connect(conn, str(step.get("name")))
        self.connections[name] = conn
        return conn

    def _sql_connect(self, conn: Connection, step: str) -> Connection | None:
        engine: Dialect = "postgres" if conn.type == "postgres" else "mysql"
        try:
            target = parse_target(conn, engine)
        except DsnError as exc:
            self.add("connection", False, f"connection {conn.name!r} {exc}", step, conn.name)
            return None
        try:
            session = open_session(target, min(CONNECT_TIMEOUT_S, self.remaining()),
                                   read_timeout_s=max(1.0, self.remaining()))
        except ConnectError as exc:
            self.add("connection", False, f"connection {conn.name!r} ({target.where()}): "
                     f"cannot connect: {exc}", step, conn.name)
            return None
        try:
            version = _server_version(session)
        except StatementError as exc:
            self.add("connection", False, f"connection {conn.name!r} ({target.where()}): "
                     f"connected, but the server version cannot be read: {exc}", step,
                     conn.name)
            return None
        finally:
            session.close()
        self.versions[conn.name] = version
        self.add("connection", True, f"connection {conn.name!r} ({target.where()}): "
                 f"connected, {conn.type} server version {version}", step, conn.name)
        return conn

    def remaining(self) -> float:
        return max(0.1, self.deadline - self.clock())

    # -- per step ---------------------------------------------------------------------------

    def step(self, idx: int, step: Mapping[str, Any]) -> None:
        kind = step.get("kind")
        name = str(step.get("name"))
        conn = self.connection(step)
        if kind == "sql" and conn is not None:
            self._sql_step(idx, step, conn)
        elif kind == "k8s" and conn is not None:
            outcome = KubernetesExecutor().dry_run(self.context(idx, step, conn))
            self.add("k8s-dry-run", outcome.status == "succeeded", outcome.summary, name,
                     conn.name)
        elif kind == "http" and (conn is not None or "connection" not in step):
            if self.scripts_refused is not None:  # the URL is the release author's choice
                self.out.append(CheckResult(
                    "http", SKIPPED, f"HEAD {step.get('url')}: not sent: this site contacts "
                    "a release's URLs only when its approvals are met: "
                    f"{self.scripts_refused}", name, str(step.get("url"))))
                return
            outcome = probe(self.context(idx, step, conn))
            self.add("http", outcome.status == "succeeded", outcome.summary, name,
                     str(step.get("url")))
        elif kind == "shell" and isinstance(step.get("check"), str):
            self._shell_check(idx, step)

    def _sql_step(self, idx: int, step: Mapping[str, Any], conn: Connection) -> None:
        name = str(step.get("name"))
        requirement = step.get("server_version")
        if isinstance(requirement, str):
            have = self.versions.get(conn.name, "")
            ok = version_satisfies(have, requirement)
            self.add("server-version", bool(ok), f"connection {conn.name!r}: server version "
                     f"{have or 'unknown'} {'meets' if ok else 'does not meet'} "
                     f"{requirement!r}" + (" (no version number in it)" if ok is None else ""),
                     name, conn.name)
        check = step.get("check")
        if isinstance(check, str) and not self._refused(name, check):
            ok, summary, log = self._sql_check(step, conn, check)
            self.add("check-script", ok, summary, name, check, log)

    def _refused(self, step: str, check: str) -> bool:
        """A release's own script runs only where its approvals are met (as a deployment's
        would be): else the check is reported skipped, with the reason."""
        if self.scripts_refused is None:
            return False
        self.out.append(CheckResult("check-script", SKIPPED, f"check {check}: not run: this "
                                    f"site runs a release's scripts only when its approvals "
                                    f"are met: {self.scripts_refused}", step, check))
        return True

    def _sql_check(self, step: Mapping[str, Any], conn: Connection,
                   check: str) -> tuple[bool, str, str]:
        engine: Dialect = "postgres" if conn.type == "postgres" else "mysql"
        lines: list[str] = []
        try:
            script = Path(self.files[check]).read_text(encoding="utf-8")
            statements = split_statements(script, engine)
        except (KeyError, OSError, UnicodeDecodeError, SqlSplitError) as exc:
            return False, f"check {check}: cannot be read: {exc}", ""
        for st in statements:
            code = _code(st.text)
            if code is None or _TX_CONTROL.match(code):
                return False, (f"check {check} line {st.line}: a check may not control "
                               f"transactions ({' '.join(st.text.split()[:3])[:60]}…); it "
                               "runs inside a read-only transaction that is rolled back"), ""
        timeout = min(float(step.get("timeout_s", 600)), self.remaining())
        target = parse_target(conn, engine)
        try:
            session = open_session(target, min(CONNECT_TIMEOUT_S, timeout),
                                   read_timeout_s=max(1.0, timeout))
        except ConnectError as exc:
            return False, f"check {check}: cannot connect to {conn.name!r}: {exc}", ""
        try:
            _begin_read_only(session, timeout)
            for st in statements:
                lines.append(f"line {st.line}: {st.text[:200]}")
                results = session.execute(st.text, max_rows=_MAX_ROWS)
                first = results[0].rows[0][0] if results and results[0].rows \
                    and results[0].rows[0] else None
                if first is not None and str(first).strip().lower() in _FALSE:
                    return False, (f"check {check} line {st.line}: the first row says "
                                   f"{first!r}"), "\n".join(lines)
        except StatementError as exc:
            return False, f"check {check}: {target.redact(str(exc))}", "\n".join(lines)
        finally:
            with contextlib.suppress(StatementError):  # a broken connection has none left
                session.execute("ROLLBACK")
            session.close()
        return True, (f"check {check}: {len(statements)} statement(s) passed in a read-only "
                      f"transaction on {conn.name!r}, rolled back"), "\n".join(lines)

    def _shell_check(self, idx: int, step: Mapping[str, Any]) -> None:
        check = str(step["check"])
        if self._refused(str(step.get("name")), check):
            return
        spec = {k: v for k, v in step.items() if k not in ("rollback", "check")}
        spec.update(script=check, secrets=[], secrets_via="env",
                    env={**dict(step.get("env") or {}), "TIANGONG_PLAN": "1"})
        ctx = self.context(idx, spec, None)
        outcome = ShellExecutor().run(ctx)
        self.add("check-script", outcome.status == "succeeded", f"check {check}: "
                 f"{outcome.summary}", str(step.get("name")), check, ctx.log.text()[-4000:])

    def context(self, idx: int, step: Mapping[str, Any],
                conn: Connection | None) -> StepContext:
        workdir = self.workdir / f"{idx + 1:03d}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, mode=0o700)
        deadline = min(time.monotonic() + float(step.get("timeout_s", 600)),
                       time.monotonic() + self.remaining())
        return StepContext(bundle_id=self.bundle_id, release=self.release, index=idx,
                           step=step, files=self.files, workdir=workdir, connection=conn,
                           secrets={}, log=StepLog(cap_bytes=CHECK_LOG_CAP), deadline=deadline,
                           cancel=self.cancel, undo_dir=None)


_LEADING_COMMENT = re.compile(r"\s*(?:--[^\n]*(?:\n|$)|#[^\n]*(?:\n|$)|/\*(?![!M]).*?\*/)",
                              re.DOTALL)


def _code(text: str) -> str | None:
    """The statement without its leading comments; None when it holds a MySQL executable
    comment (``/*! … */``, ``/*M! … */``: code that looks like a comment), which a check may
    not use."""
    if "/*!" in text or "/*M!" in text:
        return None
    while True:
        found = _LEADING_COMMENT.match(text)
        if found is None or not found.group(0):
            return text
        text = text[found.end():]


def _server_version(session: Session) -> str:
    sql = "SHOW server_version" if session.engine == "postgres" else "SELECT VERSION()"
    rows = session.query(sql)
    return str(rows[0][0]) if rows and rows[0] else "unknown"


def _begin_read_only(session: Session, timeout: float) -> None:
    """Open the transaction a SQL check runs in: read only for the whole session (so an
    implicit commit cannot leave it writable), then a read-only transaction, with a first
    query so that its access mode can no longer be changed."""
    if session.engine == "postgres":
        session.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        session.execute("BEGIN READ ONLY")
    else:
        session.execute("SET SESSION TRANSACTION READ ONLY")
        session.execute("START TRANSACTION READ ONLY")
    session.execute("SELECT 1")
    session.set_statement_timeout(timeout)


def run_checks(config: AgentConfig, steps: Sequence[Mapping[str, Any]],
               files: Mapping[str, Path], sizes: Mapping[str, int], *, bundle_id: str,
               release: Mapping[str, Any], workdir: Path, cancel: threading.Event,
               timeout_s: float, clock: Callable[[], float] = time.monotonic,
               scripts_refused: str | None = None) -> list[CheckResult]:
    """Every check of a verified plan, in step order after the free-space checks.

    ``files`` are the staged payloads by logical name and ``sizes`` their sizes; ``workdir``
    a private scratch directory (removed by the caller). ``scripts_refused``: why the
    release's own ``check`` scripts may not run here (its approvals are not met where the
    trusted root requires them); they are then reported ``skipped``. Never raises for what
    it finds: each problem is a failed :class:`CheckResult`.
    """
    checks = _Checks(config, steps, files, sizes, bundle_id, release, workdir, cancel,
                     clock() + timeout_s, clock, scripts_refused)
    checks.free_space()
    for idx, step in enumerate(steps):
        if cancel.is_set():
            checks.add("cancelled", False, "the plan was cancelled before step "
                       f"{idx + 1} ({step.get('name')!r}) was checked")
            break
        checks.step(idx, step)
    return checks.out
