"""SAML single sign-on against a real SimpleSAMLphp IdP, the hub served over loopback.

Every refusal also asserts that nothing changed: no session (``/`` shows the sign-in page),
no user created, no grant.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable

import pytest
import requests
from flask import Flask
from lxml import etree
from sqlalchemy import func, select

from hub.db import AuditEvent, User, db
from tests.fixtures.saml_idp import SamlIdP
from tests.web.conftest import HTTP_TIMEOUT_S, form_with, idp_login, post_acs

DS = "http://www.w3.org/2000/09/xmldsig#"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"


def home(http: requests.Session, idp: SamlIdP) -> requests.Response:
    return http.get(f"{idp.sp_base_url}/", timeout=HTTP_TIMEOUT_S)


def assert_signed_out(http: requests.Session, idp: SamlIdP) -> None:
    page = home(http, idp)
    assert page.status_code == 200
    assert "Sign in with single sign-on" in page.text
    assert "Welcome" not in page.text


def user_count(app: Flask) -> int:
    with app.app_context():
        n: int = db.session.scalar(select(func.count()).select_from(User)) or 0
        db.session.remove()
        return n


def refusal_reasons(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name == "web.auth" and "refused" in r.getMessage()
    )


def login(http: requests.Session, idp: SamlIdP, username: str) -> requests.Response:
    answer = idp_login(http, idp.sp_base_url, username, idp.users[username].password)
    resp = post_acs(http, answer)
    assert resp.status_code == 302, resp.text[:500]
    return resp


# ---------------------------------------------------------------------------- metadata


def test_sp_metadata_names_the_endpoints(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP
) -> None:
    resp = browser.get(f"{saml_idp.sp_base_url}/saml/metadata", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/samlmetadata+xml")
    root = etree.fromstring(resp.content)
    assert root.get("entityID") == saml_idp.sp_entity_id
    text = resp.text
    assert f'Location="{saml_idp.sp_base_url}/saml/acs"' in text
    assert f'Location="{saml_idp.sp_base_url}/saml/sls"' in text
    assert 'WantAssertionsSigned="true"' in text


# ---------------------------------------------------------------------------- login


@pytest.mark.parametrize(
    ("username", "roles"),
    [("alice", {"developer"}), ("bob", {"approver"}), ("carol", {"operator"}), ("dave", set())],
)
def test_login_creates_user_with_attributes_and_roles(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, username: str, roles: set[str]
) -> None:
    resp = login(browser, saml_idp, username)
    assert resp.headers["Location"] in ("/", f"{saml_idp.sp_base_url}/")
    page = home(browser, saml_idp)
    expected = saml_idp.users[username]
    assert f"Welcome, {expected.display_name}" in page.text
    assert expected.email in page.text
    with web_app.app_context():
        user = db.session.scalar(select(User).where(User.username == username))
        assert user is not None
        assert (user.source, user.email, user.display_name) == (
            "saml",
            expected.email,
            expected.display_name,
        )
        assert {(g.role, g.environment_id, g.granted_by) for g in user.grants} == {
            (r, None, "saml") for r in roles
        }
        actions = [e.action for e in db.session.scalars(select(AuditEvent))]
        assert actions == ["user.create"] + ["user.grant"] * len(roles) + ["auth.login"]
        db.session.remove()


@pytest.mark.parametrize(
    ("next_url", "location"),
    [
        ("/logged-out?x=1", "/logged-out?x=1"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("/\t/evil.example/", "/"),
        ("https://evil.example/", "/"),
    ],
)
def test_login_returns_to_local_paths_only(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, next_url: str, location: str
) -> None:
    answer = idp_login(browser, saml_idp.sp_base_url, "alice", "alicepass", next_url=next_url)
    resp = post_acs(browser, answer)
    assert resp.status_code == 302
    assert resp.headers["Location"] in (location, saml_idp.sp_base_url + location)


def test_second_login_reuses_the_user(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP
) -> None:
    login(browser, saml_idp, "alice")
    with requests.Session() as other:
        login(other, saml_idp, "alice")
    assert user_count(web_app) == 1


def test_session_cookie_flags(web_app: Flask, browser: requests.Session, saml_idp: SamlIdP) -> None:
    resp = login(browser, saml_idp, "alice")
    cookie = next(
        h for h in resp.raw.headers.getlist("Set-Cookie") if h.startswith("tiangong_session=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # web.secure_cookies = false for plain-http loopback


def test_wrong_password_is_refused_by_the_idp(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP
) -> None:
    answer = idp_login(browser, saml_idp.sp_base_url, "alice", "not-alices-password")
    assert answer.acs_url is None  # the IdP shows its login form again, no SAMLResponse
    assert form_with(answer.page.text, "AuthState") is not None
    assert_signed_out(browser, saml_idp)
    assert user_count(web_app) == 0


def _edit(saml_response: str, change: Callable[[etree._Element], None]) -> str:
    root = etree.fromstring(base64.b64decode(saml_response))
    change(root)
    return base64.b64encode(etree.tostring(root)).decode()


def _change_email(root: etree._Element) -> None:
    values = root.xpath(
        "//saml:Attribute[@Name='email']/saml:AttributeValue", namespaces={"saml": SAML}
    )
    assert values
    values[0].text = "mallory@example.org"


def _strip_signatures(parent_xpath: str) -> Callable[[etree._Element], None]:
    def strip(root: etree._Element) -> None:
        sigs = root.xpath(
            f"{parent_xpath}/ds:Signature", namespaces={"ds": DS, "samlp": SAMLP, "saml": SAML}
        )
        assert sigs, parent_xpath
        for sig in sigs:
            sig.getparent().remove(sig)

    return strip


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(_change_email, "Signature validation failed", id="tampered-attribute"),
        pytest.param(_strip_signatures("//*"), "not signed", id="unsigned"),
        pytest.param(_strip_signatures("/samlp:Response"), "not signed", id="no-response-sig"),
        # The Response signature still verifies nothing: the assertion check comes first.
        pytest.param(
            _strip_signatures("//saml:Assertion"),
            "Assertion of the Response is not signed",
            id="no-assertion-sig",
        ),
    ],
)
def test_forged_responses_are_refused(
    web_app: Flask,
    browser: requests.Session,
    saml_idp: SamlIdP,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[etree._Element], None],
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="web.auth")
    answer = idp_login(browser, saml_idp.sp_base_url, "alice", "alicepass")
    forged = _edit(answer.fields["SAMLResponse"], change)
    resp = post_acs(browser, answer, SAMLResponse=forged)
    assert resp.status_code == 403
    assert "could not be verified" in resp.text
    assert "Signature" not in resp.text  # the browser is not told why
    assert reason in refusal_reasons(caplog)
    assert_signed_out(browser, saml_idp)
    assert user_count(web_app) == 0


def test_replayed_response_is_refused(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="web.auth")
    answer = idp_login(browser, saml_idp.sp_base_url, "alice", "alicepass")
    # An attacker holding the response *and* the browser's login-state cookie.
    stolen_cookies = requests.utils.dict_from_cookiejar(browser.cookies)
    assert post_acs(browser, answer).status_code == 302
    with requests.Session() as attacker:
        requests.utils.add_dict_to_cookiejar(attacker.cookies, stolen_cookies)
        replay = post_acs(attacker, answer)
        assert replay.status_code == 403
        assert "replayed SAML response" in refusal_reasons(caplog)
        assert_signed_out(attacker, saml_idp)
    with web_app.app_context():
        logins = db.session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "auth.login")
        )
        db.session.remove()
    assert logins == 1


def test_same_browser_posting_twice_is_refused(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="web.auth")
    answer = idp_login(browser, saml_idp.sp_base_url, "alice", "alicepass")
    assert post_acs(browser, answer).status_code == 302
    browser.cookies.clear(domain="127.0.0.1", path="/", name="tiangong_session")
    again = post_acs(browser, answer)
    assert again.status_code == 403
    assert "no login in progress" in refusal_reasons(caplog)
    assert_signed_out(browser, saml_idp)


def test_unsolicited_response_is_refused(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, caplog: pytest.LogCaptureFixture
) -> None:
    """A response for a login started in another browser: InResponseTo does not match."""
    caplog.set_level(logging.WARNING, logger="web.auth")
    answer = idp_login(browser, saml_idp.sp_base_url, "alice", "alicepass")
    with requests.Session() as victim:
        victim.get(f"{saml_idp.sp_base_url}/login", timeout=HTTP_TIMEOUT_S)  # its own login
        resp = post_acs(victim, answer)
        assert resp.status_code == 403
        assert "InResponseTo" in refusal_reasons(caplog)
        assert_signed_out(victim, saml_idp)
    assert user_count(web_app) == 0


# ---------------------------------------------------------------------------- logout, CSRF


def _csrf(http: requests.Session, idp: SamlIdP) -> str:
    form = form_with(home(http, idp).text, "csrf_token")
    assert form is not None
    token: str = form["fields"]["csrf_token"]
    return token


def test_logout_ends_the_session_here_and_at_the_idp(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="web.auth")
    login(browser, saml_idp, "alice")
    resp = browser.post(
        f"{saml_idp.sp_base_url}/logout",
        data={"csrf_token": _csrf(browser, saml_idp)},
        timeout=HTTP_TIMEOUT_S,
    )
    # hub -> IdP SingleLogoutService -> hub /saml/sls (signed LogoutResponse) -> /logged-out
    hops = [r.url.split("?")[0] for r in resp.history]
    assert saml_idp.slo_url in hops
    assert hops[-1] == f"{saml_idp.sp_base_url}/saml/sls"
    assert resp.url == f"{saml_idp.sp_base_url}/logged-out"
    assert "You have been signed out" in resp.text
    assert refusal_reasons(caplog) == ""
    assert_signed_out(browser, saml_idp)
    # The IdP session is gone too: a new login asks for the password again.
    page = browser.get(f"{saml_idp.sp_base_url}/login", timeout=HTTP_TIMEOUT_S)
    assert form_with(page.text, "AuthState") is not None


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_post_without_valid_csrf_token_is_refused(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, token: str | None
) -> None:
    login(browser, saml_idp, "alice")
    data = {} if token is None else {"csrf_token": token}
    resp = browser.post(
        f"{saml_idp.sp_base_url}/logout", data=data, allow_redirects=False, timeout=HTTP_TIMEOUT_S
    )
    assert resp.status_code == 400
    assert "Welcome" in home(browser, saml_idp).text  # still signed in: nothing happened


def test_idp_initiated_logout_ends_the_session(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="web.auth")
    login(browser, saml_idp, "alice")
    resp = browser.get(
        f"{saml_idp.base_url}/saml2/idp/initSLO.php",
        params={"RelayState": f"{saml_idp.sp_base_url}/logged-out"},
        timeout=HTTP_TIMEOUT_S,
    )
    hops = [r.url.split("?")[0] for r in resp.history]
    assert f"{saml_idp.sp_base_url}/saml/sls" in hops  # the IdP's signed LogoutRequest
    assert refusal_reasons(caplog) == ""
    assert_signed_out(browser, saml_idp)


def test_forged_logout_request_is_refused(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP, caplog: pytest.LogCaptureFixture
) -> None:
    """An unsigned LogoutRequest (another site forcing a logout) changes nothing."""
    caplog.set_level(logging.WARNING, logger="web.auth")
    login(browser, saml_idp, "alice")
    xml = (
        f'<samlp:LogoutRequest xmlns:samlp="{SAMLP}" xmlns:saml="{SAML}" ID="_forged" '
        f'Version="2.0" IssueInstant="2026-11-23T09:00:00Z" '
        f'Destination="{saml_idp.sp_base_url}/saml/sls">'
        f"<saml:Issuer>{saml_idp.entity_id}</saml:Issuer>"
        "<saml:NameID>alice</saml:NameID></samlp:LogoutRequest>"
    )
    deflated = zlib.compress(xml.encode())[2:-4]
    resp = browser.get(
        f"{saml_idp.sp_base_url}/saml/sls",
        params={"SAMLRequest": base64.b64encode(deflated).decode()},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code == 400
    assert "logout" in refusal_reasons(caplog)
    assert "Welcome" in home(browser, saml_idp).text
