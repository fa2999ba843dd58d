"""The agents pages: list with status, enrollment by upload (real signed requests from
``agent.home.init_home``), the enrollment response download, revocation with a reason."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from hub.app import hub_keys
from hub.db import Agent, AuditEvent, db
from hub.services.agents import get_agent
from hub.services.presence import online_window
from signing.envelope import TYPE_ENROLLMENT_RESPONSE, verify_envelope
from signing.strictjson import loads_strict
from tests.web.pages import Site, request_file

__all__ = ["enroll", "set_last_seen"]


def _upload(site: Site, who: str, data: bytes, name: str, environment: str = "") -> Any:
    c = site.client(who)
    return site.post(
        c,
        "/agents/enroll",
        {"request_file": (io.BytesIO(data), name), "environment": environment},
        content_type="multipart/form-data",
    )


def enroll(site: Site, tmp: Path, agent_id: str, environment: str = "test") -> None:
    """Enroll an agent through the page, as an admin."""
    path = request_file(site, tmp, agent_id, environment)
    resp = _upload(site, "admin", path.read_bytes(), path.name)
    assert resp.status_code == 302, resp.get_data(as_text=True)


def set_last_seen(site: Site, agent_id: str, ago: timedelta | None) -> None:
    with site.app.app_context():
        agent = get_agent(db.session(), agent_id)
        agent.last_seen = None if ago is None else site.clock() - ago
        db.session.commit()


def _agent_count() -> int:
    return int(db.session.scalar(select(func.count()).select_from(Agent)) or 0)


def test_enroll_by_upload_and_download_the_signed_response(site: Site, tmp_path: Path) -> None:
    path = request_file(site, tmp_path, "plant-a-01")
    c = site.client("op")
    assert 'id="enroll-form"' in c.get("/agents/enroll").get_data(as_text=True)
    resp = site.post(c, "/agents/enroll",
                     {"request_file": (io.BytesIO(path.read_bytes()), path.name)},
                     content_type="multipart/form-data")
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/agents/plant-a-01"
    page = c.get("/agents/plant-a-01").get_data(as_text=True)
    assert "enrolled in test" in page and 'id="download-response"' in page

    dl = c.get("/agents/plant-a-01/enrollment-response")
    assert dl.status_code == 200
    disposition = dl.headers["Content-Disposition"]
    assert disposition.startswith("attachment")
    assert "enrollment-response-plant-a-01.json" in disposition
    # Signed with the hub's release key, checkable against the root the agent pinned.
    keys = hub_keys(site.app)
    assert keys is not None and keys.release_key is not None
    verified = verify_envelope(dl.data, payload_type=TYPE_ENROLLMENT_RESPONSE,
                               trusted=[keys.release_key.public], threshold=1)
    doc = loads_strict(verified.payload, 1 << 20)
    assert doc["agent_id"] == "plant-a-01" and doc["environment"] == "test"
    assert doc["hub_id"] == "hub-web"
    with site.app.app_context():
        assert get_agent(db.session(), "plant-a-01").status == "enrolled"


def test_environment_chosen_on_the_form_must_match_the_request(
    site: Site, tmp_path: Path
) -> None:
    path = request_file(site, tmp_path, "plant-b-01", "test")
    resp = _upload(site, "op", path.read_bytes(), path.name, environment="prod")
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "enrollment-plant-b-01.json" in html and "asked to join environment" in html
    with site.app.app_context():
        assert _agent_count() == 0


def test_a_request_without_environment_takes_the_form_choice(site: Site, tmp_path: Path) -> None:
    path = request_file(site, tmp_path, "plant-c-01", None)
    missing = _upload(site, "op", path.read_bytes(), path.name)
    assert missing.status_code == 400 and "names no environment" in missing.get_data(as_text=True)
    assert _upload(site, "op", path.read_bytes(), path.name, environment="prod").status_code == 302
    with site.app.app_context():
        assert get_agent(db.session(), "plant-c-01").environment.name == "prod"


def _tampered(site: Site, tmp: Path) -> bytes:
    path = request_file(site, tmp, "plant-x-01")
    doc = json.loads(path.read_bytes())
    doc["signatures"][0]["sig"] = doc["signatures"][0]["sig"][::-1]
    return json.dumps(doc).encode()


BAD_FILES: list[tuple[str, Callable[[Site, Path], bytes], str]] = [
    ("not JSON", lambda s, t: b"\x28\xb5\x2f\xfd binary", "not strict JSON"),
    ("a result file name", lambda s, t: b"{}", "hostname must be a string"),
    ("bad signature", _tampered, "does not verify"),
    ("too large", lambda s, t: b" " * (65 * 1024), "larger than 64 KiB"),
]


def test_bad_request_files_give_a_400_naming_file_and_reason(site: Site, tmp_path: Path) -> None:
    for label, make, reason in BAD_FILES:
        resp = _upload(site, "op", make(site, tmp_path), f"upload-{len(label)}.json")
        html = resp.get_data(as_text=True)
        assert resp.status_code == 400, label
        assert f"upload-{len(label)}.json" in html and reason in html, (label, html)
        assert 'id="enroll-form"' in html  # the form again, to try another file
    with site.app.app_context():
        assert _agent_count() == 0
    assert not (site.data_dir / "enrollment-responses").exists() or not any(
        (site.data_dir / "enrollment-responses").iterdir()
    )


def test_no_file_chosen_is_a_400(site: Site) -> None:
    c = site.client("op")
    resp = site.post(c, "/agents/enroll", {}, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert "Choose the enrollment request" in resp.get_data(as_text=True)


def test_duplicate_agent_is_a_409(site: Site, tmp_path: Path) -> None:
    path = request_file(site, tmp_path, "plant-d-01")
    assert _upload(site, "op", path.read_bytes(), path.name).status_code == 302
    again = _upload(site, "op", path.read_bytes(), "again.json")
    assert again.status_code == 409
    html = again.get_data(as_text=True)
    assert "again.json" in html and "already enrolled as agent plant-d-01" in html
    with site.app.app_context():
        assert _agent_count() == 1


def test_enrolling_needs_operator_of_that_environment(site: Site, tmp_path: Path) -> None:
    assert site.client("view").get("/agents/enroll").status_code == 403
    assert site.client("dev").get("/agents/enroll").status_code == 403
    prod = request_file(site, tmp_path, "plant-p-01", "prod")
    refused = _upload(site, "op-test", prod.read_bytes(), prod.name)
    # op-test cannot see prod: answered as for an environment that does not exist.
    assert refused.status_code == 404
    assert "environment &#39;prod&#39; does not exist" in refused.get_data(as_text=True)
    viewer = _upload(site, "view", prod.read_bytes(), prod.name)
    assert viewer.status_code == 403
    with site.app.app_context():
        assert _agent_count() == 0
    # op-test is offered only its own environment
    form = site.client("op-test").get("/agents/enroll").get_data(as_text=True)
    assert '<option value="test"' in form and '<option value="prod"' not in form
    ok = request_file(site, tmp_path, "plant-t-01", "test")
    assert _upload(site, "op-test", ok.read_bytes(), ok.name).status_code == 302


def test_list_shows_status_and_last_seen_per_viewable_environment(
    site: Site, tmp_path: Path
) -> None:
    enroll(site, tmp_path, "t-online")
    enroll(site, tmp_path, "t-stale")
    enroll(site, tmp_path, "t-never")
    enroll(site, tmp_path, "p-agent", "prod")
    set_last_seen(site, "t-online", timedelta(seconds=30))
    set_last_seen(site, "t-stale", online_window() + timedelta(seconds=1))
    site.post(site.client("admin"), "/agents/p-agent/revoke", {"reason": "disk died"})

    html = site.client("view").get("/agents/").get_data(as_text=True)
    rows = {r.split('"')[0]: r for r in html.split('data-agent="')[1:]}
    assert set(rows) == {"t-online", "t-stale", "t-never", "p-agent"}
    assert ">online<" in rows["t-online"]
    assert ">offline<" in rows["t-stale"] and "2026-11-23 08:58 UTC" in rows["t-stale"]
    assert ">never<" in rows["t-never"]
    assert ">revoked<" in rows["p-agent"]

    only_test = site.client("view-test").get("/agents/").get_data(as_text=True)
    assert "t-online" in only_test and "p-agent" not in only_test
    assert site.client("view-test").get("/agents/?environment=prod").status_code == 404
    assert site.client("view-test").get("/agents/p-agent").status_code == 404
    assert site.client("nobody").get("/agents/").status_code == 200
    assert "p-agent" not in site.client("nobody").get("/agents/").get_data(as_text=True)
    filtered = site.client("view").get("/agents/?environment=prod").get_data(as_text=True)
    assert "p-agent" in filtered and "t-online" not in filtered
    assert site.client("view").get("/agents/?environment=nowhere").status_code == 404
    assert site.client("view").get("/agents/no-such-agent").status_code == 404


def test_revoke_with_reason(site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "r-01")
    c = site.client("op-test")
    page = c.get("/agents/r-01").get_data(as_text=True)
    assert 'id="revoke-link"' in page
    confirm = c.get("/agents/r-01/revoke").get_data(as_text=True)
    assert 'id="revoke-form"' in confirm and 'for="revoke-reason"' in confirm

    blank = site.post(c, "/agents/r-01/revoke", {"reason": "  "})
    assert blank.status_code == 400 and "needs a reason" in blank.get_data(as_text=True)
    resp = site.post(c, "/agents/r-01/revoke", {"reason": "machine stolen"})
    assert resp.status_code == 302
    with site.app.app_context():
        agent = get_agent(db.session(), "r-01")
        assert agent.status == "revoked" and agent.revoked_at is not None
        event = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "agent.revoke")
        ).one()
        assert event.actor == "op-test" and "machine stolen" in event.details
    after = c.get("/agents/r-01").get_data(as_text=True)
    assert ">revoked<" in after and 'id="revoke-link"' not in after
    assert 'id="download-response"' not in after
    assert c.get("/agents/r-01/enrollment-response").status_code == 409
    twice = site.post(c, "/agents/r-01/revoke", {"reason": "again"})
    assert twice.status_code == 409 and "already revoked" in twice.get_data(as_text=True)


def test_revoke_and_download_need_the_role_in_that_environment(
    site: Site, tmp_path: Path
) -> None:
    enroll(site, tmp_path, "p-02", "prod")
    for who in ("op-test", "view", "dev", "appr-prod"):
        c = site.client(who)
        want = 404 if who == "op-test" else 403  # op-test cannot even see prod's agents
        assert site.post(c, "/agents/p-02/revoke", {"reason": "x"}).status_code == want, who
        assert c.get("/agents/p-02/revoke").status_code == want, who
        assert c.get("/agents/p-02/enrollment-response").status_code == want, who
    with site.app.app_context():
        assert get_agent(db.session(), "p-02").status == "enrolled"
    page = site.client("view").get("/agents/p-02").get_data(as_text=True)
    assert 'id="revoke-link"' not in page and 'id="download-response"' not in page


def test_an_oversized_upload_is_refused_before_it_is_read(site: Site) -> None:
    resp = _upload(site, "op", b"x" * (200 * 1024), "huge.json")
    assert resp.status_code == 413 and "not an enrollment request" in resp.get_data(as_text=True)
    with site.app.app_context():
        assert _agent_count() == 0


def test_agent_page_shows_the_last_known_inventory(site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "t-inv")
    html = site.client("view").get("/agents/t-inv").get_data(as_text=True)
    assert 'id="agent-inventory-unknown"' in html
    with site.app.app_context():
        agent = get_agent(db.session(), "t-inv")
        agent.inventory = {"agent_version": "1.2", "os": "Linux 6.1 (x86_64)",
                           "free_disk_bytes": 5 * 1048576, "cpus": 4,
                           "memory_bytes": 2048 * 1048576, "time_zone": "Europe/Berlin",
                           "connections": {"app-db": "postgres", "reports-db": "mysql"},
                           "step_kinds": ["shell", "sql"]}
        agent.inventory_at = site.clock()
        db.session.commit()
    html = site.client("view").get("/agents/t-inv").get_data(as_text=True)
    facts = html.split('id="agent-inventory"', 1)[1].split("</dl>", 1)[0]
    assert "app-db (postgres)" in facts and "reports-db (mysql)" in facts
    assert "shell, sql" in facts and "Europe/Berlin" in facts and "5.0 MiB" in facts
    assert 'id="agent-holds-unknown"' in html  # a result from before holds were reported


def test_agent_page_shows_what_the_site_holds(site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "t-held")
    with site.app.app_context():
        agent = get_agent(db.session(), "t-held")
        agent.inventory = {"agent_version": "1.2", "os": "Linux", "free_disk_bytes": None,
                           "cpus": None, "memory_bytes": None, "time_zone": None,
                           "connections": {}, "step_kinds": [],
                           "window": "Sat 01:00–05:00 Europe/Berlin"}
        agent.inventory_at = site.clock()
        agent.holds = [{"bundle_id": "b-9", "sequence": 4, "kind": "freeze",
                        "text": "frozen until Mon 2027-01-04 00:00 UTC (<quarter close>)",
                        "until": None}]
        db.session.commit()
    html = site.client("view").get("/agents/t-held").get_data(as_text=True)
    held = html.split('id="agent-holds"', 1)[1].split("</ul>", 1)[0]
    assert "b-9" in held and "sequence 4" in held and 'data-kind="freeze"' in held
    assert "(&lt;quarter close&gt;)" in held  # escaped
    assert "Sat 01:00–05:00 Europe/Berlin" in html.split('id="agent-window"', 1)[1][:80]
    with site.app.app_context():
        get_agent(db.session(), "t-held").holds = []
        db.session.commit()
    html = site.client("view").get("/agents/t-held").get_data(as_text=True)
    assert 'id="agent-holds-none"' in html and 'id="agent-holds"' not in html
