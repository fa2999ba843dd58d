"""The authorization matrix: every page view x every person of the ``site`` fixture.

Built from the app's URL map: every rule of the page blueprints (``web.PAGES``) must have an
entry in :data:`EXPECTED`, so a new view without one fails
:func:`test_every_page_endpoint_is_in_the_matrix`. For each entry:

* GET: the people in ``get`` see the page (200); everyone else signed in is refused (403,
  or the entry's ``denied`` status); a visitor who is not signed in is sent to the sign-in
  page (302 to ``/login?next=...``).
* POST: everyone outside ``post`` is refused with 403 and **nothing changed** (every row
  of every table and the files of the data directory are compared before and after); the
  people in ``post`` are not refused (their POST may still be a 409: the matrix is about
  who may try, the page tests about what happens).
* every POST endpoint (page blueprints and sign-in/out) without the CSRF token: 400, and
  nothing changed.
* no page leaks environment ``prod``'s data (its agent, its name) to people whose only
  grant is on ``test`` (``view-test``, ``op-test``), nor ``test``'s to ``appr-prod``; the
  hidden environment's own pages are refused to them.
* a grant on one environment is worth nothing in another (:data:`SCOPED_POSTS`).

The data the URLs point at is built once per test by :func:`build_world`: a product with an
approved release queued in both environments, a submitted one, a draft and an approved one
queued nowhere, an agent in each environment, and an export of ``test`` waiting for
download. All GETs run on one world (they change nothing); each POST endpoint gets its own.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.db import Base, NotificationOutbox, db
from hub.services.approvals import approve_release
from hub.services.approvers import register_key
from hub.services.channels import subscribe
from hub.services.deployments import queue_deployment
from hub.services.environments import get_environment
from hub.services.exchange import import_directory
from hub.services.notifications import add_email, enqueue
from hub.services.releases import create_release, submit_release
from hub.services.rollouts import start_rollout
from hub.services.tokens import issue_token
from hub.services.windows import add_rule, request_override
from signing.keys import SigningKey
from tests.hub.conftest import write_release
from tests.hub.services.approval_helpers import public_file
from tests.web.pages import PEOPLE, Site, request_file
from web import PAGES
from web.agents import store_response

# ---------------------------------------------------------------------------- who

#: Everyone the matrix signs in as: the fixture's people and its admin.
EVERYONE: tuple[str, ...] = (*PEOPLE, "admin")
#: People with a role on every environment (a global grant).
GLOBAL = frozenset(u for u, grants in PEOPLE.items() if any("@" not in g for g in grants)) | {
    "admin"
}
#: People with any grant at all.
ANY_GRANT = frozenset(u for u, grants in PEOPLE.items() if grants) | {"admin"}
SIGNED_IN = frozenset(EVERYONE)
ADMIN = frozenset({"admin"})


def having(*roles: str, env: str | None = None) -> frozenset[str]:
    """The people holding one of ``roles`` globally (or on ``env``), and admin."""
    out = {"admin"}
    for user, grants in PEOPLE.items():
        for grant in grants:
            role, _, scope = grant.partition("@")
            if role in roles and (not scope or scope == env):
                out.add(user)
    return frozenset(out)


#: Who may view environment ``test`` (and what is in it).
VIEW_TEST = GLOBAL | {u for u, grants in PEOPLE.items() if any(g.endswith("@test") for g in grants)}


# ---------------------------------------------------------------------------- the data


GHOST_EXPORT = "test-20261123T090000Z-0badc0de"  # shaped like an export's name, never made
PROD_AGENT = "agent-prod-zq81"  # identifying strings of environment prod's data
TEST_AGENT = "agent-test-k3m7"
PRODUCT = "matrixapp"


@dataclass
class World:
    """What the URLs of the matrix point at (names and ids in the site's database)."""

    product: str = PRODUCT
    approved: str = "1.0.0"  # approved, deployed to test and prod
    submitted: str = "1.1.0"  # submitted, waiting for approvals
    draft: str = "1.2.0"
    unqueued: str = "1.3.0"  # approved (enough for both environments), queued nowhere
    test_agent: str = TEST_AGENT
    prod_agent: str = PROD_AGENT
    test_deployment: int = 0
    prod_deployment: int = 0
    new_agent_request: bytes = b""  # an enrollment request for test, not yet imported
    archive: bytes = b""  # a release archive (tar.gz) of a version not yet uploaded
    export: str = ""  # the name of an export of environment test waiting for download

    def release(self, version: str) -> dict[str, str]:
        """URL arguments naming one of the product's releases."""
        return {"product": self.product, "version": version}
    extra: dict[str, Any] = field(default_factory=dict)


def _enroll(site: Site, tmp: Path, agent_id: str, environment: str) -> None:
    """Enroll as ``hub import`` does, and keep the response for download as the agents
    page does after an enrollment by upload."""
    media = tmp / f"enroll-{agent_id}"
    media.mkdir()
    shutil.copy(request_file(site, tmp, agent_id, environment), media)
    report = import_directory(site.ctx("admin"), media, results_dir=tmp / "results")
    assert [r.status for r in report.rows] == ["enrolled"], report.rows
    response = media / f"enrollment-response-{agent_id}.json"
    store_response(site.data_dir, agent_id, response.read_bytes())


def _archive(directory: Path) -> bytes:
    """A release directory as a .tar.gz, as a developer would upload it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    return buf.getvalue()


def build_world(site: Site, tmp: Path) -> World:
    """Releases in three states, an agent per environment, a deployment per environment."""
    w = World()
    src = tmp / "src"
    with site.app.app_context():
        dev = site.ctx("dev")
        releases = {}
        for version in (w.approved, w.submitted, w.draft, w.unqueued):
            path = write_release(src, product=PRODUCT, version=version)
            releases[version] = create_release(dev, path, create_missing_product=True)
        submit_release(dev, releases[w.approved])
        submit_release(dev, releases[w.submitted])
        approve_release(site.ctx("appr1"), releases[w.approved])
        approve_release(site.ctx("appr2"), releases[w.approved])
        submit_release(dev, releases[w.unqueued])
        approve_release(site.ctx("appr1"), releases[w.unqueued])
        approve_release(site.ctx("appr2"), releases[w.unqueued])
        _enroll(site, tmp, TEST_AGENT, "test")
        _enroll(site, tmp, PROD_AGENT, "prod")
        (test_dep,) = queue_deployment(site.ctx("op"), releases[w.approved], "test")
        (prod_dep,) = queue_deployment(site.ctx("op"), releases[w.approved], "prod")
        subscribe(site.ctx("admin"), "test", PRODUCT, "STABLE")
        w.extra["window"] = add_rule(site.ctx("admin"), "window", "sat 01:00-05:00 UTC",
                                     environment="test").id
        w.extra["freeze"] = add_rule(site.ctx("admin"), "freeze",
                                     "2030-01-01T00:00Z/2030-01-02T00:00Z: matrix",
                                     environment="test").id
        db.session.commit()
        w.test_deployment, w.prod_deployment = test_dep.id, prod_dep.id
        w.new_agent_request = request_file(site, tmp, "agent-new-1", "test").read_bytes()
        w.extra["approver_key"] = register_key(
            site.ctx("appr1"), "appr1", public_file(SigningKey.generate())).key_id
        w.extra["token"] = issue_token(site.ctx("dev"), "ci", ["read"], 30, max_days=90).token.id
        db.session.commit()
        db.session.remove()
    w.archive = _archive(write_release(tmp / "upload", product=PRODUCT, version="2.0.0"))
    op = site.client("op")
    made = site.post(op, "/media/export", {"environment": "test", "destination": "download"})
    assert made.status_code == 302, made.get_data(as_text=True)[:500]
    w.export = made.headers["Location"].rstrip("/").rpartition("/")[2]
    with site.app.app_context():  # queued after the export: one to override, one to confirm
        for version, key in (("1.4.0", "override"), ("1.5.0", "confirm")):
            release = create_release(site.ctx("dev"), write_release(
                src, product=PRODUCT, version=version), create_missing_product=True)
            submit_release(site.ctx("dev"), release)
            approve_release(site.ctx("appr1"), release)
            (dep,) = queue_deployment(site.ctx("op"), release, "test")
            w.extra[key] = dep.id
        request_override(site.ctx("op-test"), dep, "the matrix asks")
        rolled = create_release(site.ctx("dev"), write_release(
            src, product=PRODUCT, version="1.6.0"), create_missing_product=True)
        submit_release(site.ctx("dev"), rolled)
        approve_release(site.ctx("appr1"), rolled)
        w.extra["rollout"] = start_rollout(site.ctx("op"), rolled, environment="test").id
        target = add_email(site.ctx("admin"), "test", ["ops@example.org"], ["agent.offline"])
        w.extra["target"] = target.id
        enqueue(site.ctx("admin"), "agent.offline", get_environment(db.session(), "test"),
                {"agent": TEST_AGENT, "state": "open"})
        w.extra["delivery"] = db.session.scalar(select(NotificationOutbox.id))
        db.session.commit()
        db.session.remove()
    return w


# ---------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class View:
    """What one endpoint allows.

    ``args``: the URL's arguments from the world. ``get``/``post``: who may (None: the
    endpoint has no such method). ``form``: the POST's fields (without the CSRF token).
    ``denied``: the status of a refused GET. ``anonymous``: what a visitor who is not
    signed in gets on GET ("login": a 302 to the sign-in page, or a status code).
    ``scope``: for a URL naming an object, who can see that object; everyone else gets
    exactly what the same URL naming an object that does not exist (``ghost``) gets:
    ``hidden`` (404; the admin pages refuse everyone but admins before looking anything
    up, with the same 403 for a real and a missing user). ``form_scope``: who can see the
    environment the form names (others get a 404, as for an environment that is not there).
    """

    get: frozenset[str] | None = None
    post: frozenset[str] | None = None
    args: Callable[[World], Mapping[str, Any]] = lambda w: {}
    form: Callable[[World], Mapping[str, Any]] = lambda w: {}
    denied: int = 403
    anonymous: str | int = "login"
    scope: frozenset[str] | None = None
    ghost: Callable[[World], Mapping[str, Any]] = lambda w: {}
    hidden: int = 404
    form_scope: frozenset[str] | None = None


#: Who can see what a URL names (the rest are answered as for an object that is not there).
RELEASE = {"scope": ANY_GRANT, "ghost": lambda w: w.release("9.9.9")}
TEST_AGENT_URL = {"ghost": lambda w: {"agent_id": "agent-ghost-0000"}}
TEST_DEPLOYMENT = {"ghost": lambda w: {"deployment_id": 999_999}}
TEST_ENVIRONMENT = {"ghost": lambda w: {"name": "ghost-env"}}
PRODUCT_URL = {"scope": ANY_GRANT, "ghost": lambda w: {"product": "ghostapp"}}
A_USER = {"scope": ADMIN, "ghost": lambda w: {"username": "ghost"}, "hidden": 403}


EXPECTED: dict[str, View] = {
    "home.index": View(get=SIGNED_IN, anonymous=200),
    # Releases belong to no environment: any grant, even on one environment, reads them.
    "releases.index": View(get=ANY_GRANT),
    "releases.release": View(get=ANY_GRANT, args=lambda w: w.release(w.approved), **RELEASE),
    "releases.diff": View(get=ANY_GRANT, args=lambda w: w.release(w.approved), **RELEASE),
    "releases.file": View(
        get=ANY_GRANT,
        args=lambda w: {**w.release(w.approved), "name": "step0.sh"},
        scope=ANY_GRANT,
        ghost=lambda w: {**w.release("9.9.9"), "name": "step0.sh"},
    ),
    "releases.upload": View(
        post=having("developer"),
        form=lambda w: {"archive": (io.BytesIO(w.archive), f"{PRODUCT}-2.0.0.tar.gz")},
    ),
    "releases.submit": View(
        post=having("developer"), args=lambda w: w.release(w.draft), **RELEASE
    ),
    # Approving for every environment (no environment chosen) needs a global grant.
    "releases.approve": View(
        post=having("approver"),
        args=lambda w: w.release(w.submitted),
        form=lambda w: {"comment": "fine by the matrix", "environment": ""},
        **RELEASE,
    ),
    "releases.queue": View(
        post=having("operator", env="test"),
        args=lambda w: w.release(w.unqueued),
        form=lambda w: {"environment": "test"},
        form_scope=VIEW_TEST,
        **RELEASE,
    ),
    "releases.reject": View(
        post=having("approver"),
        args=lambda w: w.release(w.submitted),
        form=lambda w: {"comment": "the matrix says no", "environment": ""},
        **RELEASE,
    ),
    # Channels belong to a product: read like releases; promoting, approving a promotion
    # and recalling need global grants (channels span environments).
    "channels.index": View(get=ANY_GRANT),
    "channels.show": View(get=ANY_GRANT, args=lambda w: {"product": w.product}, **PRODUCT_URL),
    "channels.promote_release": View(
        post=having("operator") - {"op-test"}, args=lambda w: {"product": w.product},
        form=lambda w: {"version": w.unqueued, "to": "CANARY"}, **PRODUCT_URL,
    ),
    "channels.approve": View(
        post=having("approver") - {"appr-prod"}, args=lambda w: {"product": w.product},
        form=lambda w: {"version": w.unqueued, "to": "CANARY"}, **PRODUCT_URL,
    ),
    "channels.recall_release": View(
        post=having("operator") - {"op-test"}, args=lambda w: {"product": w.product},
        form=lambda w: {"version": w.approved, "channel": "RELEASE", "reason": "matrix"},
        **PRODUCT_URL,
    ),
    "channels.rule": View(
        post=ADMIN, args=lambda w: {"product": w.product},
        form=lambda w: {"channel": "STABLE", "required_approvals": "1", "min_successes": "0",
                        "soak": "1h"}, **PRODUCT_URL,
    ),
    "channels.add": View(
        post=ADMIN, args=lambda w: {"product": w.product},
        form=lambda w: {"name": "BETA", "after": "CANARY"}, **PRODUCT_URL,
    ),
    "channels.remove": View(
        post=ADMIN, args=lambda w: {"product": w.product},
        form=lambda w: {"channel": "CANARY"}, **PRODUCT_URL,
    ),
    "channels.subscribe_environment": View(
        post=ADMIN, args=lambda w: {"environment": "test"},
        form=lambda w: {"product": w.product, "channel": "CANARY"},
        scope=VIEW_TEST, ghost=lambda w: {"environment": "ghost-env"},
    ),
    "channels.unsubscribe_environment": View(
        post=ADMIN, args=lambda w: {"environment": "test"},
        form=lambda w: {"product": w.product},
        scope=VIEW_TEST, ghost=lambda w: {"environment": "ghost-env"},
    ),
    "environments.index": View(get=SIGNED_IN),
    "environments.create": View(
        post=ADMIN,
        form=lambda w: {"name": "plant-new", "required_approvals": "1", "description": "x"},
    ),
    "environments.show": View(
        get=VIEW_TEST, args=lambda w: {"name": "test"}, scope=VIEW_TEST, **TEST_ENVIRONMENT
    ),
    "environments.preflight_policy": View(
        post=ADMIN,
        args=lambda w: {"name": "test"},
        form=lambda w: {"within_h": "24"},
        scope=VIEW_TEST,
        **TEST_ENVIRONMENT,
    ),
    "environments.required_approvals": View(
        post=ADMIN,
        args=lambda w: {"name": "test"},
        form=lambda w: {"required_approvals": "2"},
        scope=VIEW_TEST,
        **TEST_ENVIRONMENT,
    ),
    "secrets.show": View(
        get=VIEW_TEST, args=lambda w: {"name": "test"}, scope=VIEW_TEST, **TEST_ENVIRONMENT
    ),
    "secrets.store": View(
        post=ADMIN,
        args=lambda w: {"name": "test"},
        form=lambda w: {"name": "matrix-secret", "value": "v"},
        scope=VIEW_TEST,
        **TEST_ENVIRONMENT,
    ),
    # Notifications of an environment: its viewers read, admins configure, operators retry.
    "notifications.show": View(
        get=VIEW_TEST, args=lambda w: {"name": "test"}, scope=VIEW_TEST, **TEST_ENVIRONMENT
    ),
    "notifications.add_target": View(
        post=ADMIN,
        args=lambda w: {"name": "test"},
        form=lambda w: {"kind": "email", "recipients": "m@example.org", "events": "agent.offline"},
        scope=VIEW_TEST,
        **TEST_ENVIRONMENT,
    ),
    "notifications.remove_target": View(
        post=ADMIN,
        args=lambda w: {"name": "test", "target_id": w.extra.get("target", 1)},
        scope=VIEW_TEST,
        ghost=lambda w: {"name": "test", "target_id": 999_999},
    ),
    "notifications.thresholds": View(
        post=ADMIN,
        args=lambda w: {"name": "test"},
        form=lambda w: {"agent_offline": "2h", "result_overdue": "off"},
        scope=VIEW_TEST,
        **TEST_ENVIRONMENT,
    ),
    "notifications.retry": View(
        post=having("operator", env="test"),
        args=lambda w: {"name": "test", "delivery_id": w.extra.get("delivery", 1)},
        scope=VIEW_TEST,
        ghost=lambda w: {"name": "test", "delivery_id": 999_999},
    ),
    "agents.index": View(get=SIGNED_IN),
    # Job templates belong to no environment: global grants read them.
    "jobs.index": View(get=GLOBAL),
    # A run creates a release (developer) and queues it in the agent's environment
    # (operator there): in this fixture only the admin holds both.
    "jobs.run_form": View(
        get=ADMIN, args=lambda w: {"agent": w.test_agent}, scope=VIEW_TEST,
        ghost=lambda w: {"agent": "agent-ghost-0000"}, hidden=403,
    ),
    "jobs.run": View(
        post=ADMIN,
        form=lambda w: {"agent": w.test_agent, "kind": "shell", "text": "echo matrix\n",
                        "reason": "the matrix"},
    ),
    "agents.enroll_form": View(get=having("operator", env="test")),
    "agents.enroll": View(
        post=having("operator", env="test"),
        form=lambda w: {
            "request_file": (io.BytesIO(w.new_agent_request), "enrollment-agent-new.json"),
            "environment": "test",
        },
    ),
    "agents.show": View(
        get=VIEW_TEST, args=lambda w: {"agent_id": w.test_agent}, scope=VIEW_TEST,
        ghost=TEST_AGENT_URL["ghost"],
    ),
    "agents.enrollment_response": View(
        get=having("operator", env="test"), args=lambda w: {"agent_id": w.test_agent},
        scope=VIEW_TEST, ghost=TEST_AGENT_URL["ghost"],
    ),
    "agents.revoke_form": View(
        get=having("operator", env="test"), args=lambda w: {"agent_id": w.test_agent},
        scope=VIEW_TEST, ghost=TEST_AGENT_URL["ghost"],
    ),
    "agents.revoke": View(
        post=having("operator", env="test"),
        args=lambda w: {"agent_id": w.test_agent},
        form=lambda w: {"reason": "the authorization matrix revokes it"},
        scope=VIEW_TEST,
        ghost=TEST_AGENT_URL["ghost"],
    ),
    # Lists show only the environments one may view (the leak test checks): everyone opens.
    "deployments.index": View(get=SIGNED_IN),
    # The fleet and the rollouts list show only the environments one may view.
    "rollouts.index": View(get=SIGNED_IN),
    "rollouts.listing": View(get=SIGNED_IN),
    "rollouts.show": View(
        get=VIEW_TEST, args=lambda w: {"rollout_id": w.extra.get("rollout", 1)}, scope=VIEW_TEST,
        ghost=lambda w: {"rollout_id": 999_999},
    ),
    "rollouts.state": View(
        get=VIEW_TEST, args=lambda w: {"rollout_id": w.extra.get("rollout", 1)}, scope=VIEW_TEST,
        ghost=lambda w: {"rollout_id": 999_999},
    ),
    # Starting a rollout from the release page: operators of the environment, as the CLI.
    "rollouts.start": View(
        post=having("operator", env="test"),
        args=lambda w: w.release(w.unqueued),
        form=lambda w: {"environment": "test", "canary": "0", "max_failures": "0",
                        "on_failure": "pause"},
        form_scope=VIEW_TEST,
        **RELEASE,
    ),
    "rollouts.act": View(
        post=having("operator", env="test"),
        args=lambda w: {"rollout_id": w.extra.get("rollout", 1)},
        form=lambda w: {"action": "pause", "reason": "the matrix"},
        scope=VIEW_TEST, ghost=lambda w: {"rollout_id": 999_999},
    ),
    "deployments.show": View(
        get=VIEW_TEST, args=lambda w: {"deployment_id": w.test_deployment}, scope=VIEW_TEST,
        **TEST_DEPLOYMENT,
    ),
    "deployments.logs": View(
        get=VIEW_TEST, args=lambda w: {"deployment_id": w.test_deployment}, scope=VIEW_TEST,
        **TEST_DEPLOYMENT,
    ),
    "deployments.mark": View(
        post=having("operator", env="test"),
        args=lambda w: {"deployment_id": w.test_deployment},
        form=lambda w: {"state": "delivered"},
        scope=VIEW_TEST,
        **TEST_DEPLOYMENT,
    ),
    # Asking for an override and confirming one (a second person) are the operator's.
    "deployments.override": View(
        post=having("operator", env="test"),
        args=lambda w: {"deployment_id": w.extra.get("override", 1)},
        form=lambda w: {"reason": "the matrix needs it now"},
        scope=VIEW_TEST,
        **TEST_DEPLOYMENT,
    ),
    "deployments.confirm": View(
        post=having("operator", env="test"),
        args=lambda w: {"deployment_id": w.extra.get("confirm", 1)},
        scope=VIEW_TEST,
        **TEST_DEPLOYMENT,
    ),
    # Windows and freezes: everyone reads the list (filtered); admins change them.
    "windows.index": View(get=SIGNED_IN),
    "windows.add": View(
        post=ADMIN,
        form=lambda w: {"kind": "window", "spec": "sun 02:00-04:00 UTC", "environment": "test"},
    ),
    "windows.remove": View(
        post=ADMIN, args=lambda w: {"kind": "window", "rule_id": w.extra.get("window", 1)},
        scope=VIEW_TEST, ghost=lambda w: {"kind": "window", "rule_id": 999_999},
    ),
    "windows.end": View(
        post=ADMIN, args=lambda w: {"rule_id": w.extra.get("freeze", 1)},
        scope=VIEW_TEST, ghost=lambda w: {"rule_id": 999_999},
        form=lambda w: {"reason": "the matrix ends it"},
    ),
    "media.index": View(get=SIGNED_IN),
    # The audit checkpoint an export carries is part of exporting (bundle.export there).
    "media.export": View(
        post=having("operator", env="test"),
        form_scope=VIEW_TEST,
        form=lambda w: {"environment": "test", "destination": "download"},
    ),
    # An export waiting for download (made by op in build_world). The matrix reads only
    # the status of the download, so the stream is not consumed and the export stays.
    "media.export_page": View(
        get=having("operator", env="test"), args=lambda w: {"name": w.export},
        scope=having("operator", env="test"), ghost=lambda w: {"name": GHOST_EXPORT},
    ),
    "media.download": View(
        get=having("operator", env="test"), args=lambda w: {"name": w.export},
        scope=having("operator", env="test"), ghost=lambda w: {"name": GHOST_EXPORT},
    ),
    # Importing names no environment before reading the files: a global grant is needed.
    "media.import_files": View(
        post=having("operator") - {"op-test"},
        form=lambda w: {
            "files": (io.BytesIO(w.new_agent_request), "enrollment-agent-new-1.json"),
        },
    ),
    "audit.index": View(get=having("auditor")),
    "audit.verify_now": View(post=having("auditor")),
    "audit.export": View(post=having("auditor"), form=lambda w: {"checkpoint": "1"}),
    "admin.index": View(get=ADMIN),
    "admin.user": View(get=ADMIN, args=lambda w: {"username": "view"}, **A_USER),
    "admin.grant": View(
        post=ADMIN,
        args=lambda w: {"username": "view"},
        form=lambda w: {"role": "auditor", "environment": ""},
        **A_USER,
    ),
    "admin.revoke": View(
        post=ADMIN,
        args=lambda w: {"username": "view"},
        form=lambda w: {"role": "viewer", "environment": "", "confirmed": "1"},
        **A_USER,
    ),
    "admin.active": View(
        post=ADMIN,
        args=lambda w: {"username": "nobody"},
        form=lambda w: {"active": "0", "confirmed": "1"},
        **A_USER,
    ),
    "admin.end_sessions": View(post=ADMIN, args=lambda w: {"username": "view"}, **A_USER),
    # Everyone issues tokens for themselves; a token is revoked by its owner or an admin,
    # and is invisible (404, like none) to everyone else.
    "admin.groups": View(post=ADMIN, args=lambda w: {"username": "view"},
                         form=lambda w: {"groups": "dba"}, **A_USER),
    # Personal approver keys: each user registers their own; a key is revoked from its
    # owner's page only (invisible, 404 like none, to everyone else).
    "approvals.my_keys": View(get=SIGNED_IN),
    "approvals.add_key": View(
        post=SIGNED_IN,
        form=lambda w: {"public_key": (io.BytesIO(public_file(SigningKey.generate())),
                                       "k.pub")},
    ),
    "approvals.revoke": View(
        post=frozenset({"appr1"}),
        args=lambda w: {"key_id": w.extra.get("approver_key", "11" * 32)},
        form=lambda w: {"reason": "matrix"},
        scope=frozenset({"appr1"}),
        ghost=lambda w: {"key_id": "00" * 32},
    ),
    # Signed approvals: the bytes to sign (for every environment: a global grant) and the
    # two ways of handing in a signature.
    "approvals.payload": View(get=having("approver"), args=lambda w: w.release(w.submitted),
                              **RELEASE),
    "approvals.approve_signed": View(
        post=having("approver") | {"appr-prod"},
        args=lambda w: w.release(w.submitted),
        form=lambda w: {"payload": "", "signature": ""},
        **RELEASE,
    ),
    "approvals.approve_upload": View(
        post=having("approver") | {"appr-prod"},
        args=lambda w: w.release(w.submitted),
        form=lambda w: {"approval": (io.BytesIO(b"{}"), "approval.json")},
        **RELEASE,
    ),
    "tokens.index": View(get=SIGNED_IN),
    "tokens.create": View(post=SIGNED_IN,
                          form=lambda w: {"name": "matrix", "scope": "read", "days": "1"}),
    "tokens.revoke": View(post=frozenset({"dev", "admin"}),
                          args=lambda w: {"token_id": w.extra.get("token", 1)},
                          scope=frozenset({"dev", "admin"}),
                          ghost=lambda w: {"token_id": 999999}),
}


# ---------------------------------------------------------------------------- helpers


def page_rules(app: Flask) -> dict[str, set[str]]:
    """endpoint -> methods (GET/POST) of every rule of the page blueprints."""
    out: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.partition(".")[0] in PAGES:
            methods = set(rule.methods or ()) & {"GET", "POST", "PUT", "PATCH", "DELETE"}
            out.setdefault(rule.endpoint, set()).update(methods)
    return out


def url_for_view(app: Flask, endpoint: str, world: World) -> str:
    from flask import url_for

    with app.test_request_context("/"):
        return url_for(endpoint, **EXPECTED[endpoint].args(world))


_SKIP_FILES = re.compile(r"\.(db|sqlite3)(-wal|-shm|-journal)?$")


#: Tables a request may change without changing anything of the hub's: signing someone in
#: adds their session, every request moves its last-seen time.
BOOKKEEPING = frozenset({"web_sessions"})


def snapshot(site: Site) -> dict[str, Any]:
    """Every row of every table but :data:`BOOKKEEPING`, and every file of the data
    directory (name and digest)."""
    rows: dict[str, Any] = {}
    with site.app.app_context():
        for table in Base.metadata.sorted_tables:
            if table.name in BOOKKEEPING:
                continue
            result = db.session.execute(select(table)).all()
            rows[table.name] = sorted(repr(tuple(r)) for r in result)
        db.session.remove()
    files = {}
    for path in sorted(site.data_dir.rglob("*")):
        if path.is_file() and not _SKIP_FILES.search(path.name):
            files[str(path.relative_to(site.data_dir))] = hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
    return {"rows": rows, "files": files}


def assert_unchanged(before: Mapping[str, Any], after: Mapping[str, Any], what: str) -> None:
    for key in ("rows", "files"):
        if before[key] != after[key]:
            changed = sorted(
                k
                for k in set(before[key]) | set(after[key])
                if before[key].get(k) != after[key].get(k)
            )
            raise AssertionError(f"{what} changed {key}: {changed}")


@pytest.fixture
def world(site: Site, tmp_path: Path) -> World:
    return build_world(site, tmp_path)


@pytest.fixture
def clients(site: Site, world: World) -> Iterator[dict[str, FlaskClient]]:
    yield {name: site.client(name) for name in EVERYONE}


# ---------------------------------------------------------------------------- tests


def test_every_page_endpoint_is_in_the_matrix(site: Site) -> None:
    rules = page_rules(site.app)
    missing = sorted(set(rules) - set(EXPECTED))
    assert not missing, f"page endpoints without an entry in EXPECTED: {missing}"
    stale = sorted(set(EXPECTED) - set(rules))
    assert not stale, f"EXPECTED names endpoints the app does not have: {stale}"
    for endpoint, methods in rules.items():
        view = EXPECTED[endpoint]
        assert methods <= {"GET", "POST"}, f"{endpoint}: unexpected methods {methods}"
        assert ("GET" in methods) == (view.get is not None), f"{endpoint}: GET entry"
        assert ("POST" in methods) == (view.post is not None), f"{endpoint}: POST entry"


GET_ENDPOINTS = sorted(e for e, v in EXPECTED.items() if v.get is not None)
POST_ENDPOINTS = sorted(e for e, v in EXPECTED.items() if v.post is not None)


def test_get_matrix(site: Site, world: World, clients: dict[str, FlaskClient]) -> None:
    """Every GET view x everyone, on one world (GETs change nothing), every mismatch
    reported at once."""
    wrong = []
    anonymous = site.client(None)
    for endpoint in GET_ENDPOINTS:
        view = EXPECTED[endpoint]
        assert view.get is not None
        url = url_for_view(site.app, endpoint, world)
        for who in EVERYONE:
            # Only the status is read: a download's stream is not consumed.
            status = clients[who].get(url).status_code
            want = 200 if who in view.get else refused_status(view, who)
            if status != want:
                wrong.append(f"GET {url} as {who}: {status} (expected {want})")
        anon = anonymous.get(url)
        if view.anonymous == "login":
            if anon.status_code != 302 or not anon.headers["Location"].startswith(
                "/login?next="
            ):
                wrong.append(f"GET {url} not signed in: {anon.status_code} (expected a 302 "
                             "to /login)")
        elif anon.status_code != view.anonymous:
            wrong.append(f"GET {url} not signed in: {anon.status_code} "
                         f"(expected {view.anonymous})")
    assert not wrong, "\n".join(wrong)


def refused_status(view: View, who: str, denied: int | None = None) -> int:
    """``view.hidden`` (404) for someone outside the scope of the object a URL names, 404
    for someone who cannot see the environment the form names, else ``denied``."""
    if view.scope is not None and who not in view.scope:
        return view.hidden
    if view.form_scope is not None and who not in view.form_scope:
        return 404
    return view.denied if denied is None else denied


def _post(site: Site, c: FlaskClient, url: str, view: View, world: World) -> int:
    status: int = site.post(c, url, dict(view.form(world))).status_code
    return status


@pytest.mark.parametrize("endpoint", POST_ENDPOINTS or ["(no POST endpoint yet)"])
def test_post_matrix(
    site: Site, world: World, clients: dict[str, FlaskClient], endpoint: str
) -> None:
    """Refused people first (nothing may change), then the allowed ones (not refused)."""
    if endpoint not in EXPECTED:
        assert not POST_ENDPOINTS
        return
    view = EXPECTED[endpoint]
    assert view.post is not None
    url = url_for_view(site.app, endpoint, world)
    wrong = []
    for who in (u for u in EVERYONE if u not in view.post):
        before = snapshot(site)
        status = _post(site, clients[who], url, view, world)
        want = refused_status(view, who, 403)
        if status != want:
            wrong.append(f"{who}: {status} (expected {want})")
        assert_unchanged(before, snapshot(site), f"a refused POST {url} as {who}")
    anon = site.client(None)
    with anon.session_transaction() as sess:
        sess["_csrf"] = "anonymous-token"
    before = snapshot(site)
    resp = anon.post(url, data={**view.form(world), "csrf_token": "anonymous-token"})
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=")
    assert_unchanged(before, snapshot(site), f"an anonymous POST {url}")
    statuses = {}
    for who in sorted(view.post):
        statuses[who] = status = _post(site, clients[who], url, view, world)
        if status in (400, 403) or status >= 500:
            wrong.append(f"{who}: {status} (expected to be allowed)")
    # The form is a real one: the first allowed person's POST does what it says.
    if not any(s < 400 for s in statuses.values()):
        wrong.append(f"no allowed POST succeeded: {statuses}")
    assert not wrong, f"POST {url}: " + "; ".join(wrong)


def _csrf_exempt(app: Flask, endpoint: str) -> bool:
    return bool(getattr(app.view_functions[endpoint], "_tiangong_csrf_exempt", False))


def test_every_post_without_csrf_token_is_refused(
    site: Site, world: World, clients: dict[str, FlaskClient]
) -> None:
    """Every POST rule of the app (pages and sign-in/out, not the signed SAML ACS)."""
    from flask import url_for

    posts = sorted(
        r.endpoint
        for r in site.app.url_map.iter_rules()
        if "POST" in (r.methods or ()) and not _csrf_exempt(site.app, r.endpoint)
    )
    assert "auth.logout" in posts and "auth.acs" not in posts
    wrong = []
    for endpoint in posts:
        view = EXPECTED.get(endpoint, View(post=SIGNED_IN))
        with site.app.test_request_context("/"):
            url = url_for(endpoint, **view.args(world))
        for who in ("admin", next(iter(sorted(view.post or {"admin"})))):
            before = snapshot(site)
            resp = clients[who].post(url, data=dict(view.form(world)))
            if resp.status_code != 400 or "CSRF" not in resp.get_data(as_text=True):
                wrong.append(f"{endpoint} as {who}: {resp.status_code}")
            assert_unchanged(before, snapshot(site), f"POST {url} without a CSRF token")
            resp = clients[who].post(url, data={**view.form(world), "csrf_token": "forged"})
            if resp.status_code != 400:
                wrong.append(f"{endpoint} as {who} with a wrong token: {resp.status_code}")
            assert_unchanged(before, snapshot(site), f"POST {url} with a wrong CSRF token")
    assert not wrong, "; ".join(wrong)


#: (who, the environment they have no grant on)
LEAK_CASES = [("view-test", "prod"), ("op-test", "prod"), ("appr-prod", "test")]


@pytest.mark.parametrize(("who", "hidden"), LEAK_CASES)
def test_no_page_leaks_another_environment(
    site: Site, world: World, clients: dict[str, FlaskClient], who: str, hidden: str
) -> None:
    """Every page ``who`` can open (each GET endpoint, and each with
    ``?environment=<hidden>``) is free of the hidden environment's agent id and of its name
    as a word (not inside ``appr-prod``, ``product`` or ``agent-test-…``); the hidden
    environment's own pages are refused."""
    agent = PROD_AGENT if hidden == "prod" else TEST_AGENT
    deployment = world.prod_deployment if hidden == "prod" else world.test_deployment
    word = re.compile(rf"(?<![\w-]){hidden}(?![\w-])")
    opened = []
    for endpoint in GET_ENDPOINTS:
        url = url_for_view(site.app, endpoint, world)
        for probe in (url, f"{url}{'&' if '?' in url else '?'}environment={hidden}"):
            resp = clients[who].get(probe)
            if resp.status_code != 200:
                continue
            opened.append(probe)
            html = resp.get_data().decode("utf-8", errors="replace")  # downloads too
            assert agent not in html, f"{probe} shows {who} {hidden}'s agent {agent}"
            m = word.search(html)
            assert m is None, (
                f"{probe} names environment {hidden} to {who}: "
                f"...{html[max(0, m.start() - 120):m.end() + 120]}..."
            )
    assert "/" in opened
    for probe in (
        f"/agents/{agent}",
        f"/agents/{agent}/revoke",
        f"/agents/{agent}/enrollment-response",
        f"/deployments/{deployment}",
        f"/deployments/{deployment}/logs",
        f"/environments/{hidden}",
    ):
        status = clients[who].get(probe).status_code
        assert status == 404, f"{who} GET {probe}: {status}"


#: (who, endpoint, form changes, status) — a grant on one environment is worth nothing in
#: another: the same form aimed at ``prod`` is refused (and changes nothing), at ``test``
#: it is not (302). An environment one may not view is answered like one that does not
#: exist (404); one that is visible but not one's to act in, with 403.
SCOPED_POSTS: list[tuple[str, str, dict[str, str], int]] = [
    ("appr-prod", "releases.approve", {"environment": "test"}, 404),
    ("appr-prod", "releases.approve", {"environment": "prod"}, 302),
    ("op-test", "media.export", {"environment": "prod"}, 404),
    ("op-test", "releases.queue", {"environment": "prod"}, 404),
    ("op-test", "agents.enroll", {"environment": "prod"}, 404),
    ("op-test", "deployments.mark", {}, 302),
    ("view-test", "deployments.mark", {}, 403),
    ("view-test", "media.export", {"environment": "test"}, 403),
]


@pytest.mark.parametrize(("who", "endpoint", "change", "want"), SCOPED_POSTS)
def test_environment_scoped_posts(
    site: Site, world: World, who: str, endpoint: str, change: dict[str, str], want: int
) -> None:
    view = EXPECTED[endpoint]
    url = url_for_view(site.app, endpoint, world)
    before = snapshot(site)
    status = site.post(site.client(who), url, {**view.form(world), **change}).status_code
    assert status == want, f"{who} POST {url} {change}: {status} (expected {want})"
    if want != 302:
        assert_unchanged(before, snapshot(site), f"a refused POST {url} as {who}")


SCOPED_ENDPOINTS = sorted(e for e, v in EXPECTED.items() if v.scope is not None)


def _ghost_url(app: Flask, endpoint: str, world: World) -> tuple[str, dict[str, str]]:
    """The URL naming an object that does not exist, and ghost value -> real value."""
    from flask import url_for

    view = EXPECTED[endpoint]
    real, ghost = view.args(world), view.ghost(world)
    assert ghost and set(ghost) == set(real), f"{endpoint}: ghost args"
    with app.test_request_context("/"):
        url = url_for(endpoint, **ghost)
    swaps = {str(ghost[k]): str(real[k]) for k in real if str(ghost[k]) != str(real[k])}
    return url, swaps


def test_every_object_url_has_a_scope(site: Site) -> None:
    """Every view whose URL names an object says who can see it (and has a ghost)."""
    missing = sorted(e for e, v in EXPECTED.items()
                     if v.args(World()) and (v.scope is None or not v.ghost(World())))
    assert not missing, f"views naming an object without scope/ghost: {missing}"


@pytest.mark.parametrize("endpoint", SCOPED_ENDPOINTS)
def test_objects_out_of_scope_answer_like_missing_ones(
    site: Site, world: World, clients: dict[str, FlaskClient], endpoint: str
) -> None:
    """For everyone outside the object's scope, the URL of a real object and of one that
    does not exist get the same status and the same body (the ghost's name put back for
    the real one), GET or POST; a POST changes nothing."""
    view = EXPECTED[endpoint]
    assert view.scope is not None
    url = url_for_view(site.app, endpoint, world)
    ghost_url, swaps = _ghost_url(site.app, endpoint, world)
    wrong = []
    for who in sorted(set(EVERYONE) - view.scope):
        c = clients[who]
        before = snapshot(site)
        if view.get is not None:
            real, ghost = c.get(url), c.get(ghost_url)
        else:
            real = site.post(c, url, dict(view.form(world)))
            ghost = site.post(c, ghost_url, dict(view.form(world)))
        assert_unchanged(before, snapshot(site), f"{endpoint} as {who}")
        ghost_body = ghost.get_data(as_text=True)
        for fake, true in swaps.items():
            ghost_body = ghost_body.replace(fake, true)
        if (real.status_code, real.get_data(as_text=True)) != (ghost.status_code, ghost_body):
            wrong.append(f"{who}: {url} -> {real.status_code}, {ghost_url} -> "
                         f"{ghost.status_code}: {real.get_data(as_text=True)[-600:]!r} vs "
                         f"{ghost_body[-600:]!r}")
        elif real.status_code != view.hidden:
            wrong.append(f"{who}: {url} -> {real.status_code} (expected a refusal)")
    assert not wrong, "\n".join(wrong)
