"""The audit page: who may read, filters and pages, verification on request (valid and
broken), and the export download verified offline by the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hub.db import AuditEvent, db, make_engine
from hub.errors import PermissionDeniedError
from hub.migrate import upgrade
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.users import bootstrap_admin, get_user
from tests.hub.conftest import FakeClock
from tests.web.pages import Site
from web.audit import LAST_VERIFY_FILE

READERS = ("aud", "admin")
NOT_READERS = ("dev", "appr1", "op", "op-test", "view", "view-test", "nobody")


def _count(site: Site) -> int:
    with site.app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _seqs(html: str) -> list[int]:
    return [int(s) for s in re.findall(r'<tr data-seq="(\d+)">', html)]


@pytest.mark.parametrize("who", READERS)
def test_auditor_and_admin_read_the_log(site: Site, who: str) -> None:
    html = site.client(who).get("/audit/").get_data(as_text=True)
    seqs = _seqs(html)
    assert seqs and seqs == sorted(seqs, reverse=True)
    assert 'id="verify-button"' in html and 'id="export-button"' in html
    assert 'data-result="never"' in html


@pytest.mark.parametrize("who", NOT_READERS)
def test_others_may_not_read_verify_or_export(site: Site, who: str) -> None:
    c = site.client(who)
    page = c.get("/audit/")
    assert page.status_code == 403
    assert "user.grant" not in page.get_data(as_text=True)
    before = _count(site)
    assert site.post(c, "/audit/verify").status_code == 403
    assert site.post(c, "/audit/export", {"checkpoint": "1"}).status_code == 403
    assert _count(site) == before
    assert not (site.data_dir / LAST_VERIFY_FILE).exists()


def test_filters_by_actor_action_and_object(site: Site) -> None:
    c = site.client("aud")
    by_admin = c.get("/audit/?actor=admin&action=user.grant").get_data(as_text=True)
    assert _seqs(by_admin) and "user:view-test" in by_admin
    assert "user.create" not in by_admin
    obj = c.get("/audit/?object_type=user&object_id=op-test").get_data(as_text=True)
    rows = re.findall(r"<td class=\"object-id\" title=\"[^\"]*\">user:(\S+?)</td>", obj)
    assert rows and set(rows) == {"op-test"}
    none = c.get("/audit/?actor=nobody-at-all").get_data(as_text=True)
    assert _seqs(none) == [] and "No events match." in none


def test_filters_by_time_range_and_pages(site: Site) -> None:
    with site.app.app_context():
        site.clock.advance(3 * 86400)  # the fixture's events are 3 days older
        for n in range(audit.PAGE_SIZE + 10):
            audit.record(site.ctx("op"), "test.event", "thing", str(n), {"n": n})
        db.session.commit()
        later = site.clock().strftime("%Y-%m-%d")
        earlier = (site.clock() - timedelta(days=3)).strftime("%Y-%m-%d")
    c = site.client("aud")
    first = c.get(f"/audit/?from={later}&to={later}").get_data(as_text=True)
    page1 = _seqs(first)
    assert len(page1) == audit.PAGE_SIZE
    older = re.search(r'id="older-link" href="([^"]+)"', first)
    assert older is not None
    second = c.get(unescape(older.group(1))).get_data(as_text=True)
    page2 = _seqs(second)
    assert len(page2) == 10 and max(page2) < min(page1)
    assert 'id="older-link"' not in second and 'id="newest-link"' in second
    assert f'value="{later}"' in second  # filters survive paging
    old = c.get(f"/audit/?to={earlier}").get_data(as_text=True)
    assert _seqs(old) and "test.event" not in old


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=yesterday", "from 'yesterday' is not a date"),
        ("from=2026-11-23&to=2026-11-01", "the range ends (2026-11-01) before it starts"),
        ("before=x1", "before 'x1' is not an event number"),
    ],
)
def test_bad_filters_are_explained_and_kept(site: Site, query: str, message: str) -> None:
    resp = site.client("aud").get(f"/audit/?actor=admin&{query}")
    assert resp.status_code == 400
    html = unescape(resp.get_data(as_text=True))
    assert message in html
    assert 'id="f-actor" name="actor" value="admin"' in html


def test_verify_on_request_valid_then_broken(site: Site) -> None:
    c = site.client("aud")
    resp = site.post(c, "/audit/verify")
    assert resp.status_code == 302
    html = c.get("/audit/").get_data(as_text=True)
    assert 'data-result="valid"' in html and "The audit log verifies" in html
    kept = json.loads((site.data_dir / LAST_VERIFY_FILE).read_text())
    assert kept["ok"] is True and kept["by"] == "aud"
    # The verification itself is an event: one event added since.
    assert 'id="verify-since"' in html and "1 event(s) were added" in html

    with site.app.app_context():
        db.session.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(actor="mallory"))
        db.session.commit()
    site.post(c, "/audit/verify")
    broken = unescape(c.get("/audit/").get_data(as_text=True))
    assert 'data-result="broken"' in broken
    assert "at event 3:" in broken
    kept = json.loads((site.data_dir / LAST_VERIFY_FILE).read_text())
    assert kept["ok"] is False and kept["problems"][0]["seq"] == 3


def test_unreadable_last_result_is_said(site: Site) -> None:
    (site.data_dir / LAST_VERIFY_FILE).write_text("{not json")
    html = site.client("aud").get("/audit/").get_data(as_text=True)
    assert 'data-result="unknown"' in html and "verify again" in html


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind the hub supports (real servers, tests/fixtures)."""
    if request.param == "sqlite":
        return "sqlite://"
    return str(request.getfixturevalue("pg_db" if request.param == "postgresql" else "mysql_db"))


def test_search_events_on_every_database(db_url: str) -> None:
    """Filters, the half-open time range and the keyset cursor mean the same everywhere."""
    engine = make_engine(db_url)
    upgrade(engine)
    clock = FakeClock()
    start = clock()
    try:
        with Session(engine, expire_on_commit=False) as s:
            bootstrap_admin(s, clock, "admin")
            for n in range(7):
                clock.advance(3600)
                audit.append_event(s, clock(), "op" if n % 2 else "aud", "test.event",
                                   "thing", str(n), {"n": n})
            s.commit()
            ctx = ServiceContext(s, clock, get_user(s, "admin"))
            ops = audit.search_events(ctx, audit.EventQuery(actor="op"))
            assert [e.object_id for e in ops.events] == ["5", "3", "1"]
            window = audit.EventQuery(since=start + timedelta(hours=2),
                                      until=start + timedelta(hours=5), limit=2)
            page1 = audit.search_events(ctx, window)
            assert [e.object_id for e in page1.events] == ["3", "2"]
            assert page1.next_before is not None
            page2 = audit.search_events(ctx, replace(window, before=page1.next_before))
            assert [e.object_id for e in page2.events] == ["1"] and page2.next_before is None
            one = audit.search_events(ctx, audit.EventQuery(object_type="thing", object_id="4"))
            assert [e.actor for e in one.events] == ["aud"]
            with pytest.raises(PermissionDeniedError):
                audit.search_events(ctx.as_user(None), audit.EventQuery())
    finally:
        engine.dispose()


def test_export_download_verifies_offline(site: Site, tmp_path: Path) -> None:
    c = site.client("aud")
    before = _count(site)
    resp = site.post(c, "/audit/export", {"checkpoint": "1"})
    assert resp.status_code == 200
    assert "attachment" in resp.headers["Content-Disposition"]
    assert resp.headers["Content-Disposition"].endswith('.jsonl"')
    body = resp.get_data()
    out = tmp_path / "audit.jsonl"
    out.write_bytes(body)
    # checkpoint event + export event; the export holds every event before its own.
    assert _count(site) == before + 2
    assert int(resp.headers["X-Audit-Events"]) == before + 1
    tiangong = Path(sys.executable).with_name("tiangong")
    done = subprocess.run(
        [str(tiangong), "audit", "verify-export", str(out), "--trust",
         str(site.data_dir / "root.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout and "1 checkpoint(s) match" in done.stdout


def test_export_without_checkpoint(site: Site) -> None:
    c = site.client("admin")
    before = _count(site)
    resp = site.post(c, "/audit/export", {})
    assert resp.status_code == 200
    lines = resp.get_data().splitlines()
    assert len(lines) == 1 + before  # header, then every event; no checkpoint line
    assert _count(site) == before + 1


ENVELOPE = "eyJwYXlsb2FkIjoi" + "QUJD" * 200  # base64, as signed envelopes are stored


def _event(action: str, details: dict[str, object], object_type: str = "deployment",
           object_id: str = "7") -> AuditEvent:
    from datetime import UTC, datetime

    return AuditEvent(seq=5, at=datetime(2026, 11, 23, 9, 0, 1, tzinfo=UTC), actor="carol",
                      action=action, object_type=object_type, object_id=object_id,
                      details=json.dumps(details, sort_keys=True), prev_hash="0" * 64,
                      hash="1" * 64)


@pytest.mark.parametrize(("action", "details", "outcome"), [
    ("deployment.exported", {"from": "exporting", "to": "exported"}, "→ exported"),
    ("auth.local_refused", {"given_username": "bob"}, "refused"),
    ("auth.login_throttled", {"failures": 5}, "refused"),
    ("result.import", {"status": "failed", "bundle_id": "b-1"}, "failed"),
    ("audit.verify", {"ok": True, "events": 40}, "valid"),
    ("user.grant", {"role": "operator", "environment": None}, "done"),
])
def test_event_row_outcome(
    site: Site, action: str, details: dict[str, object], outcome: str
) -> None:
    from web.audit import event_row

    with site_request(site):
        assert event_row(_event(action, details)).outcome == outcome


def site_request(site: Site) -> Any:
    """A request context of the site's app, for url_for in event_row."""
    return site.app.test_request_context("/")


def test_event_row_summarises_and_shortens_opaque_values(site: Site) -> None:
    from web.audit import event_row

    with site_request(site):
        row = event_row(_event("bundle.written", {
            "bundle_id": "hello-1.0.0-plant-a-1", "envelope_sha256": "9" * 64,
            "envelope": ENVELOPE, "sequence": 1, "target": {"agents": [], "hub": None},
        }, object_id="12"))
        long_id = event_row(_event("result.import", {}, "result", "a" * 64))
    assert row.object_url == "/deployments/12"
    assert row.summary == "bundle id: hello-1.0.0-plant-a-1; sequence: 1"
    fields = dict(row.fields)
    assert fields["envelope"] == f"{ENVELOPE[:16]}… ({len(ENVELOPE)} characters, encoded)"
    assert fields["envelope_sha256"] == "9" * 16 + "…"
    assert fields["target"] == '{"agents": [], "hub": null}'
    assert long_id.object_label == "result:" + "a" * 12 + "…"
    assert long_id.object_full == "result:" + "a" * 64


def test_audit_page_is_one_line_per_event_with_details_on_demand(site: Site) -> None:
    with site.app.app_context():
        audit.append_event(db.session(), site.clock(), "carol", "bundle.written",
                           "deployment", "3", {"bundle_id": "b-3", "envelope": ENVELOPE})
        db.session.commit()
    html = site.client("aud").get("/audit/").get_data(as_text=True)
    row = html.split('<tr data-seq="', 2)[1].split("</tr>", 1)[0]  # the newest event
    assert "bundle.written" in row and "<details>" in row
    assert "<summary>bundle id: b-3</summary>" in row
    assert ENVELOPE not in html and '{"bundle_id"' not in html  # no raw JSON, no envelope
    assert 'class="badge badge-succeeded">done<' in row
