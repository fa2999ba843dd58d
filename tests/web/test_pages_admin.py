"""The admin pages: users with their grants; grant, revoke, deactivate and reactivate (admin
only); refusals explained on the page with nothing changed."""

from __future__ import annotations

from html import unescape

import pytest
from sqlalchemy import func, select

from hub.db import AuditEvent, db
from hub.services.environments import get_environment
from hub.services.users import can, create_user, get_user, grant_role, roles_of
from tests.web.pages import PEOPLE, Site

NOT_ADMINS = tuple(PEOPLE)


def _roles(site: Site, username: str) -> list[tuple[str, str | None]]:
    with site.app.app_context():
        roles = roles_of(get_user(db.session(), username))
        db.session.remove()
        return roles


def _events(site: Site) -> int:
    with site.app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def test_admin_sees_every_user_with_grants(site: Site) -> None:
    with site.app.app_context():
        create_user(site.ctx("admin"), "sam", display_name="Sam Saml", email="sam@example.org",
                    source="saml")
        db.session.commit()
    html = site.client("admin").get("/admin/").get_data(as_text=True)
    for name in (*PEOPLE, "admin", "sam"):
        assert f'data-user="{name}"' in html
    row = html.split('data-user="view-test"', 1)[1].split("</tr>", 1)[0]
    assert "viewer@test" in row
    sam = html.split('data-user="sam"', 1)[1].split("</tr>", 1)[0]
    assert "saml" in sam and "sam@example.org" in sam and "none" in sam


def test_grants_from_saml_groups_are_marked(site: Site) -> None:
    with site.app.app_context():
        grant = grant_role(site.ctx("admin"), "dev2", "approver")
        grant.granted_by = "saml"  # as web.provisioning records a group-mapped role
        db.session.commit()
    page = site.client("admin").get("/admin/users/dev2").get_data(as_text=True)
    row = page.split('data-grant="approver@*"', 1)[1].split("</tr>", 1)[0]
    assert "by saml" in row and "given again at the next login" in row
    other = page.split('data-grant="developer@*"', 1)[1].split("</tr>", 1)[0]
    assert "by admin" in other and "next login" not in other


@pytest.mark.parametrize("who", NOT_ADMINS)
def test_only_admins_manage_users(site: Site, who: str) -> None:
    c = site.client(who)
    assert c.get("/admin/").status_code == 403
    assert c.get("/admin/users/dev").status_code == 403
    before = (_events(site), _roles(site, "dev"))
    assert site.post(c, "/admin/users/dev/grant", {"role": "admin"}).status_code == 403
    assert site.post(c, "/admin/users/dev/revoke", {"role": "developer"}).status_code == 403
    assert site.post(c, "/admin/users/dev/active", {"active": "0"}).status_code == 403
    assert (_events(site), _roles(site, "dev")) == before


def test_unknown_user_is_404(site: Site) -> None:
    c = site.client("admin")
    assert c.get("/admin/users/ghost").status_code == 404
    assert site.post(c, "/admin/users/ghost/grant", {"role": "viewer"}).status_code == 404


def test_grant_and_revoke_global_and_per_environment(site: Site) -> None:
    c = site.client("admin")
    page = c.get("/admin/users/view-test").get_data(as_text=True)
    assert 'id="grant-form"' in page and 'data-grant="viewer@test"' in page
    resp = site.post(c, "/admin/users/view-test/grant", {"role": "operator",
                                                         "environment": "prod"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/admin/users/view-test")
    resp = site.post(c, "/admin/users/view-test/grant", {"role": "auditor", "environment": ""})
    assert resp.status_code == 302
    assert _roles(site, "view-test") == [("auditor", None), ("operator", "prod"),
                                         ("viewer", "test")]
    with site.app.app_context():
        u = get_user(db.session(), "view-test")
        assert can(u, "deployment.queue", get_environment(db.session(), "prod"))
        assert not can(u, "deployment.queue", get_environment(db.session(), "test"))
    page = c.get("/admin/users/view-test").get_data(as_text=True)
    assert "now has role auditor globally" in page
    resp = site.post(c, "/admin/users/view-test/revoke", {"role": "operator",
                                                          "environment": "prod",
                                                          "confirmed": "1"})
    assert resp.status_code == 302
    assert _roles(site, "view-test") == [("auditor", None), ("viewer", "test")]
    # The view-test user now reads the audit log (the grant works at once).
    assert site.client("view-test").get("/audit/").status_code == 200


@pytest.mark.parametrize(
    ("url", "form", "message"),
    [
        ("/admin/users/dev/grant", {"role": "wizard"}, "Not granted: unknown role 'wizard'"),
        ("/admin/users/dev/grant", {"role": "developer"}, "already has role developer"),
        ("/admin/users/dev/grant", {"role": "viewer", "environment": "mars"},
         "environment 'mars' does not exist"),
        ("/admin/users/dev/revoke", {"role": "approver", "confirmed": "1"},
         "dev has no role approver globally"),
        ("/admin/users/admin/revoke", {"role": "admin", "confirmed": "1"},
         "cannot remove the last global admin"),
        ("/admin/users/admin/active", {"active": "0", "confirmed": "1"},
         "you cannot deactivate yourself"),
        ("/admin/users/dev/active", {"active": "maybe"}, "must say active=1"),
    ],
)
def test_refusals_are_explained_and_change_nothing(
    site: Site, url: str, form: dict[str, str], message: str
) -> None:
    c = site.client("admin")
    before = (_events(site), _roles(site, "dev"), _roles(site, "admin"))
    resp = site.post(c, url, form)
    assert resp.status_code == 302
    page = unescape(c.get(resp.headers["Location"]).get_data(as_text=True))
    assert message in page
    assert (_events(site), _roles(site, "dev"), _roles(site, "admin")) == before


def test_deactivate_and_reactivate(site: Site) -> None:
    c = site.client("admin")
    dev = site.client("dev")
    assert dev.get("/releases/").status_code == 200
    resp = site.post(c, "/admin/users/dev/active", {"active": "0", "confirmed": "1"})
    assert resp.status_code == 302
    page = c.get("/admin/users/dev").get_data(as_text=True)
    assert 'id="user-status">deactivated<' in page and 'id="activate-button"' in page
    # The deactivated user is signed out at the next request.
    assert dev.get("/releases/").status_code == 302
    site.post(c, "/admin/users/dev/active", {"active": "1"})
    page = c.get("/admin/users/dev").get_data(as_text=True)
    assert 'id="user-status">active<' in page and 'id="deactivate-button"' in page
    assert site.client("dev").get("/releases/").status_code == 200


def test_admin_page_has_no_self_deactivate_button(site: Site) -> None:
    page = site.client("admin").get("/admin/users/admin").get_data(as_text=True)
    assert 'id="deactivate-button"' not in page


@pytest.mark.parametrize(
    ("url", "form", "question"),
    [
        ("/admin/users/dev/active", {"active": "0"}, "Deactivate dev?"),
        ("/admin/users/dev/revoke", {"role": "developer", "environment": ""},
         "Revoke role developer globally from dev?"),
    ],
)
def test_destructive_changes_ask_for_confirmation(
    site: Site, url: str, form: dict[str, str], question: str
) -> None:
    """The first POST only asks (a page with the same form, confirmed); nothing changes
    until the confirmed POST."""
    c = site.client("admin")
    before = (_events(site), _roles(site, "dev"))
    resp = site.post(c, url, form)
    assert resp.status_code == 200
    page = unescape(resp.get_data(as_text=True))
    assert question in page and 'name="confirmed" value="1"' in page
    assert f'action="{url}"' in page and "<script" not in page
    assert (_events(site), _roles(site, "dev")) == before
    resp = site.post(c, url, {**form, "confirmed": "1"})
    assert resp.status_code == 302
    assert _events(site) == before[0] + 1


def _groups(site: Site, username: str) -> list[str]:
    with site.app.app_context():
        names = get_user(db.session(), username).group_names
        db.session.remove()
        return names


def test_admin_sets_approver_groups(site: Site) -> None:
    c = site.client("admin")
    page = site.post(c, "/admin/users/dev2/groups", {"groups": "dba, ops"})
    assert page.status_code == 302
    assert _groups(site, "dev2") == ["dba", "ops"]
    html = c.get("/admin/users/dev2").get_data(as_text=True)
    assert 'value="dba, ops"' in html and "dev2 is in group(s) dba, ops." in unescape(html)
    before = _events(site)
    site.post(c, "/admin/users/dev2/groups", {"groups": "dba Bad!"})
    html = unescape(c.get("/admin/users/dev2").get_data(as_text=True))
    assert "Groups not changed: group name 'bad!'" not in html  # names are checked as given
    assert "Groups not changed: group name 'Bad!' must be" in html
    assert _groups(site, "dev2") == ["dba", "ops"] and _events(site) == before
    assert site.post(site.client("dev"), "/admin/users/dev2/groups",
                     {"groups": "x"}).status_code == 403
    assert _groups(site, "dev2") == ["dba", "ops"]
