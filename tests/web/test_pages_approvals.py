"""The web side of signed approvals: "My keys" (upload a .pub, revoke with a reason), an
uploaded approval file, the bytes a browser signs and the signature it posts; each refusal
is a message on the page and changes nothing. The real browser signing is in
test_browser_approval.py."""

from __future__ import annotations

import base64
import io
from html import unescape
from pathlib import Path

from sqlalchemy import func, select

from hub.db import Approval, ApproverKey, AuditEvent, db
from hub.services.approvals import approval_request
from hub.services.releases import get_release
from signing.approvals import ApprovalDocument, sign_approval
from signing.envelope import TYPE_APPROVAL, pae
from signing.keys import SigningKey
from tests.hub.services.approval_helpers import private_file, public_file
from tests.web.pages import Site
from tests.web.test_pages_releases import make_release

URL = "/releases/hello/1.0.0"


def _state(site: Site) -> tuple[int, int, int]:
    with site.app.app_context():
        s = db.session()
        out = tuple(int(s.scalar(select(func.count()).select_from(t)) or 0)
                    for t in (AuditEvent, ApproverKey, Approval))
        db.session.remove()
        return out  # type: ignore[return-value]


def _upload(site: Site, who: str, url: str, field: str, data: bytes, name: str) -> str:
    c = site.client(who)
    resp = site.post(c, url, {field: (io.BytesIO(data), name)},
                     content_type="multipart/form-data")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return unescape(c.get(resp.headers["Location"]).get_data(as_text=True))


def test_my_keys_register_and_revoke(site: Site) -> None:
    key = SigningKey.generate()
    page = _upload(site, "appr1", "/me/keys", "public_key", public_file(key, label="laptop"),
                   "appr1.key.pub")
    assert f"Approver key {key.key_id} registered to you." in page
    assert f'data-key="{key.key_id}"' in page and "laptop" in page
    before = _state(site)
    # the private file, or the same key again: refused on the page, nothing changes
    page = _upload(site, "appr1", "/me/keys", "public_key", private_file(key), "appr1.key")
    assert "Key not registered: appr1.key is a private key file" in page
    page = _upload(site, "appr2", "/me/keys", "public_key", public_file(key), "x.pub")
    assert "Key not registered: approver key" in page and "another user's" in page
    assert _state(site) == before
    c = site.client("appr1")
    site.post(c, f"/me/keys/{key.key_id}/revoke", {"reason": "laptop stolen"})
    page = unescape(c.get("/me/keys").get_data(as_text=True))
    assert "revoked" in page and "laptop stolen" in page
    # nobody revokes another user's key from their own page
    assert site.post(site.client("appr2"), f"/me/keys/{key.key_id}/revoke",
                     {"reason": "x"}).status_code == 404


def test_uploaded_approval_file(site: Site, tmp_path: Path) -> None:
    key = SigningKey.generate()
    _upload(site, "appr1", "/me/keys", "public_key", public_file(key), "k.pub")
    make_release(site, tmp_path)
    with site.app.app_context():
        rel = get_release(db.session(), "hello", "1.0.0")
        doc = approval_request(site.ctx("appr1"), rel, environment="prod").document
        db.session.rollback()
    before = _state(site)
    wrong = ApprovalDocument(**{**doc.__dict__, "content_hash": "ab" * 32})
    page = _upload(site, "appr1", f"{URL}/approve-upload", "approval",
                   sign_approval(wrong, key), "approval.json")
    assert "Approval not stored: the approval is for hello 1.0.0 (content hash abab" in page
    assert _state(site) == before
    page = _upload(site, "appr1", f"{URL}/approve-upload", "approval",
                   sign_approval(doc, key), "approval.json")
    assert f"You approved release hello 1.0.0 for prod, signed by key {key.key_id[:16]}" in page
    assert f'data-signed="{key.key_id}"' in page


def test_payload_for_the_browser_and_its_signature(site: Site, tmp_path: Path) -> None:
    key = SigningKey.generate()
    _upload(site, "appr2", "/me/keys", "public_key", public_file(key), "k.pub")
    make_release(site, tmp_path)
    c = site.client("appr2")
    page = c.get(URL).get_data(as_text=True)
    assert 'id="sign-form"' in page and "approve-sign.js" in page
    before = _state(site)
    served = c.get(f"{URL}/approval-payload?environment=test&comment=fine").get_json()
    assert _state(site) == before  # serving the bytes stores nothing
    payload, message = (base64.b64decode(served[k]) for k in ("payload", "message"))
    assert message == pae(TYPE_APPROVAL, payload)
    doc = ApprovalDocument.from_bytes(payload)
    assert (doc.approver, doc.environments, doc.comment) == ("appr2", ("test",), "fine")
    # a signature by a key the user has not registered: refused, nothing stored
    resp = site.post(c, f"{URL}/approve-signed", {
        "payload": served["payload"],
        "signature": base64.b64encode(SigningKey.generate().sign(message)).decode()})
    page = unescape(c.get(resp.headers["Location"]).get_data(as_text=True))
    assert "Approval not stored: the signature does not verify with any approver key" in page
    assert _state(site) == before
    resp = site.post(c, f"{URL}/approve-signed", {
        "payload": served["payload"],
        "signature": base64.b64encode(key.sign(message)).decode()})
    page = unescape(c.get(resp.headers["Location"]).get_data(as_text=True))
    assert "You approved release hello 1.0.0 for test, signed by key" in page
    # the author is never offered the payload
    assert site.client("dev").get(f"{URL}/approval-payload").status_code == 403


def test_environment_page_shows_its_approval_rules(site: Site) -> None:
    from hub.services.approval_rules import set_channel_rule, set_environment_rule

    with site.app.app_context():
        set_environment_rule(site.ctx("admin"), "prod", required=2, min_groups=2,
                             groups=["dba", "ops"])
        set_channel_rule(site.ctx("admin"), "prod", "canary", required=1)
        db.session.commit()
    page = unescape(site.client("view").get("/environments/prod").get_data(as_text=True))
    assert ("this environment: 2 approvals from 2 groups (dba, ops), never the author"
            in page)
    assert "through channel canary: 1 approval, never the author" in page
