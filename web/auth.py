"""The ``auth`` blueprint: SAML login and logout, SP metadata, the break-glass login.

Routes:

=====================  ========  ==========================================================
``/login``             GET       start SAML SSO: redirect to the IdP (HTTP-Redirect binding)
``/saml/acs``          POST      the IdP's response (HTTP-POST); CSRF-exempt, see below
``/saml/metadata``     GET       the SP's metadata XML
``/logout``            POST      end the session, then SAML single logout at the IdP
``/saml/sls``          GET       the IdP's LogoutResponse, or an IdP-initiated LogoutRequest
``/logged-out``        GET       the page after logout
``/login/local``       GET/POST  password sign-in: hub users with a password when
                                 ``web.local_login`` is on, and the break-glass account when
                                 ``web.break_glass.enabled`` (404 when both are off)
=====================  ========  ==========================================================

Password sign-ins (local and break-glass) are rate-limited per user name and per source
address (:mod:`web.throttle`): once a limit is reached the password is not even checked
(429). They are audited without flooding the log: a success (``auth.local_login`` /
``auth.break_glass_login``, with the failures before it), the first failure of a window
(``auth.local_login_refused`` / ``auth.break_glass_refused``) and the failure that reaches
a limit (``auth.login_throttled``, with the count and the key). The local sign-in is refused
(403) to a client that is neither on loopback nor on TLS; ``web.init_app`` refuses to start
with it when the hub listens beyond loopback.

A login started here remembers the AuthnRequest ID in a short-lived signed cookie of its
own (``tiangong_saml``, path ``/saml/``; ``SameSite=None; Secure`` when cookies are secure,
because the IdP's POST back is a cross-site request that a ``Lax`` cookie would miss). The
ACS accepts only a response whose ``InResponseTo`` is that ID, signed as
:mod:`web.saml` requires, whose IDs were never processed before (:mod:`web.replay`). That is
why the ACS needs no CSRF token. Refusals show the browser a generic page and log the
reason (``web.auth`` logger).

This module translates; users are created and roles synced by :mod:`web.provisioning`,
sessions handled by :mod:`web.sessions`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user
from itsdangerous import BadSignature, URLSafeTimedSerializer
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers import Response as WerkzeugResponse

from bundle.sync import is_loopback
from hub.db import User, db
from hub.errors import HubError
from hub.services import audit
from web import csrf, throttle
from web.provisioning import identity_from_attributes, sync_saml_user
from web.replay import ReplayCacheFullError, ReplayedError
from web.saml import request_data
from web.sessions import METHOD, current_hub_user, end_session, start_session

__all__ = ["bp"]

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)

STATE_COOKIE = "tiangong_saml"
STATE_MAX_AGE_S = 10 * 60  # seconds a started login may take at the IdP
MAX_ASSERTION_LIFETIME_S = 24 * 3600  # seconds an ID is remembered without NotOnOrAfter
MAX_SAML_RESPONSE_BYTES = 256 * 1024  # bytes of base64 SAMLResponse accepted by the ACS
#: Checked against when the user name is unknown, so that the answer takes as long.
_DUMMY_HASH = generate_password_hash("not a password of anyone")
WRONG = "Wrong user name or password."
REFUSED = (
    "The sign-in could not be verified. Try again, or ask an administrator to check the hub's log."
)


def _web() -> Any:
    return current_app.extensions["tiangong_web"]


def _now() -> datetime:
    now: datetime = _web().clock()
    return now


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt="tiangong-saml-state")


def _set_state(resp: WerkzeugResponse, state: dict[str, str]) -> None:
    secure = _web().config.secure_cookies
    resp.set_cookie(
        STATE_COOKIE,
        _serializer().dumps(state),
        max_age=STATE_MAX_AGE_S,
        path="/saml/",
        secure=secure,
        httponly=True,
        samesite="None" if secure else "Lax",
    )


def _clear_state(resp: WerkzeugResponse) -> None:
    secure = _web().config.secure_cookies
    resp.delete_cookie(
        STATE_COOKIE,
        path="/saml/",
        secure=secure,
        httponly=True,
        samesite="None" if secure else "Lax",
    )


def _read_state() -> dict[str, str]:
    """The state cookie's content (empty when missing, forged or stale); callers delete it."""
    raw = request.cookies.get(STATE_COOKIE)
    if not raw:
        return {}
    try:
        state = _serializer().loads(raw, max_age=STATE_MAX_AGE_S)
    except BadSignature:
        return {}
    return state if isinstance(state, dict) else {}


def _safe_next(target: str | None) -> str:
    """Only local paths: ``/x`` but not ``//host`` or ``/\\host``."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and target.isprintable()
    ):
        return target
    return url_for("home.index")


def _saml_auth() -> OneLogin_Saml2_Auth:
    web = _web()
    if web.saml_settings is None:
        abort(404)
    return OneLogin_Saml2_Auth(request_data(web.config.saml, request), web.saml_settings)


def _refuse(reason: str, status: int = 403) -> Response:
    db.session.rollback()
    log.warning("SAML login refused from %s: %s", request.remote_addr, reason)
    resp = make_response(render_template("auth/error.html", message=REFUSED), status)
    return resp


@bp.get("/login")
def login() -> Any:
    """Redirect to the IdP (or show the sign-in page when SAML is not configured)."""
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    if _web().saml_settings is None:
        if _web().config.local_login:
            return redirect(url_for("auth.local_login", next=_safe_next(request.args.get("next"))))
        return render_template("auth/login.html")
    auth = _saml_auth()
    url = auth.login()  # RelayState is ignored: where to go next is in our signed cookie
    resp = redirect(url)
    _set_state(
        resp, {"rid": auth.get_last_request_id(), "next": _safe_next(request.args.get("next"))}
    )
    return resp


@bp.get("/saml/metadata")
def metadata() -> Any:
    settings = _web().saml_settings
    if settings is None:
        abort(404)
    xml = settings.get_sp_metadata()
    errors = settings.validate_metadata(xml)
    if errors:
        log.error("SP metadata invalid: %s", ", ".join(errors))
        abort(500)
    return Response(xml, mimetype="application/samlmetadata+xml")


@bp.post("/saml/acs")
@csrf.exempt
def acs() -> Any:
    """Verify the IdP's response, provision the user, start the session."""
    state = _read_state()
    refused = _acs(state)
    if refused is not None:
        _clear_state(refused)
        return refused
    target = redirect(state.get("next") or url_for("home.index"))
    _clear_state(target)
    return target


def _acs(state: dict[str, str]) -> Response | None:
    web = _web()
    if web.saml_settings is None:
        abort(404)
    if len(request.form.get("SAMLResponse", "")) > MAX_SAML_RESPONSE_BYTES:
        return _refuse(f"SAMLResponse over {MAX_SAML_RESPONSE_BYTES} bytes", 413)
    request_id = state.get("rid")
    if not request_id:
        return _refuse("no login in progress from this browser (missing or stale state cookie)")
    auth = _saml_auth()
    try:
        auth.process_response(request_id=request_id)
    except Exception as exc:  # python3-saml raises its own errors, lxml's and binascii's
        log.info("SAML response processing failed", exc_info=True)
        return _refuse(f"unreadable SAML response: {type(exc).__name__}: {exc}", 400)
    errors = auth.get_errors()
    if errors or not auth.is_authenticated():
        return _refuse(f"{', '.join(errors)}: {auth.get_last_error_reason()}")
    now = _now()
    not_after = auth.get_last_assertion_not_on_or_after()
    limit = now + timedelta(seconds=MAX_ASSERTION_LIFETIME_S)
    expires = min(datetime.fromtimestamp(not_after, UTC), limit) if not_after is not None else limit
    try:
        web.replay.claim(
            [f"response:{auth.get_last_message_id()}", f"assertion:{auth.get_last_assertion_id()}"],
            expires,
            now,
        )
    except ReplayedError:
        return _refuse(
            f"replayed SAML response {auth.get_last_message_id()} "
            f"(assertion {auth.get_last_assertion_id()})"
        )
    except ReplayCacheFullError as exc:
        return _refuse(str(exc), 503)
    saml = web.config.saml
    try:
        identity = identity_from_attributes(
            auth.get_attributes(), auth.get_nameid(), saml.attributes
        )
        user = sync_saml_user(db.session(), web.clock, identity, saml.group_roles)
        audit.append_event(
            db.session(), now, user.username, "auth.login", "user", user.username,
            {"method": "saml", "groups": list(identity.groups)},
        )  # fmt: skip
        db.session.commit()
    except HubError as exc:
        return _refuse(f"user not accepted: {exc}")
    start_session(
        user,
        "saml",
        nameid=auth.get_nameid(),
        nameid_format=auth.get_nameid_format(),
        nameid_nq=auth.get_nameid_nq(),
        nameid_spnq=auth.get_nameid_spnq(),
        session_index=auth.get_session_index(),
    )
    return None


@bp.post("/logout")
def logout() -> Any:
    """End the session here, then at the IdP (SAML single logout) if it was a SAML one."""
    was_saml = session.get(METHOD) == "saml"
    name = {k: session.get(f"_tg_{k}") for k in ("nameid", "nameid_format", "nameid_nq",
                                                 "nameid_spnq", "session_index")}  # fmt: skip
    user = current_hub_user()
    if user is not None:
        audit.append_event(
            db.session(), _now(), user.username, "auth.logout", "user", user.username,
            {"method": session.get(METHOD)},
        )  # fmt: skip
        db.session.commit()
    end_session()
    settings = _web().saml_settings
    if not was_saml or settings is None or not settings.get_idp_slo_url():
        return redirect(url_for("auth.logged_out"))
    auth = _saml_auth()
    url = auth.logout(
        return_to=None,
        name_id=name["nameid"],
        session_index=name["session_index"],
        nq=name["nameid_nq"],
        name_id_format=name["nameid_format"],
        spnq=name["nameid_spnq"],
    )
    resp = redirect(url)
    _set_state(resp, {"lrid": auth.get_last_request_id()})
    return resp


@bp.get("/saml/sls")
def sls() -> Any:
    """The IdP's answer to our logout, or its own logout request (then answer it)."""
    state = _read_state()
    auth = _saml_auth()
    try:
        url = auth.process_slo(request_id=state.get("lrid"), delete_session_cb=end_session)
    except Exception as exc:  # python3-saml raises its own errors and lxml's
        log.info("SAML logout message processing failed", exc_info=True)
        return _refuse(f"unreadable SAML logout message: {type(exc).__name__}: {exc}", 400)
    errors = auth.get_errors()
    if errors:
        return _refuse(f"logout: {', '.join(errors)}: {auth.get_last_error_reason()}", 400)
    target = redirect(url) if url else redirect(url_for("auth.logged_out"))
    _clear_state(target)
    return target


@bp.get("/logged-out")
def logged_out() -> Any:
    return render_template("auth/logged_out.html")


def _password_login_enabled() -> bool:
    cfg = _web().config
    return bool(cfg.local_login or cfg.break_glass.enabled)


def _transport_ok() -> bool:
    """A password may travel only over TLS or within this machine."""
    return request.is_secure or is_loopback(request.remote_addr or "")


def _login_page(status: int = 200, error: str = "") -> Any:
    return render_template("auth/local_login.html", error=error,
                           local_login=_web().config.local_login), status


def _verify(username: str, password: str) -> tuple[User | None, str]:
    """The user whose password this is (or None), and the method: ``break_glass`` for the
    configured break-glass account, else ``local``. Always runs one hash check."""
    cfg = _web().config
    bg = cfg.break_glass
    if bg.enabled and username == bg.username:
        user = db.session.scalar(select(User).where(User.username == bg.username))
        ok = check_password_hash(bg.password_hash, password)
        good = ok and user is not None and user.source == "local" and user.is_active
        return (user if good else None), "break_glass"
    user = db.session.scalar(select(User).where(User.username == username)) if username else None
    stored = user.password_hash if user is not None and cfg.local_login else None
    ok = check_password_hash(stored or _DUMMY_HASH, password) and stored is not None
    if not ok or user is None or not user.is_active:
        return None, "local"
    return user, "local"


def _record_failure(keys: list[str], now: datetime, actor: str, action: str, username: str,
                    address: str) -> None:
    """Count a failed sign-in and audit the first of its window and the one that reaches a
    limit, in one transaction. Two hub processes counting the first failure of the same key
    at once both insert its row: the loser rolls back and counts again on the winner's."""
    limits = _web().config.login_limits
    for attempt in range(2):
        try:
            for failure in throttle.record_failure(db.session(), keys, now, limits):
                if failure.first and failure.key == keys[0]:
                    audit.append_event(
                        db.session(), now, actor, f"{action}_refused", "user", username,
                        {"given_username": username, "remote_addr": address,
                         "note": "first failure in this window; later ones are counted"},
                    )  # fmt: skip
                if failure.now_blocked:
                    audit.append_event(
                        db.session(), now, actor, "auth.login_throttled", "user", username,
                        {"key": failure.key, "failures": failure.failures,
                         "window_s": limits.window_s, "remote_addr": address},
                    )  # fmt: skip
            db.session.commit()
            return
        except IntegrityError:
            db.session.rollback()
            if attempt:
                raise


@bp.route("/login/local", methods=["GET", "POST"])
def local_login() -> Any:
    """Password sign-in (local users and break-glass), rate-limited and audited."""
    web = _web()
    if not _password_login_enabled():
        abort(404)
    plain = "Password sign-in is only offered over TLS or on this machine."
    if request.method == "GET":
        if not web.config.break_glass.enabled and not _transport_ok():
            return _login_page(403, plain)
        return _login_page()
    username = request.form.get("username", "").strip()[:64]
    bg = web.config.break_glass
    if not (bg.enabled and username == bg.username) and not _transport_ok():
        return _login_page(403, plain)
    password = request.form.get("password", "")[:1024]
    now = _now()
    limits = web.config.login_limits
    address = request.remote_addr or "unknown"
    keys = [throttle.user_key(username), throttle.address_key(address)]
    wait = throttle.blocked_for(db.session(), keys, now, limits)
    if wait:
        log.warning("password sign-in for %r from %s refused: too many failures (%d s left)",
                    username, address, wait)
        return _login_page(429, f"Too many failed sign-ins for this user name or from this "
                                f"address; try again in {(wait + 59) // 60} minute(s).")
    user, method = _verify(username, password)
    action = "auth.break_glass" if method == "break_glass" else "auth.local"
    actor = username if method == "break_glass" else "anonymous"
    if user is None:
        _record_failure(keys, now, actor, action, username, address)
        log.warning("%s sign-in refused for %r from %s", method, username, address)
        return _login_page(403, WRONG)
    before = throttle.clear(db.session(), keys[0], now, limits)
    audit.append_event(
        db.session(), now, user.username, f"{action}_login", "user", user.username,
        {"remote_addr": address, "failures_before": before},
    )  # fmt: skip
    db.session.commit()
    log.warning("%s sign-in by %s from %s", method, user.username, address)
    start_session(user, method)
    return redirect(_safe_next(request.args.get("next")))
