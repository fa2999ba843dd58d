"""The ``audit`` page: the hash-chained audit log for auditors and admins — events filtered
by actor, action, object and time range (newest first, keyset pages), the chain's
verification status, and the export ``tiangong hub audit export`` writes, as a download.

**Verification runs on request.** Verifying streams the whole log and every signed
checkpoint (:func:`hub.services.audit.verify`), which takes a while on a large log, so the
page does not verify on every visit: the *Verify now* button does, the service records an
``audit.verify`` event, and the page keeps the last report in
``<data_dir>/audit-verify-last.json`` (written atomically) to show it — valid, or broken at
event N with the reason — with how many events were added since.

**One line per event.** Each event is shown as time, actor, action, object (a link where
the object has a page), outcome and a short summary of its details; the details themselves
open on demand (``<details>``), one field per line, with hashes, signatures and base64
envelopes shortened (the export and ``tiangong hub audit`` hold them whole).
:func:`event_row` makes that view; it decides nothing.

Permissions are the services' (``audit.read``, ``audit.verify``, ``audit.export``); this
module reads forms and renders.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
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
from hub.db import AuditEvent, db
from hub.errors import ConfigError, ValidationError
from hub.services import audit
from hub.services.users import can
from signing.errors import KeyFileError
from signing.fileio import write_file_atomic
from web.views import ctx, login_required, signed_in_user

__all__ = ["LAST_VERIFY_FILE", "SPOOL_BYTES", "EventRow", "bp", "event_row"]

LAST_VERIFY_FILE = "audit-verify-last.json"  # under the data directory
SPOOL_BYTES = 8 * 1024 * 1024  # bytes of an export kept in memory before spilling to disk
READ_BYTES = 64 * 1024  # bytes per chunk of the download
SUMMARY_ITEMS = 3  # detail fields in an event's one-line summary
SUMMARY_VALUE_CHARS = 40  # longest value put in a summary
DETAIL_VALUE_CHARS = 240  # characters of one detail field shown before it is shortened
OBJECT_ID_CHARS = 28  # characters of an object id shown in the table (the rest on hover)
_OPAQUE = re.compile(r"hash|sha|digest|envelope|signature|mac\b|key", re.IGNORECASE)
_ENCODED = re.compile(r"^[A-Za-z0-9+/=_-]{64,}$")
#: Words in an action that make its outcome a refusal.
_REFUSED = ("refused", "rejected", "throttled", "denied", "failed", "quarantine")
_FILTERS = ("actor", "action", "object_type", "object_id", "from", "to")

bp = Blueprint("audit", __name__, url_prefix="/audit")


@dataclass(frozen=True)
class EventRow:
    """One audit event as the table shows it."""

    seq: int
    at: str  # "YYYY-MM-DD HH:MM:SS" (UTC)
    actor: str
    action: str
    object_label: str  # "type:id", the id shortened
    object_full: str  # "type:id" whole (hover)
    object_url: str | None
    outcome: str
    outcome_class: str  # badge-* class
    summary: str
    fields: tuple[tuple[str, str], ...]  # (name, value as shown)


def _short(value: str, limit: int) -> str:
    return value if len(value) <= limit else f"{value[:limit - 1]}… ({len(value)} characters)"


def _shown(key: str, value: Any) -> str:
    """One detail field for people: opaque values (hashes, envelopes, base64) shortened."""
    if isinstance(value, str):
        if _ENCODED.match(value) and len(value) > 64:
            return f"{value[:16]}… ({len(value)} characters, encoded)"
        if _OPAQUE.search(key) and len(value) > 24:
            return f"{value[:16]}…"
        return _short(value, DETAIL_VALUE_CHARS)
    if value is None:
        return "–"
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    text = json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return _short(text, DETAIL_VALUE_CHARS)


def _outcome(action: str, details: dict[str, Any]) -> tuple[str, str]:
    if any(word in action for word in _REFUSED):
        return "refused", "badge-rejected"
    for key in ("status", "state", "outcome"):
        value = details.get(key)
        if isinstance(value, str) and value:
            bad = value in ("failed", "rejected", "interrupted", "refused")
            return value, "badge-rejected" if bad else f"badge-{value}"
    if isinstance(details.get("ok"), bool):
        return ("valid", "badge-valid") if details["ok"] else ("broken", "badge-invalid")
    if isinstance(details.get("to"), str):
        return f"→ {details['to']}", f"badge-{details['to']}"
    return "done", "badge-succeeded"


def _summary(details: dict[str, Any]) -> str:
    parts: list[str] = []
    for key, value in details.items():
        if len(parts) == SUMMARY_ITEMS:
            break
        if value in (None, "", [], {}) or _OPAQUE.search(key):
            continue
        if isinstance(value, str) and (_ENCODED.match(value) or len(value) > SUMMARY_VALUE_CHARS):
            continue
        if isinstance(value, dict | list):
            continue
        parts.append(f"{key.replace('_', ' ')}: {_shown(key, value)}")
    return "; ".join(parts)


def _object_url(object_type: str, object_id: str) -> str | None:
    if object_type == "deployment" and object_id.isdecimal():
        return url_for("deployments.show", deployment_id=int(object_id))
    if object_type == "release" and object_id.count(" ") == 1:
        product, version = object_id.split(" ")
        return url_for("releases.release", product=product, version=version)
    if object_type == "agent":
        return url_for("agents.show", agent_id=object_id)
    if object_type == "environment":
        return url_for("environments.show", name=object_id)
    return None


def event_row(event: AuditEvent) -> EventRow:
    """The table's view of ``event`` (details parsed from its canonical JSON)."""
    try:
        parsed = json.loads(event.details)
    except ValueError:
        parsed = {"details": event.details}
    details = parsed if isinstance(parsed, dict) else {"details": parsed}
    outcome, css = _outcome(event.action, details)
    object_id = event.object_id
    label = object_id if len(object_id) <= OBJECT_ID_CHARS else f"{object_id[:12]}…"
    return EventRow(
        seq=event.seq,
        at=event.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        actor=event.actor,
        action=event.action,
        object_label=f"{event.object_type}:{label}",
        object_full=f"{event.object_type}:{object_id}",
        object_url=_object_url(event.object_type, object_id),
        outcome=outcome,
        outcome_class=css,
        summary=_summary(details),
        fields=tuple((str(k), _shown(str(k), v)) for k, v in sorted(details.items())),
    )


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
    if before_text and not before_text.isdecimal():
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
        events=[event_row(e) for e in page.events] if query else [],
        next_before=page.next_before if query else None,
        paged=bool(query and query.before),
        values=values,
        link_args={k: v for k, v in values.items() if v},
        error=error,
        last=_last_report(),
        head=audit.head_seq(sc.session),
        may_verify=can(user, "audit.verify"),
        may_export=can(user, "audit.export"),
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
