"""The ``sql`` step executor: apply one versioned script to a MySQL or PostgreSQL database.

A step names an ``engine``, a site ``connection`` and a ``script`` payload; the script is
checksummed (SHA-256 of its bytes), split into statements (:mod:`~agent.executors.sqlsplit`)
and applied under a schema lock, with a row in the schema history table for every attempt
(:mod:`~agent.executors.sqlhistory`):

* **PostgreSQL**: the attempt is recorded (committed) as unfinished first; then the whole
  script and the update marking the attempt succeeded run in one transaction. A failure
  rolls the script back; the outcome names the failing statement and says nothing was
  applied, and the attempt's row records the failure. A killed agent leaves the row
  "did not finish" and nothing of the script applied.
* **MySQL/MariaDB**: DDL commits implicitly, so statements run one by one and progress is
  written to the history row after each. A failure names the statement (index, line, text,
  server error) and exactly which statements were applied and stay applied.
* A version already applied successfully is skipped; if its checksum differs from the
  script's, the step fails and names both checksums. A version with only failed attempts
  may be run again.
* The schema lock names its holder and expires (:data:`~agent.executors.sqlhistory.LOCK_TTL_S`,
  or the connection param ``lock_ttl_s``); it is renewed while the step runs, an expired one
  is taken over, a live one is waited for up to the step's remaining time.
* Each statement gets a server-side timeout of the step's remaining time; the cancel flag
  and the deadline are checked between statements and a watchdog interrupts a statement
  that outlives them. Connecting is bounded by ``CONNECT_TIMEOUT_S``.
* The DSN's password never reaches the log, the summary or the details.

Step fields (besides ``name``, ``kind``, ``timeout_s``, ``on_failure``, ``secrets``):
``engine`` (``"mysql"``/``"postgres"``), ``connection``, ``script``, optional ``version``
(default ``"<release version>.<step number>"``) and ``description`` (default: step name).

This module deliberately does not resume a half-applied MySQL script from the failed
statement (a re-run starts at statement 1, so scripts should be re-runnable, e.g. ``IF NOT
EXISTS``), does not support statements PostgreSQL refuses inside a transaction (``CREATE
DATABASE``, ``CREATE INDEX CONCURRENTLY``, ``VACUUM``) nor transaction control in PostgreSQL
scripts, and does not offer "repair" or "baseline" of the history table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from agent.executors.base import StepContext, StepOutcome
from agent.executors.errors import StepSpecError
from agent.executors.sqlapply import apply_mysql, apply_postgres
from agent.executors.sqlconn import (
    CONTROL_TIMEOUT_S,
    ConnectError,
    Session,
    StatementError,
    open_session,
)
from agent.executors.sqlhistory import UNFINISHED, SchemaStore
from agent.executors.sqlplan import Plan, failed, prepare
from agent.executors.sqlrun import SqlLog
from agent.executors.undodata import record_script_undo

__all__ = ["LOCK_POLL_S", "SqlExecutor"]

#: Interval between attempts to take a schema lock held by someone else.
LOCK_POLL_S = 0.5  # seconds

_COMMON_FIELDS = {"name", "kind", "timeout_s", "on_failure", "secrets", "after"}
_SQL_FIELDS = {"engine", "connection", "script", "version", "description",
               "down",  # down: run by a rollback (agent.executors.undo), not here
               "check", "server_version"}  # run by a preflight plan (agent.plan), not here
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,99}")


class SqlExecutor:
    """Runs ``kind: sql`` steps; see the module docstring."""

    kind: ClassVar[str] = "sql"

    def validate(self, step: Mapping[str, Any]) -> None:
        """Check a sql step's fields before anything of its bundle runs.

        Raises:
            StepSpecError: a field is missing, has the wrong type or value, or is unknown;
                the message names the step and the field.
        """
        name = step.get("name")
        label = f"step {name!r}" if isinstance(name, str) and name else "sql step (no name)"

        def bad(field: str, problem: str) -> StepSpecError:
            return StepSpecError(f"{label}: field {field!r} {problem}")

        if not isinstance(name, str) or not name.strip():
            raise bad("name", "must be a non-empty string")
        if step.get("kind") != "sql":
            raise bad("kind", f"must be 'sql', got {step.get('kind')!r}")
        timeout = step.get("timeout_s")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise bad("timeout_s", f"must be a positive integer (seconds), got {timeout!r}")
        if step.get("on_failure") not in ("stop", "continue"):
            raise bad("on_failure", f"must be 'stop' or 'continue', got {step.get('on_failure')!r}")
        names = step.get("secrets", [])
        if not isinstance(names, list) or not all(isinstance(s, str) and s for s in names):
            raise bad("secrets", "must be a list of secret names (strings)")
        if step.get("engine") not in ("mysql", "postgres"):
            raise bad("engine", f"must be 'mysql' or 'postgres', got {step.get('engine')!r}")
        for field in ("connection", "script"):
            value = step.get(field)
            if not isinstance(value, str) or not value.strip():
                raise bad(field, "must be a non-empty string")
        if "version" in step:
            version = step["version"]
            if not isinstance(version, str) or not _VERSION.fullmatch(version):
                raise bad(
                    "version",
                    "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                    f"or digit; got {version!r}",
                )
        if "description" in step:
            description = step["description"]
            if not isinstance(description, str) or not 0 < len(description) <= 255:
                raise bad("description", "must be a string of 1-255 characters")
        unknown = sorted(set(step) - _COMMON_FIELDS - _SQL_FIELDS)
        if unknown:
            known = ", ".join(sorted(_COMMON_FIELDS | _SQL_FIELDS))
            raise bad(unknown[0], f"is not a field of sql steps (known: {known})")

    def run(self, ctx: StepContext) -> StepOutcome:
        """Apply the step's script; every failure is an outcome (see the module docstring).

        The summary and details pass the same redaction as the log (the DSN password and the
        step's secrets), since server messages may quote the statement that failed.
        """
        plan = prepare(ctx)
        if isinstance(plan, StepOutcome):
            return plan
        refused = record_script_undo(ctx, "down")
        if refused is not None:
            return refused

        def redact(text: str) -> str:
            return ctx.log.redact(plan.target.redact(text))

        outcome = self._run(ctx, plan, SqlLog(ctx.log, plan.target.redact))
        return StepOutcome(
            status=outcome.status,
            summary=redact(outcome.summary),
            exit_code=outcome.exit_code,
            details=_redact_tree(outcome.details, redact),
        )

    def _run(self, ctx: StepContext, plan: Plan, log: SqlLog) -> StepOutcome:
        if ctx.cancel.is_set():
            return failed("cancelled before connecting; nothing was run", **plan.details())
        if ctx.remaining() <= 0:
            return failed(
                f"timed out before connecting (step timeout {ctx.step['timeout_s']} s); "
                "nothing was run",
                **plan.details(),
            )
        log.info(
            f"{plan.script}: {len(plan.statements)} statement(s), version {plan.version}, "
            f"sha256 {plan.checksum}"
        )
        log.info(f"connecting to {plan.label} at {plan.target.where()}")
        try:
            control = open_session(
                plan.target,
                ctx.remaining(),
                read_timeout_s=CONTROL_TIMEOUT_S,
                statement_timeout_s=CONTROL_TIMEOUT_S,
            )
        except ConnectError as exc:
            return failed(
                f"cannot connect to {plan.label} at {plan.target.where()}: {exc.reason}",
                **plan.details(),
            )
        try:
            return _with_control(ctx, plan, control, log)
        finally:
            control.close()


def _redact_tree(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _redact_tree(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_tree(v, redact) for v in value]
    return value


def _with_control(ctx: StepContext, plan: Plan, control: Session, log: SqlLog) -> StepOutcome:
    try:
        store = SchemaStore.open(control)
        refused = _take_lock(ctx, plan, store, log)
    except StatementError as exc:
        return failed(
            f"cannot use the schema history/lock tables on {plan.label}: "
            f"{plan.target.redact(str(exc))}; nothing was run",
            **plan.details(),
        )
    if refused is not None:
        return refused
    try:
        return _with_lock(ctx, plan, control, store, log)
    finally:
        try:
            store.unlock(plan.token)
            log.info(f"schema lock on {plan.label} released")
        except StatementError as exc:
            log.info(f"could not release the schema lock (it expires by itself): {exc}")


def _with_lock(
    ctx: StepContext, plan: Plan, control: Session, store: SchemaStore, log: SqlLog
) -> StepOutcome:
    try:
        decided = _check_history(plan, store, log)
    except StatementError as exc:
        return failed(
            f"cannot read the schema history on {plan.label}: {exc}; nothing was run",
            **plan.details(),
        )
    if decided is not None:
        return decided
    try:
        work = open_session(
            plan.target, ctx.remaining(), read_timeout_s=ctx.remaining() + CONTROL_TIMEOUT_S
        )
    except ConnectError as exc:
        return failed(
            f"cannot connect to {plan.label} at {plan.target.where()}: {exc.reason}; "
            "nothing was run",
            **plan.details(),
        )
    try:
        if plan.engine == "postgres":
            return apply_postgres(ctx, plan, control, work, store, log)
        return apply_mysql(ctx, plan, control, work, store, log)
    finally:
        work.close()


def _take_lock(ctx: StepContext, plan: Plan, store: SchemaStore, log: SqlLog) -> StepOutcome | None:
    """Take the schema lock, waiting in short polls up to the step's remaining time.

    Returns None when taken, else a failed outcome naming the holder.

    Raises:
        StatementError: the database failed while taking the lock.
    """
    waited = 0.0
    announced = False
    while True:
        taken, other = store.try_lock(plan.holder, plan.token, plan.lock_ttl_s)
        if taken:
            if other is not None:
                log.info(
                    f"took over the expired schema lock on {plan.label} held by {other.holder} "
                    f"(expired {other.until()})"
                )
            log.info(f"schema lock on {plan.label} taken by {plan.holder}")
            return None
        assert other is not None  # try_lock names the live holder when it refuses
        remaining = ctx.remaining()
        if not announced:
            log.info(
                f"schema lock on {plan.label} is held by {other.holder} until {other.until()}; "
                f"waiting up to {remaining:.0f} s"
            )
            announced = True
        if ctx.cancel.is_set() or remaining <= 0:
            why = "the step was cancelled" if ctx.cancel.is_set() else "the step's time ran out"
            return failed(
                f"the schema lock on {plan.label} is held by {other.holder} until "
                f"{other.until()}; gave up after waiting {waited:.0f} s ({why}); nothing was run",
                lock_holder=other.holder,
                lock_expires_at=other.until(),
                **plan.details(),
            )
        pause = min(LOCK_POLL_S, remaining)
        ctx.cancel.wait(pause)
        waited += pause


def _check_history(plan: Plan, store: SchemaStore, log: SqlLog) -> StepOutcome | None:
    """Skip an applied version, refuse a changed one; None means: go ahead.

    Raises:
        StatementError: the history cannot be read.
    """
    records = store.records(plan.version)
    applied = [r for r in records if r.success]
    if applied:
        last = applied[-1]
        details = {
            **plan.details(),
            "applied_on": last.when(),
            "applied_by_bundle": last.bundle_id,
            "applied_checksum": last.checksum,
        }
        if last.checksum == plan.checksum:
            return StepOutcome(
                status="skipped",
                summary=(
                    f"version {plan.version} ({plan.script}) was already applied to "
                    f"{plan.label} on {last.when()} by bundle {last.bundle_id} "
                    f"(step '{last.step_name}'); skipped"
                ),
                details=details,
            )
        return failed(
            f"version {plan.version} was applied to {plan.label} on {last.when()} by bundle "
            f"{last.bundle_id} with checksum {last.checksum}, but {plan.script} now has "
            f"checksum {plan.checksum}; refusing to run a changed script under an applied "
            "version (ship the change as a new version); nothing was run",
            **details,
        )
    if records:
        last = records[-1]
        log.info(
            f"version {plan.version} has {len(records)} failed attempt(s); the last, by bundle "
            f"{last.bundle_id} on {last.when()}, applied {last.statements_applied} of "
            f"{last.statements_total} statements: {last.error or 'failed'}; running it again"
        )
        if last.error == UNFINISHED:
            log.info("the last attempt never recorded its outcome (its agent stopped mid-way)")
    return None
