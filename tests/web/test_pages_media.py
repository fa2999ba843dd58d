"""The media pages: export as a tar download (or to the configured export directory), a real
agent runs the bundle, its result comes back by upload; refused files are reported and kept."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from agent.config import load_config
from agent.inbox import ReadyItem
from agent.service import Agent
from hub.app import hub_config
from hub.config import with_overrides
from hub.db import db
from hub.services import export as export_service
from hub.services.approvals import approve_release
from hub.services.deployments import get_deployment, queue_deployment
from hub.services.exchange import ExportReport
from hub.services.releases import create_release, submit_release
from tests.e2e.conftest import TIANGONG
from tests.hub.conftest import write_release
from tests.web.pages import Site, request_file
from web import media
from web.media import EXPORTS_DIR, IMPORT_LIMIT_SETTING, UPLOADS_DIR, tar_length, tar_stream


def _upload(site: Site, c: FlaskClient, files: list[tuple[bytes, str]]) -> Any:
    return site.post(c, "/media/import",
                     {"files": [(io.BytesIO(data), name) for data, name in files]},
                     content_type="multipart/form-data")


def _rows(html: str) -> dict[str, str]:
    """file name -> status of the import table."""
    out = {}
    for part in html.split('data-file="')[1:]:
        name, _, rest = part.partition('"')
        out[name] = rest.split('data-status="')[1].split('"')[0]
    return out


@dataclass
class Site2:
    """The site with a real agent enrolled in ``test`` and a deployment queued for it."""

    site: Site
    agent: Agent
    deployment: int
    tmp: Path


@pytest.fixture
def queued(site: Site, tmp_path: Path) -> Iterator[Site2]:
    req = request_file(site, tmp_path, "media-01", "test")
    op = site.client("op")
    resp = _upload(site, op, [(req.read_bytes(), req.name)])
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and _rows(html) == {req.name: "enrolled"}, html
    assert 'data-testid="response-media-01"' in html
    with site.app.app_context():
        release = create_release(site.ctx("dev"), write_release(tmp_path / "src"),
                                 create_missing_product=True)
        submit_release(site.ctx("dev"), release)
        approve_release(site.ctx("appr1"), release)
        (dep,) = queue_deployment(site.ctx("op"), release, "test")
        db.session.commit()
        dep_id = dep.id
    agent = Agent(load_config(req.parent.parent), clock=lambda: site.clock().timestamp())
    yield Site2(site, agent, dep_id, tmp_path)
    agent.close()


def _state(site: Site, dep_id: int) -> str:
    with site.app.app_context():
        return get_deployment(db.session(), dep_id).state


def _export_dirs(site: Site) -> list[Path]:
    root = site.data_dir / EXPORTS_DIR
    return sorted(root.iterdir()) if root.exists() else []


def test_export_download_run_and_import_round_trip(queued: Site2) -> None:
    site, op = queued.site, queued.site.client("op")
    index = op.get("/media/").get_data(as_text=True)
    assert 'id="export-form-test"' in index and 'id="import-form"' in index

    resp = site.post(op, "/media/export", {"environment": "test"})
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/media/exports/test-")
    page = op.get(resp.headers["Location"]).get_data(as_text=True)
    assert 'id="download-export"' in page and "INDEX-test.txt" in page
    assert _state(site, queued.deployment) == "exported"
    (export_dir,) = _export_dirs(site)

    dl = op.get(resp.headers["Location"] + "/download")
    assert dl.status_code == 200 and dl.mimetype == "application/x-tar"
    assert dl.headers["Content-Disposition"].startswith("attachment;")
    assert int(dl.headers["Content-Length"]) == len(dl.data)
    with tarfile.open(fileobj=io.BytesIO(dl.data)) as tar:
        members = tar.getmembers()
        assert all(m.isreg() and "/" not in m.name for m in members)
        names = [m.name for m in members]
        contents = {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    bundles = [n for n in names if n.endswith(".tgb")]
    assert names == sorted([*bundles, "INDEX-test.txt"]) and len(bundles) == 1
    assert "media-01" in contents["INDEX-test.txt"].decode()
    # Sent completely: the export is gone from the hub.
    assert not export_dir.exists()
    assert op.get(resp.headers["Location"]).status_code == 404

    # A real agent runs the bundle from its inbox.
    agent = queued.agent
    dest = agent.config.inbox / bundles[0]
    dest.write_bytes(contents[bundles[0]])
    out = agent.process(ReadyItem(dest.name, (dest,), dest.stat().st_size, "single", 0.0))
    assert out.status == "succeeded", out.summary
    (result,) = sorted(agent.config.outbox.glob("*.tgr"))

    imported = _upload(site, op, [(result.read_bytes(), result.name)])
    html = imported.get_data(as_text=True)
    assert _rows(html) == {result.name: "imported"}
    assert "1 imported, 0 duplicate, 0 rejected, 0 enrolled" in html
    assert _state(site, queued.deployment) == "succeeded"
    digest = hashlib.sha256(result.read_bytes()).hexdigest()
    assert any(hashlib.sha256(p.read_bytes()).hexdigest() == digest
               for p in (site.data_dir / "results").glob("*.tgr"))
    # Importing the same file again changes nothing, and leaves no upload behind.
    again = _upload(site, op, [(result.read_bytes(), result.name)]).get_data(as_text=True)
    assert _rows(again) == {result.name: "duplicate"}
    uploads = site.data_dir / UPLOADS_DIR
    assert not any(uploads.iterdir())


def test_interrupted_download_keeps_the_export(queued: Site2) -> None:
    site, op = queued.site, queued.site.client("op")
    location = site.post(op, "/media/export", {"environment": "test"}).headers["Location"]
    partial = op.get(location + "/download", buffered=False)
    first = next(iter(partial.response))
    assert first  # some bytes were sent, then the browser went away
    partial.close()
    assert len(_export_dirs(site)) == 1
    assert "Exports waiting to be downloaded" in op.get("/media/").get_data(as_text=True)
    full = op.get(location + "/download")
    assert full.status_code == 200 and len(full.data) == int(full.headers["Content-Length"])
    assert _export_dirs(site) == []


def test_nothing_queued_writes_nothing(site: Site) -> None:
    op = site.client("op")
    resp = site.post(op, "/media/export", {"environment": "prod"}, follow_redirects=True)
    assert "Nothing queued for prod: nothing written." in resp.get_data(as_text=True)
    assert _export_dirs(site) == []


def test_export_to_the_configured_directory(queued: Site2) -> None:
    site = queued.site
    share = queued.tmp / "share"
    site.app.config["TIANGONG_HUB"] = with_overrides(hub_config(site.app),
                                                     export_dir=str(share))
    op = site.client("op")
    index = op.get("/media/").get_data(as_text=True)
    assert str(share) in index and 'name="destination"' in index
    resp = site.post(op, "/media/export", {"environment": "test", "destination": "directory"},
                     follow_redirects=True)
    assert "Wrote 1 bundle(s) of test to" in resp.get_data(as_text=True)
    assert (share / "INDEX-test.txt").is_file() and len(list(share.glob("*.tgb"))) == 1
    assert _export_dirs(site) == [] and _state(site, queued.deployment) == "exported"


def test_an_index_the_directory_cannot_take_is_said_with_what_was_written(
        queued: Site2) -> None:
    """An index that cannot be written (a directory in its place stands in for read-only
    media) is an error flash naming it; "the bundles listed are written and recorded" only
    when some were (a failed bundle is no bundle written), as ``hub export`` says it."""
    site, op = queued.site, queued.site.client("op")
    share = queued.tmp / "share"
    (share / "INDEX-test.txt").mkdir(parents=True)
    taken = share / "hello-1.0.0-media-01-000001.tgb"
    taken.mkdir()
    site.app.config["TIANGONG_HUB"] = with_overrides(hub_config(site.app),
                                                     export_dir=str(share))
    cannot = f"Cannot write the index INDEX-test.txt in {share}: [Errno 21] Is a directory"
    page = site.post(op, "/media/export", {"environment": "test", "destination": "directory"},
                     follow_redirects=True).get_data(as_text=True)
    assert "NOT exported" in page and cannot in page
    assert "written and recorded" not in page
    assert _state(site, queued.deployment) == "exporting"
    assert [p.name for p in share.glob("*.tgb*")] == [taken.name]  # only the directory
    taken.rmdir()
    page = site.post(op, "/media/export", {"environment": "test", "destination": "directory"},
                     follow_redirects=True).get_data(as_text=True)
    assert cannot in page and "the bundles listed are written and recorded." in page
    assert _state(site, queued.deployment) == "exported"
    assert [p.name for p in share.glob("*.tgb")] == [taken.name]


def test_an_export_directory_that_cannot_be_made_is_a_400_naming_it(queued: Site2) -> None:
    """The service says it (DestinationError), not each front end: the web page got the raw
    OSError, a 500, where ``hub export`` said "cannot export to DIR: …"."""
    site = queued.site
    blocked = queued.tmp / "not-a-dir"
    blocked.write_bytes(b"")
    share = blocked / "share"
    site.app.config["TIANGONG_HUB"] = with_overrides(hub_config(site.app),
                                                     export_dir=str(share))
    resp = site.post(site.client("op"), "/media/export",
                     {"environment": "test", "destination": "directory"})
    text = resp.get_data(as_text=True)
    assert resp.status_code == 400 and f"cannot export to {share}" in text
    assert "Not a directory" in text
    assert _state(site, queued.deployment) == "queued"


def test_export_directory_choice_without_configuration_is_a_400(site: Site) -> None:
    resp = site.post(site.client("op"), "/media/export",
                     {"environment": "test", "destination": "directory"})
    assert resp.status_code == 400 and "no export directory" in resp.get_data(as_text=True)


def test_export_needs_operator_of_that_environment(queued: Site2) -> None:
    site = queued.site
    for who, env in (("dev", "test"), ("view", "test"), ("op-test", "prod"), ("aud", "test")):
        resp = site.post(site.client(who), "/media/export", {"environment": env})
        assert resp.status_code == (404 if who == "op-test" else 403), who
    assert _export_dirs(site) == [] and _state(site, queued.deployment) == "queued"
    assert 'id="export-form-test"' not in site.client("view").get("/media/").get_data(
        as_text=True)
    # op-test may export test, and only test
    index = site.client("op-test").get("/media/").get_data(as_text=True)
    assert 'id="export-form-test"' in index and "prod" not in index
    # the audit checkpoint the export carries needs no global grant
    location = site.post(site.client("op-test"), "/media/export",
                         {"environment": "test"}).headers["Location"]
    # a viewer cannot fetch it
    assert site.client("view").get(location).status_code == 404
    assert site.client("view").get(location + "/download").status_code == 404
    assert site.client("op").get("/media/exports/../../etc").status_code == 404
    assert site.client("op").get("/media/exports/test-20260101T000000Z-00000000").status_code \
        == 404


def test_refused_and_ignored_files_are_reported_and_kept(site: Site, tmp_path: Path) -> None:
    op = site.client("op")
    garbage = b"this is not a bundle at all\n" * 10
    resp = _upload(site, op, [(garbage, "forged.tgr"), (b"notes", "readme.txt"),
                              (garbage, "forged.tgr")])
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert _rows(html) == {"forged.tgr": "rejected", "forged-2.tgr": "rejected",
                           "readme.txt": "ignored"}
    assert "0 imported, 0 duplicate, 2 rejected, 0 enrolled, 1 ignored" in html
    assert "not a readable result file" in html or "not a result" in html
    (kept_dir,) = (site.data_dir / UPLOADS_DIR).iterdir()
    assert (kept_dir / "forged.tgr").read_bytes() == garbage
    assert (kept_dir / "readme.txt").read_bytes() == b"notes"
    assert f"{UPLOADS_DIR}/{kept_dir.name}/forged.tgr" in html


def test_enrollment_request_imported_again_is_a_duplicate(site: Site, tmp_path: Path) -> None:
    req = request_file(site, tmp_path, "dup-01", "test")
    op = site.client("op")
    first = _upload(site, op, [(req.read_bytes(), req.name)]).get_data(as_text=True)
    assert _rows(first) == {req.name: "enrolled"}
    dl = op.get("/agents/dup-01/enrollment-response")
    assert dl.status_code == 200 and "enrollment-response-dup-01.json" in dl.headers[
        "Content-Disposition"]
    again = _upload(site, op, [(req.read_bytes(), req.name)]).get_data(as_text=True)
    assert _rows(again) == {req.name: "duplicate"} and "already enrolled" in again


def test_import_is_refused_without_a_global_operator_role(site: Site, tmp_path: Path) -> None:
    req = request_file(site, tmp_path, "no-01", "test")
    for who in ("op-test", "view", "dev"):
        resp = _upload(site, site.client(who), [(req.read_bytes(), req.name)])
        assert resp.status_code == 403, who
    uploads = site.data_dir / UPLOADS_DIR
    assert not uploads.exists() or not any(uploads.iterdir())
    assert 'id="import-form"' not in site.client("op-test").get("/media/").get_data(
        as_text=True)


def test_import_without_files_is_a_400(site: Site) -> None:
    resp = site.post(site.client("op"), "/media/import", {},
                     content_type="multipart/form-data")
    assert resp.status_code == 400 and "choose one or more" in resp.get_data(as_text=True)


def test_an_import_over_the_limit_is_refused_before_it_is_read(site: Site) -> None:
    site.app.config[IMPORT_LIMIT_SETTING] = 4096
    resp = _upload(site, site.client("op"), [(b"r" * 8192, "big.tgr")])
    assert resp.status_code == 413 and "4,096 bytes" in resp.get_data(as_text=True)
    uploads = site.data_dir / UPLOADS_DIR
    assert not uploads.exists() or not any(uploads.iterdir())


@pytest.mark.parametrize("sizes", [[0], [1, 511, 512, 513], [10240 - 1024 - 512], [70000]])
def test_tar_stream_matches_its_announced_length_and_reads_back(
    tmp_path: Path, sizes: list[int]
) -> None:
    files = []
    for i, size in enumerate(sizes):
        p = tmp_path / f"{'x' * 120}-{i}.tgb"  # longer than ustar's 100 characters
        p.write_bytes(bytes(range(256)) * (size // 256) + b"z" * (size % 256))
        files.append(p)
    data = b"".join(tar_stream(files))
    assert len(data) == tar_length(files) and len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for p, m in zip(files, tar.getmembers(), strict=True):
            assert m.name == p.name and m.isreg()
            assert tar.extractfile(m).read() == p.read_bytes()  # type: ignore[union-attr]


def test_no_export_button_with_nothing_queued(site: Site) -> None:
    """An environment with nothing queued offers no Export button, but says what to do."""
    page = site.client("op").get("/media/").get_data(as_text=True)
    assert 'id="export-form-test"' not in page and 'id="export-button-test"' not in page
    assert 'id="nothing-test"' in page and "queue an approved release for test" in page


def _lose_the_race(site: Site, monkeypatch: pytest.MonkeyPatch, out: Path, *args: str,
                   wrote: int) -> None:
    """Make the page's export lose the race: once it has read the queued list, a real
    ``tiangong hub export … ARGS --out OUT`` process claims and writes first."""
    read = export_service.pending_exports

    def read_then_lose(*a: Any, **kw: Any) -> Any:
        found = read(*a, **kw)
        cli = subprocess.run(
            [*TIANGONG, "hub", "--local-admin", "op", "export", "--environment", "test", *args,
             "--out", str(out)],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "TIANGONG_HUB_DATA_DIR": str(site.data_dir)})
        assert cli.returncode == 0 and cli.stdout.count("wrote ") == wrote, cli
        return found

    monkeypatch.setattr(export_service, "pending_exports", read_then_lose)


@pytest.mark.parametrize("destination", ["download", "directory"])
def test_export_that_lost_the_race_names_what_another_process_exported(
    queued: Site2, monkeypatch: pytest.MonkeyPatch, destination: str
) -> None:
    """The page read the queued list, then a real ``tiangong hub export`` process claimed
    and wrote the deployment first: the page says so (as the CLI does), not "nothing
    queued", and writes nothing itself."""
    site, op = queued.site, queued.site.client("op")
    elsewhere = queued.tmp / "cli-usb"
    _lose_the_race(site, monkeypatch, elsewhere, wrote=1)
    if destination == "directory":
        export_dir = queued.tmp / "export-dir"
        monkeypatch.setitem(site.app.config, "TIANGONG_HUB",
                            with_overrides(hub_config(site.app), export_dir=str(export_dir)))
    resp = site.post(op, "/media/export", {"environment": "test", "destination": destination})
    assert resp.status_code == 302 and resp.headers["Location"] == "/media/"
    page = op.get("/media/").get_data(as_text=True)
    assert f"Deployment {queued.deployment}: exported by another process" in page
    assert "nothing written" not in page and "NOT exported" not in page
    # Nothing changed by the page: one bundle (the CLI's), nothing waiting for download.
    assert _state(site, queued.deployment) == "exported"
    assert len(list(elsewhere.glob("*.tgb"))) == 1
    assert _export_dirs(site) == []
    if destination == "directory":
        assert not export_dir.exists() or not list(export_dir.glob("*.tgb"))


def test_download_page_names_what_another_process_exported(
    queued: Site2, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part of the work lost to a real ``hub export --agent media-02`` process: the download
    has the rest, and its page says which deployment the other process exported."""
    site, op = queued.site, queued.site.client("op")
    req = request_file(site, queued.tmp, "media-02", "test")
    assert _rows(_upload(site, op, [(req.read_bytes(), req.name)]).get_data(as_text=True)) == {
        req.name: "enrolled"}
    with site.app.app_context():
        release = create_release(site.ctx("dev"), write_release(queued.tmp / "src2",
                                                                version="1.0.1"),
                                 create_missing_product=True)
        submit_release(site.ctx("dev"), release)
        approve_release(site.ctx("appr1"), release)
        deps = queue_deployment(site.ctx("op"), release, "test")
        db.session.commit()
        other = next(d.id for d in deps if d.agent is not None
                     and d.agent.agent_id == "media-02")
    elsewhere = queued.tmp / "cli-usb"
    _lose_the_race(site, monkeypatch, elsewhere, "--agent", "media-02", wrote=1)
    resp = site.post(op, "/media/export", {"environment": "test"})
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/media/exports/")
    page = op.get(resp.headers["Location"]).get_data(as_text=True)
    assert 'id="export-taken"' in page
    assert f"Deployment <a href=\"/deployments/{other}\">{other}</a>: exported by another " \
           "process" in page
    (export_dir,) = _export_dirs(site)
    assert len(list(export_dir.glob("*.tgb"))) == 2  # media-01's two, not media-02's
    assert not list(export_dir.glob("*media-02*"))
    assert len(list(elsewhere.glob("*media-02*.tgb"))) == 1


def test_a_bundle_cut_short_by_its_approvals_is_said_on_the_media_page(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hub export` says when a bundle's approvals cut its expiry short of the one asked;
    the Media page said nothing (only the refusal under an hour): it says the same."""
    cut = int(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())

    def export(ctx: Any, environment: str, out: Path, **_: Any) -> ExportReport:
        return ExportReport(environment, capped=[(7, cut)])

    monkeypatch.setattr(media, "export_environment", export)
    page = site.post(site.client("op"), "/media/export", {"environment": "test"},
                     follow_redirects=True).get_data(as_text=True)
    assert ("Deployment 7: its bundle expires 2030-01-02 03:04:05 UTC, before the 14 days an "
            "export from this page is valid: its release&#39;s approvals stop counting then."
            ) in page
