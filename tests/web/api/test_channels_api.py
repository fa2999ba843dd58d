"""The API's channel administration, subscriptions and preflight policy: each operation does
what its `tiangong hub` command does and answers the command's `--json` (checked against
the document on every call); refusals (scope, role, an environment out of view, a bad
value) answer JSON naming the rule and change nothing; changes are audited as the token's
owner (`via api-token:…`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hub.db import AuditEvent, Channel, ChannelSubscription, Environment, db
from tests.web.api.conftest import api_for
from tests.web.pages import Site
from tests.web.test_pages_releases import make_release


def _state(site: Site) -> tuple[list[tuple[str, int]], list[tuple[str, str]], list[Any]]:
    with site.app.app_context():
        chans = [(c.name, c.position) for c in db.session.scalars(
            select(Channel).order_by(Channel.position))]
        subs = [(s.environment.name, s.channel.name)
                for s in db.session.scalars(select(ChannelSubscription))]
        policies = [(e.name, e.preflight_within_h) for e in db.session.scalars(
            select(Environment).order_by(Environment.name))]
        return chans, subs, policies


def _events(site: Site, *actions: str) -> list[tuple[str, str, dict[str, Any]]]:
    with site.app.app_context():
        return [(e.action, e.actor, json.loads(e.details)) for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(actions)).order_by(AuditEvent.seq))]


_CHANGES = ("channel.add", "channel.remove", "channel.reorder", "channel.rule",
            "environment.subscribe", "environment.unsubscribe", "environment.preflight_policy")


def test_channel_administration_subscriptions_and_preflight_policy(site: Site,
                                                                    tmp_path: Path) -> None:
    make_release(site, tmp_path, approvers=("appr1",))  # product hello: RELEASE→CANARY→STABLE
    admin = api_for(site, "admin", ["admin", "read"])
    op = api_for(site, "op", ["admin", "read"])
    reader = api_for(site, "view-test", ["read"])
    before = _state(site)

    # Refusals first: scope, role, unknown things, bad values — nothing changes.
    for api, method, path, body, status, words in (
        (reader, "POST", "/products/hello/channels", {"name": "beta"}, 403,
         "lacks the scope 'admin'"),
        (op, "POST", "/products/hello/channels", {"name": "beta"}, 403,
         "op may not channel.manage"),
        (admin, "POST", "/products/hello/channels", {}, 400, "field 'name' is required"),
        (admin, "POST", "/products/nothing/channels", {"name": "beta"}, 404, "nothing"),
        (admin, "PUT", "/products/hello/channels", {"order": ["STABLE"]}, 400, "every"),
        (admin, "PATCH", "/products/hello/channels/STABLE/rule", {}, 400,
         "give at least one of"),
        (admin, "PATCH", "/products/hello/channels/STABLE/rule", {"approvals": "2"}, 400,
         "field 'approvals' must be a int"),
        (admin, "PATCH", "/products/hello/channels/RELEASE/rule", {"approvals": 1}, 400,
         "is the first channel"),
        (op, "PUT", "/environments/test/subscriptions/hello", {"channel": "STABLE"}, 403,
         "op may not environment.update"),
        (reader, "GET", "/environments/prod/subscriptions", None, 404, "prod"),
        (op, "PUT", "/environments/test/preflight-policy", {"within_h": 24}, 403,
         "op may not environment.update"),
        (admin, "PUT", "/environments/test/preflight-policy", {"within_h": 0}, 400,
         "a preflight policy of 0 h"),
        (admin, "PUT", "/environments/test/preflight-policy", {}, 400,
         "field 'within_h' is required"),
    ):
        kw = {} if body is None else {"json": body}
        answer = api.call(method, path, status, **kw)
        assert words in answer["message"], (path, words, answer)
    assert _state(site) == before and _events(site, *_CHANGES) == []

    added = admin.post("/products/hello/channels", 201, json={"name": "beta",
                                                                "after": "CANARY"})
    assert added == {"product": "hello", "channel": "BETA",
                     "order": ["RELEASE", "CANARY", "BETA", "STABLE"]}
    assert admin.call("PUT", "/products/hello/channels", 200, json={
        "order": ["release", "beta", "canary", "stable"]})["order"] == [
        "RELEASE", "BETA", "CANARY", "STABLE"]
    rule = admin.call("PATCH", "/products/hello/channels/stable/rule", 200,
                      json={"approvals": 2, "soak": "6h", "no_failures": True})
    assert (rule["channel"], rule["required_approvals"], rule["soak_seconds"]) == (
        "STABLE", 2, 6 * 3600)
    assert reader.get("/products/hello/channels/STABLE/rule") == rule
    assert "2 approver(s)" in rule["rule"]

    sub = admin.call("PUT", "/environments/test/subscriptions/hello", 200,
                     json={"channel": "beta"})
    assert sub == {"environment": "test", "product": "hello", "channel": "BETA",
                   "previous": None}
    moved = admin.call("PUT", "/environments/test/subscriptions/hello", 200,
                       json={"channel": "STABLE"})
    assert moved["previous"] == "BETA"
    (listed,) = reader.get("/environments/test/subscriptions")["subscriptions"]
    assert (listed["product"], listed["channel"], listed["by"]) == ("hello", "STABLE", "admin")
    busy = admin.call("DELETE", "/products/hello/channels/STABLE", 409)
    assert "subscribe" in busy["message"]
    gone = admin.call("DELETE", "/environments/test/subscriptions/hello", 200)
    assert gone == {"environment": "test", "product": "hello", "channel": "STABLE"}
    admin.call("DELETE", "/environments/test/subscriptions/hello", 404)
    removed = admin.call("DELETE", "/products/hello/channels/beta", 200)
    assert removed == {"product": "hello", "channel": "BETA", "releases": [],
                       "order": ["RELEASE", "CANARY", "STABLE"]}

    policy = admin.call("PUT", "/environments/test/preflight-policy", 200,
                        json={"within_h": 24})
    assert policy == {"environment": "test", "preflight_within_h": 24, "policy": (
        "every deployment needs a preflight plan of its release passed on each target agent "
        "within 24 h")}
    assert reader.get("/environments/test/preflight-policy") == policy
    cleared = admin.call("PUT", "/environments/test/preflight-policy", 200,
                         json={"within_h": None})
    assert cleared["preflight_within_h"] is None and cleared["policy"].startswith(
        "no preflight policy")

    changes = _events(site, *_CHANGES)
    assert [(a, actor) for a, actor, _d in changes] == [
        ("channel.add", "admin"), ("channel.reorder", "admin"), ("channel.rule", "admin"),
        ("environment.subscribe", "admin"), ("environment.subscribe", "admin"),
        ("environment.unsubscribe", "admin"), ("channel.remove", "admin"),
        ("environment.preflight_policy", "admin"), ("environment.preflight_policy", "admin")]
    assert all(d["via"].startswith("api-token:tgp_") for _a, _u, d in changes)
