"""Applying a prepared script, per engine, and saying what happened in operator terms.

:func:`apply_postgres` first records the attempt as unfinished (committed on its own, so a
killed agent leaves it visible as ``did not finish``), then runs the statements and marks the
attempt succeeded in one transaction: all or nothing. :func:`apply_mysql` runs them one by
one, recording progress in the history row after each statement, and on failure reports
which statements were applied (and stay applied), which ran inside a transaction the script
opened and were rolled back, and which never ran. Both are called by
:class:`~agent.executors.sql.SqlExecutor` with the schema lock held, a control session (lock,
history) and a work session (the script).

This module deliberately does not connect, lock or decide whether a version should run.
"""

from __future__ import annotations

import time
from typing import Any

from agent.executors.base import StepContext, StepOutcome
from agent.executors.sqlconn import Session, StatementError
from agent.executors.sqlhistory import HISTORY_TABLE, UNFINISHED, SchemaStore
from agent.executors.sqlplan import Plan, failed
from agent.executors.sqlrun import Failure, SqlLog, Watchdog, excerpt, run_statements

__all__ = ["BOOKKEEPING_MIN_S", "apply_mysql", "apply_postgres"]

#: Server time granted to our own history insert and COMMIT even when the step's time is
#: nearly used up (the deadline already stopped the script itself).
BOOKKEEPING_MIN_S = 5.0  # seconds


def apply_postgres(
    ctx: StepContext,
    plan: Plan,
    control: Session,
    work: Session,
    store: SchemaStore,
    log: SqlLog,
) -> StepOutcome:
    """Record the attempt as unfinished (committed on its own, so an agent killed mid-way
    leaves it visible), then run the script and mark the attempt succeeded in one
    transaction: all or nothing. A failure rolls the script back and records why."""
    started = time.monotonic()
    total = len(plan.statements)
    rank = _record_start(ctx, plan, control, store)
    if isinstance(rank, StepOutcome):
        return rank
    try:
        work.execute("BEGIN")
        with _watchdog(ctx, plan, control, work, store, log) as dog:
            progress = run_statements(
                plan.statements,
                work,
                remaining=ctx.remaining,
                cancel=ctx.cancel,
                watchdog=dog,
                log=log,
            )
    except StatementError as exc:
        _rollback(work, log)
        error = f"cannot start a transaction: {exc}"
        _record_failed_attempt(store, rank, log, error, _ms(started))
        return failed(f"cannot start a transaction on {plan.label}: {exc}; nothing was run")
    elapsed = _ms(started)
    failure = progress.failure
    if failure is None and dog.reason is not None:
        # the last statement finished as the watchdog fired: do not commit after all
        _rollback(work, log)
        what = _STOPPED[dog.reason]
        note = _record_failed_attempt(store, rank, log, f"{what} before COMMIT", elapsed)
        return failed(
            f"{what} on {plan.label} after the last statement, before COMMIT; the transaction "
            f"was rolled back, nothing was applied{note}",
            **plan.details(),
            statements_applied=0,
            rolled_back=True,
            execution_ms=elapsed,
        )
    if failure is None:
        try:
            work.set_statement_timeout(max(ctx.remaining(), BOOKKEEPING_MIN_S))
            store.update(rank, success=True, applied=total, execution_ms=elapsed, error=None,
                         session=work)  # committed with the script, or not at all
            work.execute("COMMIT")
        except StatementError as exc:
            _rollback(work, log)
            error = f"COMMIT failed: {exc}"
            _record_failed_attempt(store, rank, log, error, elapsed)
            return failed(
                f"committing {plan.script} on {plan.label} failed: {exc}; the transaction "
                "was rolled back, nothing was applied",
                **plan.details(),
                statements_applied=0,
                execution_ms=elapsed,
            )
        log.info(f"committed: {total} statements applied as version {plan.version}")
        return StepOutcome(
            status="succeeded",
            summary=(
                f"applied {total} statements of {plan.script} as version {plan.version} to "
                f"{plan.label} in {elapsed} ms"
            ),
            details={**plan.details(), "statements_applied": total, "execution_ms": elapsed},
        )
    _rollback(work, log)
    note = _record_failed_attempt(store, rank, log, _history_error(failure), _ms(started))
    return failed(
        f"{_what_happened(ctx, plan, failure)}; the transaction was rolled back, nothing was "
        f"applied{note}",
        **plan.details(),
        statements_applied=0,
        failed_statement=failure.as_details(),
        rolled_back=True,
        execution_ms=elapsed,
    )


def apply_mysql(
    ctx: StepContext,
    plan: Plan,
    control: Session,
    work: Session,
    store: SchemaStore,
    log: SqlLog,
) -> StepOutcome:
    """Run the script statement by statement, recording progress; see the module docstring."""
    started = time.monotonic()
    total = len(plan.statements)
    rank = _record_start(ctx, plan, control, store)
    if isinstance(rank, StepOutcome):
        return rank
    committed = 0  # statements known to be committed (not inside a script's transaction)

    def after_each(k: int) -> None:
        nonlocal committed
        if not work.in_transaction():
            committed = k
        try:
            store.update(
                rank, success=False, applied=committed, execution_ms=_ms(started), error=UNFINISHED
            )
        except StatementError as exc:  # the final update tries again
            log.info(f"could not record progress in {HISTORY_TABLE}: {exc}")

    with _watchdog(ctx, plan, control, work, store, log) as dog:
        progress = run_statements(
            plan.statements,
            work,
            remaining=ctx.remaining,
            cancel=ctx.cancel,
            watchdog=dog,
            log=log,
            after_each=after_each,
        )
    failure = progress.failure
    if failure is None and work.in_transaction():
        last = plan.statements[-1]
        failure = Failure(
            total, last, "error", StatementError("", "script left a transaction open")
        )
    rolled_back: list[int] = []
    if failure is not None and work.in_transaction():
        _rollback(work, log)
        rolled_back = list(range(committed + 1, progress.executed + 1))
    elapsed = _ms(started)
    error = None if failure is None else _history_error(failure)
    note = ""
    try:
        store.update(
            rank, success=failure is None, applied=committed, execution_ms=elapsed, error=error
        )
    except StatementError as exc:
        log.info(f"could not record the outcome in {HISTORY_TABLE}: {exc}")
        note = f"; recording this in {HISTORY_TABLE} failed: {exc}"
    details: dict[str, Any] = {
        **plan.details(),
        "statements_applied": committed,
        "execution_ms": elapsed,
    }
    if failure is None:
        return StepOutcome(
            status="succeeded",
            summary=(
                f"applied {total} statements of {plan.script} as version {plan.version} to "
                f"{plan.label} in {elapsed} ms{note}"
            ),
            details=details,
        )
    parts = [_what_happened(ctx, plan, failure)]
    if committed:
        parts.append(
            f"{_span(1, committed, 'was applied and stays', 'were applied and stay')} applied "
            "(MySQL DDL is not transactional)"
        )
    else:
        parts.append("no statement was applied")
    if rolled_back:
        first, final = rolled_back[0], rolled_back[-1]
        parts.append(
            f"{_span(first, final, 'ran', 'ran')} inside a transaction the script opened and "
            f"{'was' if first == final else 'were'} rolled back"
        )
    first_not_run = failure.index + (1 if failure.error is not None else 0)
    if first_not_run <= total:
        parts.append(f"{_span(first_not_run, total, 'was', 'were')} not run")
    parts.append(f"recorded as a failed attempt at version {plan.version} in {HISTORY_TABLE}")
    return failed(
        "; ".join(parts) + note,
        **details,
        failed_statement=failure.as_details(),
        statements_rolled_back=rolled_back,
    )


_STOPPED = {
    "timeout": "timed out",
    "cancelled": "cancelled",
    "lock lost": "lost the schema lock",
    "error": "failed",
}


def _watchdog(
    ctx: StepContext, plan: Plan, control: Session, work: Session, store: SchemaStore, log: SqlLog
) -> Watchdog:
    return Watchdog(
        cancel=ctx.cancel,
        deadline=ctx.deadline,
        interrupt=lambda: work.interrupt(control),
        renew=lambda: store.renew(plan.token, plan.lock_ttl_s),
        renew_every_s=plan.lock_ttl_s / 3,
        log=log,
    )


def _what_happened(ctx: StepContext, plan: Plan, failure: Failure) -> str:
    where = f"statement {failure.index} of {len(plan.statements)} (line {failure.statement.line})"
    quoted = f"`{excerpt(failure.statement.text)}`"
    if failure.reason == "timeout":
        return (
            f"timed out at {where} on {plan.label} (step timeout {ctx.step['timeout_s']} s): "
            f"{quoted}"
        )
    if failure.reason == "cancelled":
        return f"cancelled at {where} on {plan.label}: {quoted}"
    if failure.reason == "lock lost":
        return f"lost the schema lock on {plan.label} (taken over by another holder) at {where}"
    return f"{where} failed on {plan.label}: {failure.error_text()} — {quoted}"


def _history_error(failure: Failure) -> str:
    return (
        f"{failure.reason} at statement {failure.index} (line {failure.statement.line}): "
        f"{failure.error_text()}"
    )


def _record_start(
    ctx: StepContext, plan: Plan, control: Session, store: SchemaStore
) -> int | StepOutcome:
    """Record (commit) the attempt as unfinished before anything runs; its rank, or the
    failed outcome when even that cannot be done."""
    try:
        return store.insert(
            control,
            fields=plan.history_fields(ctx),
            success=False,
            applied=0,
            execution_ms=0,
            error=UNFINISHED,
        )
    except StatementError as exc:
        return failed(
            f"cannot record the attempt in {HISTORY_TABLE} on {plan.label}: {exc}; nothing was run",
            **plan.details(),
        )


def _record_failed_attempt(
    store: SchemaStore, rank: int, log: SqlLog, error: str, elapsed: int
) -> str:
    """PostgreSQL: mark attempt ``rank`` failed (its transaction was rolled back: nothing of
    it applied), through the control session; '' or a note for the summary."""
    try:
        store.update(rank, success=False, applied=0, execution_ms=elapsed, error=error)
    except StatementError as exc:
        log.info(f"could not record the failed attempt in {HISTORY_TABLE}: {exc}")
        return f"; recording the attempt in {HISTORY_TABLE} failed: {exc}"
    return ""


def _rollback(work: Session, log: SqlLog) -> None:
    try:
        work.execute("ROLLBACK")
        log.info("rolled back")
    except StatementError as exc:
        log.info(f"ROLLBACK failed ({exc}); the server rolls back when the connection closes")


def _span(first: int, last: int, singular: str, plural: str) -> str:
    if first == last:
        return f"statement {first} {singular}"
    return f"statements {first}–{last} {plural}"


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
