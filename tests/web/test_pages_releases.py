"""The releases pages: list, upload (good and bad archives), view, files, diff, submit,
approve and reject, with who may do what and no cross-environment leak."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from hub.app import hub_config
from hub.db import AuditEvent, Product, Release, db
from hub.services.approvals import approve_release
from hub.services.releases import create_release, get_release, submit_release
from hub.services.users import create_user, grant_role
from tests.hub.conftest import write_release
from tests.web.pages import Site, make_site

SQL_RELEASE = """format = 1

[release]
product = "billing"
version = "{version}"
description = "schema"

[[steps]]
name = "schema"
kind = "sql"
engine = "postgres"
connection = "billing-db"
script = "sql/001.sql"

[[steps]]
name = "config"
kind = "k8s"
connection = "cluster"
manifests = ["k8s/config.yaml"]
"""


def tgz(src: Path) -> bytes:
    """A .tar.gz of ``src`` with its directory as the single top-level folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname=src.name)
    return buf.getvalue()


def hello_tgz(tmp: Path, version: str = "1.0.0", **kw: Any) -> bytes:
    return tgz(write_release(tmp / f"src-{version}", version=version, **kw))


def billing_dir(tmp: Path, version: str, sql: str) -> Path:
    root = tmp / f"billing-{version}"
    (root / "sql").mkdir(parents=True)
    (root / "k8s").mkdir()
    (root / "sql" / "001.sql").write_text(sql)
    (root / "k8s" / "config.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
    (root / "release.toml").write_text(SQL_RELEASE.format(version=version))
    return root


def upload(site: Site, c: FlaskClient, data: bytes, name: str) -> Any:
    return site.post(c, "/releases/upload", {"archive": (io.BytesIO(data), name)},
                     content_type="multipart/form-data")


def counts(site: Site) -> tuple[int, int, int]:
    with site.app.app_context():
        s = db.session
        return (s.scalar(select(func.count()).select_from(Product)) or 0,
                s.scalar(select(func.count()).select_from(Release)) or 0,
                s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def stored(site: Site) -> list[str]:
    d = hub_config(site.app).releases_dir
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def make_release(site: Site, tmp: Path, author: str = "dev", version: str = "1.0.0",
                 submit: bool = True, approvers: tuple[str, ...] = ()) -> None:
    with site.app.app_context():
        rel = create_release(site.ctx(author), write_release(tmp / f"r-{version}", version=version),
                             create_missing_product=True)
        if submit:
            submit_release(site.ctx(author), rel)
        for who in approvers:
            approve_release(site.ctx(who), rel)
        db.session.commit()


def text(resp: Any) -> str:
    return str(resp.get_data(as_text=True))


# --- list and upload ---------------------------------------------------------------------


def test_list_shows_products_and_releases_to_any_grant(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    for who in ("view", "view-test", "dev", "appr-prod"):
        page = site.client(who).get("/releases/")
        assert page.status_code == 200, who
        assert 'id="releases-table"' in text(page) and 'data-release="hello/1.0.0"' in text(page)
    assert site.client("nobody").get("/releases/").status_code == 403
    assert site.client("nobody").get("/releases/hello/1.0.0").status_code == 404


def test_upload_form_only_for_those_who_may_create(site: Site) -> None:
    assert 'id="upload-form"' in text(site.client("dev").get("/releases/"))
    assert 'id="upload-form"' not in text(site.client("view").get("/releases/"))
    assert 'id="upload-form"' not in text(site.client("appr1").get("/releases/"))


def test_developer_uploads_archive_and_gets_a_draft(site: Site, tmp_path: Path) -> None:
    c = site.client("dev")
    resp = upload(site, c, hello_tgz(tmp_path), "hello-1.0.0.tgz")
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/releases/hello/1.0.0"
    page = text(c.get("/releases/hello/1.0.0"))
    assert "Created draft release hello 1.0.0 from hello-1.0.0.tgz" in page
    assert 'id="release-state">draft' in page
    assert 'data-step="greet"' in page and 'data-file="step0.sh"' in page
    assert 'id="submit-button"' in page
    assert 'id="approve-button"' not in page
    with site.app.app_context():
        rel = get_release(db.session(), "hello", "1.0.0")
        assert rel.author.username == "dev" and rel.state == "draft"
    assert not [n for n in stored(site) if n.startswith(".")], stored(site)


def test_viewer_upload_is_refused_and_nothing_created(site: Site, tmp_path: Path) -> None:
    before = counts(site)
    resp = upload(site, site.client("view"), hello_tgz(tmp_path), "hello-1.0.0.tgz")
    assert resp.status_code == 403
    assert "may not release.create" in text(resp)
    assert counts(site) == before
    assert stored(site) == []


def _symlink_tgz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("rel/release.toml")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    return buf.getvalue()


def _traversal_tgz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"boom\n"
        info = tarfile.TarInfo("../evil.sh")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _bad_toml_tgz(tmp: Path) -> bytes:
    root = write_release(tmp / "bad")
    (root / "release.toml").write_text('format = 1\n[release]\nproduct = "hello"\n')
    return tgz(root)


BAD_UPLOADS = [
    ("not-an-archive.tgz", lambda tmp: b"just some text\n", "not a release archive"),
    ("notes.txt", lambda tmp: b"hello\n", "not a release archive"),
    ("link.tgz", lambda tmp: _symlink_tgz(), "is a symbolic link"),
    ("escape.tgz", lambda tmp: _traversal_tgz(), ".."),
    ("bad-toml.tgz", _bad_toml_tgz, "version is missing"),
    ("norel.zip", lambda tmp: _no_release_toml(), "the archive norel.zip: no release.toml"),
]


@pytest.mark.parametrize(("name", "make", "reason"), BAD_UPLOADS,
                         ids=[b[0] for b in BAD_UPLOADS])
def test_bad_archive_is_a_clear_400_and_nothing_is_created(
    site: Site, tmp_path: Path, name: str, make: Any, reason: str
) -> None:
    before = counts(site)
    resp = upload(site, site.client("dev"), make(tmp_path), name)
    page = text(resp)
    assert resp.status_code == 400, page
    assert f'id="upload-file">{name}<' in page
    assert reason in page, page[page.find("upload-error"):][:400]
    assert str(site.data_dir) not in page  # no server paths
    assert 'id="upload-form"' in page  # try again right there
    assert counts(site) == before
    assert stored(site) == []


def test_missing_file_field_is_400(site: Site) -> None:
    resp = site.post(site.client("dev"), "/releases/upload", {},
                     content_type="multipart/form-data")
    assert resp.status_code == 400
    assert "choose a release archive" in text(resp)


def test_upload_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    with make_site(tmp_path, max_upload_bytes=2048) as site:  # [web] max_upload_bytes
        before = counts(site)
        resp = upload(site, site.client("dev"), b"\0" * 4096, "big.tgz")
        assert resp.status_code == 413
        assert "larger than the limit of 2 KiB (2048 bytes)" in text(resp)
        assert counts(site) == before and stored(site) == []


def _no_release_toml() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("rel/steps.sh", "echo hi\n")
    return buf.getvalue()


BOMB_BYTES = 16 * 1024**2  # bytes of zeros: ~16 KiB deflated, over 1000 times that unpacked


def _zip_bomb(tmp: Path) -> bytes:
    root = write_release(tmp / "zb", product="bomb", version="1.0.0")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(root).as_posix())
        z.writestr("data/zeros.bin", bytes(BOMB_BYTES))
    return buf.getvalue()


def _tar_bomb(tmp: Path) -> bytes:
    root = write_release(tmp / "tb", product="bomb", version="1.0.0")
    (root / "data").mkdir()
    (root / "data" / "zeros.bin").write_bytes(bytes(BOMB_BYTES))
    return tgz(root)


@pytest.mark.parametrize(("name", "make"), [("bomb.zip", _zip_bomb), ("bomb.tgz", _tar_bomb)])
def test_bombs_are_refused_by_the_ratio_cap_before_anything_is_written(
    site: Site, tmp_path: Path, name: str, make: Any
) -> None:
    """A small archive declaring 16 MiB is refused at the member's declared size (default
    ``[web] max_unpack_ratio = 100``): a 400 naming the setting, no path of the hub's,
    nothing created, nothing left in the releases directory."""
    data = make(tmp_path)
    assert len(data) * 100 < BOMB_BYTES
    before = counts(site)
    resp = upload(site, site.client("dev"), data, name)
    page = text(resp)
    assert resp.status_code == 400, page
    assert "data/zeros.bin&#39;: at most 100 times the archive" in page
    assert "hub.toml [web] max_unpack_ratio" in page
    assert str(site.data_dir) not in page and "/tmp" not in page
    assert counts(site) == before and stored(site) == []


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("max_unpacked_file_bytes", 10, "hub.toml [web] max_unpacked_file_bytes"),
    ("max_unpacked_total_bytes", 20, "hub.toml [web] max_unpacked_total_bytes"),
    ("max_unpacked_files", 2, "hub.toml [web] max_unpacked_files"),
])
def test_every_unpack_cap_is_a_hub_toml_setting(
    tmp_path: Path, setting: str, value: int, says: str
) -> None:
    with make_site(tmp_path, **{setting: value}) as site:
        before = counts(site)
        resp = upload(site, site.client("dev"), hello_tgz(tmp_path), "hello-1.0.0.tgz")
        page = text(resp)
        assert resp.status_code == 400 and says in page, page[page.find("upload-error"):][:300]
        assert counts(site) == before and stored(site) == []


def test_same_version_again_is_409_naming_it(site: Site, tmp_path: Path) -> None:
    c = site.client("dev")
    assert upload(site, c, hello_tgz(tmp_path), "a.tgz").status_code == 302
    before = counts(site)
    resp = upload(site, c, hello_tgz(tmp_path / "again"), "b.tgz")
    assert resp.status_code == 409
    assert "release hello 1.0.0 already exists" in text(resp)
    assert counts(site) == before


# --- files and highlighting --------------------------------------------------------------


def test_files_are_highlighted_without_inline_styles(site: Site, tmp_path: Path) -> None:
    c = site.client("dev")
    src = billing_dir(tmp_path, "1.0.0", "CREATE TABLE invoices (id int);\n")
    assert upload(site, c, tgz(src), "billing.tgz").status_code == 302
    sql = text(c.get("/releases/billing/1.0.0/files/sql/001.sql"))
    assert 'class="highlight"' in sql and "invoices" in sql
    assert '<span class="k">CREATE</span>' in sql
    assert "style=" not in sql
    assert "highlight.css" in sql
    yaml = text(c.get("/releases/billing/1.0.0/files/k8s/config.yaml"))
    assert 'class="highlight"' in yaml and "ConfigMap" in yaml
    toml = c.get("/releases/billing/1.0.0/files/release.toml")
    assert toml.status_code == 200 and "billing-db" in text(toml)


@pytest.mark.parametrize("name", ["../../../etc/passwd", "sql/002.sql", "nothing"])
def test_only_recorded_files_can_be_read(site: Site, tmp_path: Path, name: str) -> None:
    make_release(site, tmp_path)
    assert site.client("view").get(f"/releases/hello/1.0.0/files/{name}").status_code == 404


def test_changed_stored_file_is_flagged(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    with site.app.app_context():
        rel = get_release(db.session(), "hello", "1.0.0")
        path = Path(rel.stored_path) / "step0.sh"
    path.write_text("rm -rf /\n")
    page = text(site.client("view").get("/releases/hello/1.0.0/files/step0.sh"))
    assert 'id="digest-mismatch"' in page


def test_diff_against_previous_release(site: Site, tmp_path: Path) -> None:
    c = site.client("dev")
    assert upload(site, c, tgz(billing_dir(tmp_path / "a", "1.0.0", "SELECT 1;\n")),
                  "a.tgz").status_code == 302
    assert upload(site, c, tgz(billing_dir(tmp_path / "b", "1.1.0", "SELECT 2;\n")),
                  "b.tgz").status_code == 302
    first = text(c.get("/releases/billing/1.0.0/diff"))
    assert 'id="first-release"' in first
    assert 'id="diff-link"' in text(c.get("/releases/billing/1.1.0"))
    page = text(c.get("/releases/billing/1.1.0/diff"))
    assert "Changes from 1.0.0 to 1.1.0" in page
    assert "sql/001.sql" in page and 'class="highlight"' in page
    assert "SELECT 2" in page and "style=" not in page
    same = text(c.get("/releases/billing/1.1.0/diff?against=1.1.0"))
    assert 'id="no-changes"' in same


# --- submit, approve, reject -------------------------------------------------------------


def test_submit_by_developer_and_refused_for_viewer(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path, submit=False)
    assert site.post(site.client("view"), "/releases/hello/1.0.0/submit").status_code == 403
    assert 'id="submit-button"' not in text(site.client("view").get("/releases/hello/1.0.0"))
    c = site.client("dev")
    resp = site.post(c, "/releases/hello/1.0.0/submit")
    assert resp.status_code == 302
    page = text(c.get("/releases/hello/1.0.0"))
    assert "Submitted release hello 1.0.0" in page and 'id="release-state">submitted' in page
    assert 'id="submit-button"' not in page
    assert site.post(c, "/releases/hello/1.0.0/submit").status_code == 409


def test_author_cannot_approve_own_release(site: Site, tmp_path: Path) -> None:
    with site.app.app_context():
        create_user(site.ctx("admin"), "alice")
        grant_role(site.ctx("admin"), "alice", "developer")
        grant_role(site.ctx("admin"), "alice", "approver")
        db.session.commit()
    make_release(site, tmp_path, author="alice")
    c = site.client("alice")
    page = text(c.get("/releases/hello/1.0.0"))
    assert 'id="approve-button"' not in page and 'id="author-cannot-approve"' in page
    resp = site.post(c, "/releases/hello/1.0.0/approve", {"comment": "lgtm"})
    assert resp.status_code == 409
    assert "alice is its author and cannot approve it" in text(resp)
    with site.app.app_context():
        assert get_release(db.session(), "hello", "1.0.0").approvals == []


def test_developer_without_approver_role_is_refused(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    c = site.client("dev")
    assert 'id="approve-button"' not in text(c.get("/releases/hello/1.0.0"))
    resp = site.post(c, "/releases/hello/1.0.0/approve", {"comment": "mine"})
    assert resp.status_code == 403
    assert "may not release.approve" in text(resp)


def test_approver_approves_with_comment_and_it_is_shown(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    c = site.client("appr1")
    page = text(c.get("/releases/hello/1.0.0"))
    assert 'id="approve-button"' in page and 'id="reject-button"' in page
    resp = site.post(c, "/releases/hello/1.0.0/approve", {"comment": "checked the script"})
    assert resp.status_code == 302
    page = text(site.client("view").get("/releases/hello/1.0.0"))
    assert 'id="release-state">approved' in page
    assert 'data-approver="appr1"' in page and "checked the script" in page
    assert "every environment" in page and "2026-11-23" in page
    assert 'id="approve-button"' not in page  # a viewer gets no button
    # appr1 decided globally: no second button for them
    assert 'id="approve-button"' not in text(c.get("/releases/hello/1.0.0"))


def test_environment_approver_approves_only_there(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    c = site.client("appr-prod")
    page = text(c.get("/releases/hello/1.0.0"))
    assert '<option value="prod">prod</option>' in page
    assert '<option value="">' not in page and '<option value="test">' not in page
    assert site.post(c, "/releases/hello/1.0.0/approve",
                     {"environment": ""}).status_code == 403
    assert site.post(c, "/releases/hello/1.0.0/approve",
                     {"environment": "test"}).status_code == 404  # test is not appr-prod's
    assert site.post(c, "/releases/hello/1.0.0/approve",
                     {"environment": "prod", "comment": "prod ok"}).status_code == 302
    # the prod approval is prod's data: a viewer of test only does not see it
    leak = text(site.client("view-test").get("/releases/hello/1.0.0"))
    assert "appr-prod" not in leak and "prod ok" not in leak
    assert 'data-approver="appr-prod"' in text(site.client("view").get("/releases/hello/1.0.0"))


def test_reject_needs_a_comment_and_is_final(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    c = site.client("appr2")
    resp = site.post(c, "/releases/hello/1.0.0/reject", {"comment": "  "})
    assert resp.status_code == 400 and "needs a comment" in text(resp)
    assert site.post(c, "/releases/hello/1.0.0/reject",
                     {"comment": "step is unsafe"}).status_code == 302
    page = text(c.get("/releases/hello/1.0.0"))
    assert 'id="release-state">rejected' in page and "step is unsafe" in page
    assert 'id="approve-button"' not in page
    assert site.post(site.client("appr1"), "/releases/hello/1.0.0/approve").status_code == 409


def test_unknown_release_and_product_are_404(site: Site) -> None:
    c = site.client("view")
    assert c.get("/releases/nope/1.0").status_code == 404
    assert c.get("/releases/?product=nope").status_code == 404


def test_diff_names_large_changed_files_without_comparing(site: Site, tmp_path: Path) -> None:
    big_a = "SELECT 1;\n" * 20_000  # 200 000 bytes, over the line-by-line cap
    big_b = big_a + "SELECT 2;\n"
    c = site.client("dev")
    assert upload(site, c, tgz(billing_dir(tmp_path / "a", "1.0.0", big_a)),
                  "a.tgz").status_code == 302
    assert upload(site, c, tgz(billing_dir(tmp_path / "b", "1.1.0", big_b)),
                  "b.tgz").status_code == 302
    page = text(c.get("/releases/billing/1.1.0/diff"))
    assert "sql/001.sql" in page and "Not compared line by line" in page
    assert c.get("/releases/billing/1.1.0/diff?against=9.9").status_code == 404


def test_global_approver_may_choose_every_environment_or_one(site: Site,
                                                            tmp_path: Path) -> None:
    make_release(site, tmp_path)
    page = text(site.client("appr2").get("/releases/hello/1.0.0"))
    for option in ('<option value="">every environment</option>',
                   '<option value="prod">prod</option>', '<option value="test">test</option>'):
        assert option in page
    # a test-only viewer's page names no other environment, not even in the form
    page = text(site.client("view-test").get("/releases/hello/1.0.0"))
    assert not re.search(r"\bprod\b", page)


def test_zip_archive_is_accepted(site: Site, tmp_path: Path) -> None:
    src = write_release(tmp_path / "z", version="2.0.0")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(src.rglob("*")):
            z.write(f, f.relative_to(src).as_posix())
    resp = upload(site, site.client("dev"), buf.getvalue(), "hello-2.0.0.zip")
    assert resp.status_code == 302 and resp.headers["Location"] == "/releases/hello/2.0.0"


# --- deploy (queue) ----------------------------------------------------------------------


def _deployments(site: Site) -> list[tuple[str, str]]:
    from hub.db import Deployment

    with site.app.app_context():
        return [(d.environment.name, d.state) for d in db.session.scalars(select(Deployment))]


def test_operator_queues_an_approved_release(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path, approvers=("appr1",))
    c = site.client("op")
    page = text(c.get("/releases/hello/1.0.0"))
    assert 'id="queue-form"' in page
    # prod needs two approvals: it is offered (the operator may queue there) but refused
    resp = site.post(c, "/releases/hello/1.0.0/queue", {"environment": "prod"})
    assert resp.status_code == 409
    assert "requires 2" in text(resp)
    assert _deployments(site) == []
    resp = site.post(c, "/releases/hello/1.0.0/queue", {"environment": "test"})
    assert resp.status_code == 302
    assert _deployments(site) == [("test", "queued")]
    # queueing the same release again for the same target is refused, nothing added
    resp = site.post(c, "/releases/hello/1.0.0/queue", {"environment": "test"})
    assert resp.status_code == 409
    assert _deployments(site) == [("test", "queued")]


def test_queue_is_offered_and_allowed_only_where_the_operator_has_a_grant(
        site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path, approvers=("appr1", "appr2"))
    c = site.client("op-test")
    page = text(c.get("/releases/hello/1.0.0"))
    assert '<option value="test">' in page and '<option value="prod">' not in page
    assert site.post(c, "/releases/hello/1.0.0/queue", {"environment": "prod"}).status_code in (
        403, 404)
    for who in ("dev", "appr1", "view"):
        who_c = site.client(who)
        assert 'id="queue-form"' not in text(who_c.get("/releases/hello/1.0.0"))
        resp = site.post(who_c, "/releases/hello/1.0.0/queue", {"environment": "test"})
        assert resp.status_code == 403
    assert _deployments(site) == []


def test_a_release_not_yet_approved_cannot_be_queued(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    c = site.client("op")
    assert 'id="queue-form"' not in text(c.get("/releases/hello/1.0.0"))
    resp = site.post(c, "/releases/hello/1.0.0/queue", {"environment": "test"})
    assert resp.status_code == 409 and "only an approved release" in text(resp)
    resp = site.post(c, "/releases/hello/1.0.0/queue", {})
    assert resp.status_code == 400
    assert _deployments(site) == []


def test_the_release_page_says_whether_each_step_can_be_undone(site: Site,
                                                                tmp_path: Path) -> None:
    make_release(site, tmp_path)  # one shell step without a rollback script

    page = text(site.client("view").get("/releases/hello/1.0.0"))

    assert ('<p class="undo">undo: no (a shell step without a rollback script cannot be '
            'undone)</p>') in page
