"""The page scaffold: sign-in redirect, navigation, and error pages from domain errors."""

from __future__ import annotations

import pytest

from tests.web.pages import PEOPLE, Site

AREAS = ("releases", "environments", "agents", "deployments", "media", "audit", "admin")


@pytest.mark.parametrize("area", AREAS)
def test_pages_need_a_signed_in_user(site: Site, area: str) -> None:
    resp = site.client(None).get(f"/{area}/")
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith(f"/login?next=/{area}/")


def test_navigation_lists_every_area_for_an_admin(site: Site) -> None:
    page = site.client("admin").get("/").get_data(as_text=True)
    for area in AREAS:
        assert f'href="/{area}/"' in page


@pytest.mark.parametrize("who", [*PEOPLE, "admin"])
def test_navigation_shows_exactly_the_pages_one_can_open(site: Site, who: str) -> None:
    c = site.client(who)
    nav = c.get("/").get_data(as_text=True).split('class="mainnav"', 1)[1].split("</nav>")[0]
    for area in AREAS:
        status = c.get(f"/{area}/").status_code
        shown = f'href="/{area}/"' in nav
        assert shown == (status == 200), f"{who}: /{area}/ answers {status}, shown={shown}"


def test_post_without_csrf_token_is_refused(site: Site) -> None:
    c = site.client("admin")
    resp = c.post("/logout", data={})
    assert resp.status_code == 400
    assert "CSRF" in resp.get_data(as_text=True)


def test_unknown_page_is_a_404_page(site: Site) -> None:
    resp = site.client("view").get("/releases/no-such-thing/at-all")
    assert resp.status_code == 404
    assert "Not found" in resp.get_data(as_text=True)


def test_favicon_is_served_locally(site: Site) -> None:
    c = site.client(None)
    resp = c.get("/favicon.ico")
    assert resp.status_code == 301
    with c.get(resp.headers["Location"]) as icon:
        assert icon.status_code == 200 and b"<svg" in icon.data
    assert 'rel="icon"' in c.get("/").get_data(as_text=True)


def test_content_security_policy(site: Site) -> None:
    """No inline script or style, no <base> rewriting links, no plugins, forms only to the
    hub, never framed."""
    for c in (site.client(None), site.client("view")):
        csp = c.get("/").headers["Content-Security-Policy"]
        directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
        assert directives["default-src"] == ["'self'"]
        assert directives["base-uri"] == ["'none'"]
        assert directives["object-src"] == ["'none'"]
        assert directives["form-action"] == ["'self'"]  # no IdP configured here
        assert directives["frame-ancestors"] == ["'none'"]
        assert "unsafe-inline" not in csp
