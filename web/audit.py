"""The ``audit`` page: the hash-chained audit log for auditors and admins — events filtered
by actor, action, object and time range (newest first, keyset pages), the chain's
verification status, and the export ``tiangong hub audit export`` writes, as a download.

**Verification runs on request.** Verifying streams the whole log and every signed
checkpoint (:func:`hub.services.audit.verify`), which takes a while on a large log, so the
page does not verify on every visit: the *Verify now* button does, the service records an
``audit.verify`` event, and the page keeps the last report in
``<data_dir>/audit-verify-last.json`` (written atomically) to show it — valid, or broken at
event N with the reason — with how many events were added since.

Permissions are the services' (``audit.read``, ``audit.verify``, ``audit.export``); this
module reads forms and renders.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)

from hub.app import hub_config
from hub.audit_chain import ChainReport
from hub.db import db
from hub.errors import ConfigError, ValidationError
from hub.services import audit
from hub.services.users import can
from signing.errors import KeyFileError
from signing.fileio import write_file_atomic
from web.views import ctx, login_required, signed_in_user

__all__ = ["LAST_VERIFY_FILE", "SPOOL_BYTES", "bp"]

LAST_VERIFY_FILE = "audit-verify-last.json"  # under the data directory
SPOOL_BYTES = 8 * 1024 * 1024  # bytes of an export kept in memory before spilling to disk
READ_BYTES = 64 * 1024  # bytes per chunk of the download
DETAILS_SHOWN = 400  # characters of an event's details shown in the table
_FILTERS = ("actor", "action", "object_type", "object_id", "from", "to")

bp = Blueprint("audit", __name__, url_prefix="/audit")


def _day_or_time(name: str, text: str, *, end: bool) -> datetime | None:
    """``YYYY-MM-DD`` (a whole day, UTC) or ``YYYY-MM-DDTHH:MM[:SS]`` (UTC).

    Raises:
        ValidationError: anything else, naming the field.
    """
    if not text:
        return None
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise ValidationError(
            f"{name} {text[:40]!r} is not a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM), "
            "in UTC"
        ) from None


def _query(args: Any) -> tuple[dict[str, str], audit.EventQuery]:
    """The filter form's values (as typed) and the query they mean.

    Raises:
        ValidationError: a bad date or cursor, or a range that ends before it starts.
    """
    values = {k: (args.get(k) or "").strip()[:200] for k in _FILTERS}
    since = _day_or_time("from", values["from"], end=False)
    until = _day_or_time("to", values["to"], end=True)
    if since is not None and until is not None and until <= since:
        raise ValidationError(f"the range ends ({values['to']}) before it starts "
                              f"({values['from']})")
    before_text = (args.get("before") or "").strip()
    if before_text and not before_text.isdigit():
        raise ValidationError(f"before {before_text[:20]!r} is not an event number")
    return values, audit.EventQuery(
        actor=values["actor"] or None,
        action=values["action"] or None,
        object_type=values["object_type"] or None,
        object_id=values["object_id"] or None,
        since=since,
        until=until,
        before=int(before_text) if before_text else None,
    )


def _last_file() -> Path:
    return hub_config().data_dir / LAST_VERIFY_FILE


def _last_report() -> dict[str, Any] | None:
    """The last verification report kept by :func:`verify_now`, or None (never verified
    from the web UI, or the file is unreadable: then the page says so)."""
    try:
        doc = json.loads(_last_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"unreadable": f"{LAST_VERIFY_FILE}: {exc}"}
    return doc if isinstance(doc, dict) else {"unreadable": f"{LAST_VERIFY_FILE}: not an object"}


def _keep_report(report: ChainReport, by: str, at: datetime) -> None:
    """Keep the report for the page (atomically: a crash leaves the old one or the new)."""
    doc = {
        "at": at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "by": by,
        "ok": report.ok,
        "events": report.events,
        "last_seq": report.last_seq or 0,
        "head_hash": report.head_hash,
        "checkpoints_checked": report.checkpoints_checked,
        "problem_count": report.problem_count,
        "problems": [asdict(p) for p in report.problems],
    }
    data = json.dumps(doc, sort_keys=True).encode("utf-8")
    try:
        write_file_atomic(_last_file(), data, mode=0o640, overwrite=True)
    except KeyFileError as exc:  # the verification itself is done and audited
        flash(f"The result could not be kept for this page: {exc}", "error")


@bp.get("/")
@login_required
def index() -> Any:
    sc = ctx()
    user = signed_in_user()
    error = None
    try:
        values, query = _query(request.args)
    except ValidationError as exc:
        values = {k: (request.args.get(k) or "").strip()[:200] for k in _FILTERS}
        query, error = None, str(exc)
    # Refuse people without audit.read before showing anything (even a filter error).
    page = audit.search_events(sc, query or audit.EventQuery(limit=1))
    status = 400 if error else 200
    return render_template(
        "audit/index.html",
        events=page.events if query else [],
        next_before=page.next_before if query else None,
        paged=bool(query and query.before),
        values=values,
        link_args={k: v for k, v in values.items() if v},
        error=error,
        last=_last_report(),
        head=audit.head_seq(sc.session),
        may_verify=can(user, "audit.verify"),
        may_export=can(user, "audit.export"),
        shown=DETAILS_SHOWN,
    ), status


@bp.post("/verify")
@login_required
def verify_now() -> Any:
    sc = ctx()
    report = audit.verify(sc)
    db.session.commit()
    _keep_report(report, sc.actor_name, sc.now())
    if report.ok:
        flash(f"The audit log verifies: {report.events} events.", "info")
    else:
        flash(f"The audit log does NOT verify: {report.problem_count} problem(s).", "error")
    return redirect(url_for("audit.index"))


@bp.post("/export")
@login_required
def export() -> Any:
    sc = ctx()
    checkpoint = request.form.get("checkpoint") == "1"
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - sent below
    try:
        if checkpoint:
            audit.write_checkpoint(sc)
            sc.session.flush()
        count = audit.export_audit(sc, spool)
    except ConfigError as exc:
        spool.close()
        db.session.rollback()
        flash(f"Export not written: {exc}", "error")
        return redirect(url_for("audit.index"))
    except BaseException:
        spool.close()
        raise
    db.session.commit()
    spool.seek(0)
    hub_id = sc.keys.hub_id if sc.keys is not None else "hub"
    stamp = sc.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"audit-{hub_id}-{stamp}.jsonl"

    def chunks() -> Iterator[bytes]:
        try:
            while block := spool.read(READ_BYTES):
                yield block
        finally:
            spool.close()

    resp = Response(chunks(), mimetype="application/x-ndjson")
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Audit-Events"] = str(count)
    return resp
