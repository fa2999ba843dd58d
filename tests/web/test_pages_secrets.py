"""The site-secrets page: an admin stores a value through the form (CSRF), the page lists the
name but never the value; an operator sees no form and is refused; a bad name is refused
and nothing is stored."""

from __future__ import annotations

from html import unescape

from hub.app import hub_config
from tests.web.pages import Site

VALUE = "web-s3cret-Value"


def _stored(site: Site) -> dict[str, bytes]:
    with site.app.app_context():
        folder = hub_config(site.app).data_dir / "secrets"
        return {p.name: p.read_bytes() for p in folder.rglob("*.json")}


def test_admin_stores_a_secret_that_is_never_shown(site: Site) -> None:
    admin = site.client("admin")
    env_page = admin.get("/environments/test").get_data(as_text=True)
    assert 'id="secrets-link"' in env_page
    page = admin.get("/secrets/test").get_data(as_text=True)
    assert 'id="secret-form"' in page and 'id="no-secrets"' in page

    bad = site.post(admin, "/secrets/test", {"name": "../x", "value": VALUE},
                    follow_redirects=True)
    assert "secret name '../x' is not valid" in unescape(bad.get_data(as_text=True))
    assert _stored(site) == {}

    resp = site.post(admin, "/secrets/test", {"name": "db-password", "value": VALUE},
                     follow_redirects=True)
    html = unescape(resp.get_data(as_text=True))
    assert resp.status_code == 200 and "Secret db-password of test stored" in html
    table = html.split('id="secrets-table"')[1].split("</table>")[0]
    assert "db-password" in table and "admin" in table
    stored = _stored(site)
    assert VALUE not in html and list(stored) == ["db-password.json"]

    op = site.client("op")
    page = op.get("/secrets/test").get_data(as_text=True)
    assert "db-password" in page and 'id="secret-form"' not in page
    refused = site.post(op, "/secrets/test", {"name": "db-password", "value": "other"})
    assert refused.status_code == 403
    assert _stored(site) == stored  # unchanged
