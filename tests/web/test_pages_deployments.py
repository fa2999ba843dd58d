"""The deployments pages: list and filters, one deployment with its timeline, the step logs
of its verified result, the live log (page and JSON), marking delivered, and who sees what.

A real agent (in-process, as in tests/hub/services/test_exchange.py) runs the exported
bundle; its result is imported into ``<data_dir>/results`` like the CLI and live server do.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.service import Agent
from bundle.sync.events import LogReceived
from hub.db import Deployment, db, make_engine
from hub.live_files import LogStore
from hub.migrate import upgrade
from hub.services import audit
from hub.services.approvals import approve_release
from hub.services.context import ServiceContext
from hub.services.deployments import list_deployments, queue_deployment
from hub.services.exchange import export_environment, import_directory
from hub.services.logs import _import_event
from hub.services.releases import create_release, submit_release
from hub.services.users import bootstrap_admin, get_user
from tests.hub.conftest import FakeClock
from tests.web.browser import ARTIFACTS, chromium, new_context  # noqa: F401 - chromium is a fixture
from tests.web.pages import Site
from tests.web.test_pages_audit import db_url  # noqa: F401 - a fixture

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


@dataclass
class Deployed:
    test_id: int  # deployment in environment test, addressed to agent site-01
    prod_id: int  # environment-wide deployment in prod (no agent there)
    agent: Agent
    usb: Path


def _setup(site: Site, tmp: Path) -> Deployed:
    """Enroll site-01 in test, approve hello 1.0.0, queue it for test and prod, export
    test's bundle."""
    with site.app.app_context():
        now = int(site.clock().timestamp())
        _, request = init_home(tmp / "site-01", root_file=site.data_dir / "root.json",
                               agent_id="site-01", environment="test", now=now)
        media = tmp / "enroll"
        media.mkdir()
        shutil.copy(request, media)
        rows = import_directory(site.ctx("op"), media, results_dir=site.data_dir / "results")
        assert [r.status for r in rows.rows] == ["enrolled"], rows.rows
        release = create_release(site.ctx("dev"), HELLO, create_missing_product=True)
        submit_release(site.ctx("dev"), release)
        approve_release(site.ctx("appr1"), release)
        approve_release(site.ctx("appr2"), release)
        (test_dep,) = queue_deployment(site.ctx("op"), release, "test")
        (prod_dep,) = queue_deployment(site.ctx("op"), release, "prod")
        db.session.commit()
        ids = (test_dep.id, prod_dep.id)
        usb = tmp / "usb"
        report = export_environment(site.ctx("op"), "test", usb)
        assert len(report.written) == 1 and not report.failed
    agent = Agent(load_config(tmp / "site-01"), clock=lambda: site.clock().timestamp())
    return Deployed(ids[0], ids[1], agent, usb)


def _run_and_import(site: Site, d: Deployed, tmp: Path) -> None:
    for f in sorted(d.usb.glob("*.tgb")):
        dest = d.agent.config.inbox / f.name
        shutil.copyfile(f, dest)
        out = d.agent.process(ReadyItem(f.name, (dest,), dest.stat().st_size, "single", 0.0))
        assert out.status == "succeeded", out.summary
    back = tmp / "back"
    back.mkdir()
    for result in d.agent.config.outbox.glob("*.tgr"):
        shutil.copy(result, back)
    with site.app.app_context():
        rows = import_directory(site.ctx("op"), back, results_dir=site.data_dir / "results")
        assert [r.status for r in rows.rows] == ["imported"], rows.rows


@pytest.fixture
def deployed(site: Site, tmp_path: Path) -> Iterator[Deployed]:
    d = _setup(site, tmp_path)
    yield d
    d.agent.close()


def _bundle_id(site: Site, dep_id: int) -> str:
    with site.app.app_context():
        dep = db.session.get(Deployment, dep_id)
        assert dep is not None and dep.bundle_id is not None
        return dep.bundle_id


def test_list_shows_only_environments_the_user_may_view(site: Site, deployed: Deployed) -> None:
    page = site.client("view").get("/deployments/").get_data(as_text=True)
    assert f'data-deployment="{deployed.test_id}"' in page
    assert f'data-deployment="{deployed.prod_id}"' in page
    mine = site.client("view-test").get("/deployments/").get_data(as_text=True)
    assert f'data-deployment="{deployed.test_id}"' in mine
    assert f'data-deployment="{deployed.prod_id}"' not in mine
    assert '<option value="prod"' not in mine
    nothing = site.client("nobody").get("/deployments/").get_data(as_text=True)
    assert "data-deployment=" not in nothing


def test_list_filters_by_environment_and_state(site: Site, deployed: Deployed) -> None:
    c = site.client("view")
    prod = c.get("/deployments/?environment=prod").get_data(as_text=True)
    assert f'data-deployment="{deployed.prod_id}"' in prod
    assert f'data-deployment="{deployed.test_id}"' not in prod
    queued = c.get("/deployments/?state=queued").get_data(as_text=True)
    assert f'data-deployment="{deployed.prod_id}"' in queued
    assert f'data-deployment="{deployed.test_id}"' not in queued  # exported


def test_list_refuses_bad_filters(site: Site, deployed: Deployed) -> None:
    bad = site.client("view").get("/deployments/?state=exploded")
    assert bad.status_code == 400
    assert "state 'exploded' does not exist" in unescape(bad.get_data(as_text=True))
    unknown = site.client("view").get("/deployments/?environment=nowhere")
    assert unknown.status_code == 404
    view_test = site.client("view-test")
    other = view_test.get("/deployments/?environment=prod")
    assert other.status_code == 404  # exactly as for an environment that does not exist
    assert unescape(other.get_data(as_text=True)).replace("prod", "nowhere") == unescape(
        view_test.get("/deployments/?environment=nowhere").get_data(as_text=True))


def test_page_of_another_environment_is_refused(site: Site, deployed: Deployed) -> None:
    c = site.client("view-test")
    resp = c.get(f"/deployments/{deployed.prod_id}")
    assert resp.status_code == 404
    assert "hello 1.0.0" not in resp.get_data(as_text=True)
    logs = c.get(f"/deployments/{deployed.prod_id}/logs?after=-1")
    assert logs.status_code == 404 and "lines" not in logs.get_json()
    assert logs.get_json() == {"error": f"deployment {deployed.prod_id} does not exist"}
    assert site.client("view").get("/deployments/999999").status_code == 404


def test_result_event_lookup_on_every_database(db_url: str) -> None:  # noqa: F811
    """The result's audit event is found by a LIKE on canonical JSON: ``_`` in a bundle id
    is literal on SQLite, PostgreSQL and MariaDB, and only the deployment's own event
    counts (the newest when there are several)."""
    engine = make_engine(db_url)
    upgrade(engine)
    clock = FakeClock()
    try:
        with Session(engine, expire_on_commit=False) as s:
            bootstrap_admin(s, clock, "admin")
            for n, (dep_id, bundle) in enumerate(
                [(7, "app_1.0-site_1-3"), (8, "appX1.0-siteX1-3"), (7, "app_1.0-site_1-3")]
            ):
                audit.append_event(s, clock(), "op", "result.import", "result", f"{n:064x}",
                                   {"bundle_id": bundle, "deployment": dep_id,
                                    "agent_id": "site_1"})
            s.commit()
            ctx = ServiceContext(s, clock, get_user(s, "admin"))
            found = _import_event(ctx, Deployment(id=7, bundle_id="app_1.0-site_1-3"))
            assert found is not None
            assert found[0].object_id == f"{2:064x}" and found[1] == "site_1"
            # Deployment 8's event is about appX…: "_" must not match its "X".
            assert _import_event(ctx, Deployment(id=8, bundle_id="app_1.0-site_1-3")) is None
            assert _import_event(ctx, Deployment(id=8, bundle_id="appX1.0-siteX1-3")) is not None
            assert _import_event(ctx, Deployment(id=9, bundle_id="appX1.0-siteX1-3")) is None
    finally:
        engine.dispose()


def test_page_before_any_result(site: Site, deployed: Deployed) -> None:
    page = site.client("view-test").get(f"/deployments/{deployed.test_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="deployment-state">exported<' in html
    assert 'id="no-result"' in html
    assert 'data-state="queued"' in html and "by op" in html
    assert 'href="/agents/site-01"' in html
    assert 'data-testid="agent-presence">never<' in html  # enrolled, not seen since
    # Not finished, has a bundle, the agent not online: a file drop. The page says what
    # happens next instead of showing an empty live log; the hidden panel and its script
    # stay, in case the agent comes online and streams.
    assert 'id="file-drop-note"' in html and "was exported for a file drop" in html
    assert '<section class="card" id="live-logs" hidden>' in html
    assert 'id="live-log"' in html and 'data-finished="0"' in html
    assert "live-logs.js" in html and "<script>" not in html


def test_page_shows_verified_steps_and_their_logs(
    site: Site, deployed: Deployed, tmp_path: Path
) -> None:
    _run_and_import(site, deployed, tmp_path)
    html = site.client("view-test").get(f"/deployments/{deployed.test_id}").get_data(
        as_text=True)
    assert 'id="deployment-state">succeeded<' in html
    assert 'data-testid="agent-presence">online<' in html  # the import counts as seen
    assert 'id="steps-table"' in html and 'id="result-problem"' not in html
    assert '<tr data-attempt="1"><td>1</td>' in html  # the history: one attempt so far
    for name in ("write greeting", "system info", "python report"):
        assert name in html
    assert html.count('class="badge badge-succeeded">succeeded<') >= 4  # result + 3 steps
    assert 'id="result-logs"' in html and '<pre class="log"' in html
    assert "live-logs.js" not in html  # finished: nothing to poll


def test_refusal_of_a_lost_bundle_shows_in_its_history(
    site: Site, deployed: Deployed, tmp_path: Path
) -> None:
    """The bundle declared lost turns up at the site after the next one ran: the agent's
    signed refusal joins the lost deployment's attempts, which stays lost."""
    from hub.services.chain import declare_lost

    with site.app.app_context():
        declare_lost(site.ctx("op"), deployed.test_id, "stick lost in transit", requeue=True)
        db.session.commit()
        site.clock.advance(60)
        (again,) = export_environment(site.ctx("op"), "test", tmp_path / "usb2").written
    (lost_bundle,) = deployed.usb.glob("*.tgb")
    agent = deployed.agent
    for f, status in ((again.paths[0], "succeeded"), (lost_bundle, "rejected")):
        dest = agent.config.inbox / f.name
        shutil.copyfile(f, dest)
        out = agent.process(ReadyItem(f.name, (dest,), dest.stat().st_size, "single", 0.0))
        assert out.status == status, out.summary
    back = tmp_path / "back"
    back.mkdir()
    for result in agent.config.outbox.glob("*.tgr"):
        shutil.copy(result, back)
    with site.app.app_context():
        rows = import_directory(site.ctx("op"), back, results_dir=site.data_dir / "results")
        assert [r.status for r in rows.rows] == ["imported", "imported"], rows.rows
    html = site.client("view-test").get(f"/deployments/{deployed.test_id}").get_data(
        as_text=True)
    assert 'id="deployment-state">lost<' in html
    assert '<tr data-attempt="1"><td>1</td>' in html
    assert 'class="badge badge-rejected">rejected: declared lost<' in html


def test_tampered_result_file_is_reported_not_shown(
    site: Site, deployed: Deployed, tmp_path: Path
) -> None:
    _run_and_import(site, deployed, tmp_path)
    (stored,) = (site.data_dir / "results").glob("*.tgr")
    data = bytearray(stored.read_bytes())
    data[-600] ^= 0x01  # inside the last payload member
    stored.write_bytes(bytes(data))
    html = site.client("view").get(f"/deployments/{deployed.test_id}").get_data(as_text=True)
    assert 'id="result-problem"' in html and "does not verify" in html
    assert 'id="result-logs"' not in html
    # The statuses recorded at import are still shown.
    assert 'id="steps-table"' in html and "write greeting" in html
    stored.unlink()
    gone = site.client("view").get(f"/deployments/{deployed.test_id}").get_data(as_text=True)
    assert "missing from the data directory" in gone


AGENT_ID = "site-01"  # the agent the deployments of the `deployed` fixture are addressed to


def _live_lines(site: Site, bundle_id: str, count: int) -> None:
    store = LogStore(site.data_dir / "live-logs")
    for seq in range(count):
        stream = "stderr" if seq == 1 else "stdout"
        store.add(AGENT_ID, LogReceived(bundle_id, seq // 2, seq, stream, f"line {seq}"))


def test_live_log_json_after_cursor(site: Site, deployed: Deployed) -> None:
    bundle_id = _bundle_id(site, deployed.test_id)
    c = site.client("op-test")
    url = f"/deployments/{deployed.test_id}/logs"
    empty = c.get(f"{url}?after=-1").get_json()
    assert empty["lines"] == [] and empty["last_seq"] == -1 and empty["finished"] is False
    _live_lines(site, bundle_id, 4)
    # A torn last line (the live server is still writing it) is skipped, not an error.
    with (site.data_dir / "live-logs" / AGENT_ID / f"{bundle_id}.log").open("a") as fh:
        fh.write('{"seq": 4, "step": 2, "str')
    first = c.get(f"{url}?after=-1").get_json()
    assert [line["seq"] for line in first["lines"]] == [0, 1, 2, 3]
    assert first["lines"][1] == {"seq": 1, "step": 0, "stream": "stderr", "text": "line 1"}
    assert first["last_seq"] == 3 and first["more"] is False and first["state"] == "exported"
    rest = c.get(f"{url}?after=1").get_json()
    assert [line["seq"] for line in rest["lines"]] == [2, 3]
    nothing_new = c.get(f"{url}?after=3").get_json()
    assert nothing_new["lines"] == [] and nothing_new["last_seq"] == 3
    assert c.get(f"{url}?after=abc").status_code == 400


def test_live_log_is_rendered_without_javascript(site: Site, deployed: Deployed) -> None:
    _live_lines(site, _bundle_id(site, deployed.test_id), 3)
    html = site.client("view-test").get(f"/deployments/{deployed.test_id}").get_data(
        as_text=True)
    assert "[1] line 0\n[1 stderr] line 1\n[2] line 2\n" in html
    assert 'data-after="2"' in html


def test_live_log_stays_after_the_result(
    site: Site, deployed: Deployed, tmp_path: Path
) -> None:
    _live_lines(site, _bundle_id(site, deployed.test_id), 2)
    _run_and_import(site, deployed, tmp_path)
    c = site.client("view-test")
    html = c.get(f"/deployments/{deployed.test_id}").get_data(as_text=True)
    assert 'data-finished="1"' in html and "[1] line 0" in html
    done = c.get(f"/deployments/{deployed.test_id}/logs?after=-1").get_json()
    assert done["finished"] is True and done["state"] == "succeeded"


def test_operator_marks_delivered(site: Site, deployed: Deployed) -> None:
    url = f"/deployments/{deployed.test_id}"
    viewer = site.client("view-test")
    assert 'id="mark-delivered-button"' not in viewer.get(url).get_data(as_text=True)
    refused = site.post(viewer, f"{url}/mark", {"state": "delivered"})
    assert refused.status_code == 403
    op = site.client("op-test")
    assert 'id="mark-delivered-button"' in op.get(url).get_data(as_text=True)
    bad = site.post(op, f"{url}/mark", {"state": "succeeded"})
    assert bad.status_code == 400 and "only delivered" in bad.get_data(as_text=True)
    with site.app.app_context():
        dep = db.session.get(Deployment, deployed.test_id)
        assert dep is not None and dep.state == "exported"
    resp = site.post(op, f"{url}/mark", {"state": "delivered"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith(url)
    page = op.get(url).get_data(as_text=True)
    assert 'id="deployment-state">delivered<' in page
    assert "marked delivered" in page
    assert 'id="mark-delivered-button"' not in page
    again = site.post(op, f"{url}/mark", {"state": "delivered"})
    assert again.status_code == 409
    # op-test may not touch prod.
    assert site.post(op, f"/deployments/{deployed.prod_id}/mark",
                     {"state": "delivered"}).status_code == 404
    with site.app.app_context():
        states = {d.id: d.state for d in list_deployments(db.session())}
    assert states == {deployed.test_id: "delivered", deployed.prod_id: "queued"}


def test_live_log_script_in_a_real_browser(
    site: Site, deployed: Deployed, tmp_path: Path, chromium: Browser  # noqa: F811
) -> None:
    """live-logs.js in Chromium: lines appear as the live server stores them, and the
    page says when the deployment has finished (CSP on: the script is a file)."""
    server = make_server("127.0.0.1", 0, site.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="deployments-web", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        cookie = site.client("view-test").get_cookie("tiangong_session")
        assert cookie is not None
        context = new_context(chromium)
        context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base}])
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/deployments/{deployed.test_id}")
        expect(page.locator("#deployment-state")).to_have_text("exported")
        _live_lines(site, _bundle_id(site, deployed.test_id), 3)
        expect(page.locator("#live-log")).to_have_text(
            "[1] line 0\n[1 stderr] line 1\n[2] line 2\n")
        # The file-drop note gives way to the live panel once lines stream.
        expect(page.locator("#live-logs")).to_be_visible()
        expect(page.locator("#no-live-log")).to_be_hidden()
        _run_and_import(site, deployed, tmp_path)
        expect(page.locator("#live-finished")).to_be_visible()
        expect(page.locator("#deployment-state")).to_have_text("succeeded")
        page.locator("#live-finished a").click()
        expect(page.locator("#steps-table")).to_contain_text("write greeting")
        shots = ARTIFACTS / "deployments"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "deployment-finished.png"), full_page=True)
        # No script error and no CSP refusal (the only 404 is the browser's favicon).
        assert [e for e in errors if "favicon" not in e and "404" not in e] == []
        context.close()
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
