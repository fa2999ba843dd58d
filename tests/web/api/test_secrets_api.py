"""The API's site-secret operations: an admin token stores a value that no answer, listing,
audit event or database row holds again; other scopes and people are refused and nothing
changes; an environment the caller may not view is a 404."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from hub.app import hub_config
from hub.db import db
from tests.web.api.conftest import api_for
from tests.web.pages import Site

VALUE = "api-s3cret-Value"


def _stored(site: Site) -> list[Path]:
    with site.app.app_context():
        return sorted((hub_config(site.app).data_dir / "secrets").rglob("*.json"))


def test_secrets_through_the_api(site: Site) -> None:
    reader = api_for(site, "op", ["read", "deploy"])
    refused = reader.post("/environments/test/secrets", 403,
                          json={"name": "db-password", "value": VALUE})
    assert refused["error"] == "insufficient_scope" and _stored(site) == []
    op_admin_scope = api_for(site, "op", ["admin"])
    denied = op_admin_scope.post("/environments/test/secrets", 403,
                                 json={"name": "db-password", "value": VALUE})
    assert "op" in denied["message"] and _stored(site) == []
    admin = api_for(site, "admin", ["admin"])
    bad = admin.post("/environments/test/secrets", 400, json={"name": "../x", "value": VALUE})
    assert "secret name '../x' is not valid" in bad["message"] and _stored(site) == []
    admin.post("/environments/nowhere/secrets", 404, json={"name": "a", "value": VALUE})

    info = admin.post("/environments/test/secrets", 201,
                      json={"name": "db-password", "value": VALUE})
    assert info == {**info, "environment": "test", "name": "db-password", "set_by": "admin"}
    assert VALUE not in str(info)
    listed = reader.get("/environments/test/secrets")["secrets"]
    assert [s["name"] for s in listed] == ["db-password"] and VALUE not in str(listed)
    assert len(_stored(site)) == 1 and VALUE.encode() not in _stored(site)[0].read_bytes()
    with site.app.app_context():
        rows = db.session.execute(text("SELECT details FROM audit_events")).fetchall()
    assert any("db-password" in str(r) for r in rows)
    assert not any(VALUE in str(r) for r in rows)


def test_deleting_a_secret_through_the_api(site: Site) -> None:
    admin = api_for(site, "admin", ["admin"])
    admin.post("/environments/test/secrets", 201, json={"name": "db-password", "value": VALUE})
    stored = _stored(site)
    for api, status, message in (
        (api_for(site, "op", ["read", "deploy"]), 403, "lacks the scope 'admin'"),
        (api_for(site, "op", ["admin"]), 403, "op may not environment.update"),
    ):
        refused = api.call("DELETE", "/environments/test/secrets/db-password", status)
        assert message in refused["message"] and _stored(site) == stored
    admin.call("DELETE", "/environments/nowhere/secrets/db-password", 404)
    admin.call("DELETE", "/environments/test/secrets/other", 404)
    assert _stored(site) == stored
    gone = admin.call("DELETE", "/environments/test/secrets/db-password", 200)
    assert (gone["name"], gone["environment"]) == ("db-password", "test")
    assert VALUE not in str(gone) and _stored(site) == []
    admin.call("DELETE", "/environments/test/secrets/db-password", 404)
    with site.app.app_context():
        rows = db.session.execute(text(
            "SELECT actor FROM audit_events WHERE action = 'secret.deleted'")).fetchall()
    assert [r[0] for r in rows] == ["admin"]
