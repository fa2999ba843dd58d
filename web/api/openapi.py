"""The API's OpenAPI 3.1 document, built from :data:`web.api.OPERATIONS` (the registered
views) and :data:`SCHEMAS` (JSON Schema 2020-12 of every body). Served at
``/api/v1/openapi.json``; ``tests/web/api`` checks it against the routes and the answers.

This module describes; it validates nothing at run time.
"""

from __future__ import annotations

from typing import Any

from hub.db import API_TOKEN_SCOPES, DEPLOYMENT_STATES, RELEASE_STATES
from hub.services.notifications import EVENTS
from hub.services.tokens import SCOPE_HELP
from tiangong import __version__
from web.api import OPERATIONS, Operation

__all__ = ["SCHEMAS", "document"]

_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_STR = {"type": "string"}
_STR_OR_NULL = {"type": ["string", "null"]}
_SECONDS_OR_NULL = {"type": ["integer", "null"], "minimum": 60,
                    "description": "Seconds, 60 to a year (31536000); null: off."}
_NOTIFY_EVENTS = sorted(EVENTS)
#: the fields of a run request that ask for media (`tiangong remote run … --out`)
_MEDIA_REQUEST = {
    "out": {"type": "boolean", "description": "Export the bundle for media instead of "
            "queueing it for the live server; the answer's `media` carries the files."},
    "expires": {"type": "string", "description": "With out: how long the bundle stays "
                "valid at the site (default 14d)."}}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return _obj({key: {"type": "array", "items": _ref(item)}})


_RELEASE_SUMMARY = {
    "product": _STR, "version": _STR,
    "state": {"type": "string", "enum": list(RELEASE_STATES)},
    "author": _STR, "content_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "created_at": _TIME, "submitted_at": _TIME_OR_NULL, "decided_at": _TIME_OR_NULL,
}

#: Every schema the document names (``#/components/schemas/<name>``).
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj({"error": {"type": "string", "description": "A stable code: unauthorized, "
                             "forbidden, insufficient_scope, not_found, conflict, bad_request, "
                             "too_large."},
                   "message": {"type": "string", "description": "For people: names the "
                               "object, the rule and the number."}}),
    "ReleaseSummary": _obj(_RELEASE_SUMMARY),
    "Release": _obj({
        **_RELEASE_SUMMARY, "description": _STR,
        "steps": {"type": "array", "items": _STR, "description": "Step names, in order."},
        "files": {"type": "array", "items": _obj({
            "name": _STR, "size": {"type": "integer", "minimum": 0},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}})},
        "approvals": {"type": "array", "items": _obj({
            "by": _STR, "decision": {"type": "string", "enum": ["approve", "reject"]},
            "environment": _STR_OR_NULL, "comment": _STR, "at": _TIME,
            "signed_by": {"type": ["string", "null"],
                          "description": "Key id of a signed approval; null: hub approval."},
            "expires_at": _TIME_OR_NULL})},
    }),
    "ReleaseList": _list_of("releases", "ReleaseSummary"),
    "Decision": _obj({
        "comment": {"type": "string", "description": "Required to reject."},
        "environment": {"type": ["string", "null"],
                        "description": "Only for this environment (default: every one)."},
    }, required=[]),
    "QueueRequest": _obj({"environment": _STR}),
    "Deployment": _obj({
        "id": {"type": "integer"}, "product": _STR, "version": _STR, "environment": _STR,
        "agent": _STR_OR_NULL, "state": {"type": "string", "enum": list(DEPLOYMENT_STATES)},
        "sequence": {"type": ["integer", "null"]}, "bundle_id": _STR_OR_NULL,
        "queued_by": _STR, "queued_at": _TIME, "exported_at": _TIME_OR_NULL,
        "finished_at": _TIME_OR_NULL, "updated_at": _TIME,
        "waiting_for": {"type": "array", "items": _ref("WaitingReason"),
                        "description": "Why it has not run yet (empty: nothing)."},
    }),
    "WaitingReason": _obj({
        "kind": {"type": "string", "description": "approvals, channel, freeze, window, "
                 "override, site (hub/services/readiness.py)"},
        "text": {"type": "string", "description": "The sentence people read: "
                 "'approval 1 of 2: …', 'window opens Sat 2027-01-02 01:00 Europe/Berlin'."},
        "until": _TIME_OR_NULL,
    }),
    "ApprovalEnvelope": {
        "type": "object", "required": ["payload", "payloadType", "signatures"],
        "description": "An approval file written by `tiangong keys approve` (a signed "
                       "envelope, payloadType application/vnd.tiangong.approval.v1+json), "
                       "sent as it is: the hub stores these bytes.",
        "properties": {"payload": _STR, "payloadType": _STR,
                       "signatures": {"type": "array", "items": _obj({"keyid": _STR,
                                                                      "sig": _STR})}},
        "additionalProperties": False,
    },
    "DeploymentList": _list_of("deployments", "Deployment"),
    "Plan": _obj({
        "plan": {"type": "integer", "description": "The plan's sequence."},
        "bundle_id": _STR, "environment": _STR, "agent": _STR_OR_NULL, "created_by": _STR,
        "created_at": _TIME, "expires_at": _TIME,
        "outcomes": {"type": "array", "items": _obj({
            "agent": _STR,
            "status": {"type": "string", "enum": ["passed", "failed", "refused"],
                       "description": "refused: the agent refused the plan after its "
                                      "signature verified (expired, a replay); the "
                                      "summary says why."},
            "summary": _STR, "received_at": _TIME,
            "checks": {"type": "array", "items": _obj({
                "check": _STR_OR_NULL, "status": _STR_OR_NULL, "summary": _STR_OR_NULL,
                "step": _STR_OR_NULL, "target": _STR_OR_NULL})}})},
    }),
    "PlanList": _list_of("plans", "Plan"),
    "Environment": _obj({"name": _STR, "description": _STR,
                         "required_approvals": {"type": "integer", "minimum": 0},
                         "preflight_within_h": {"type": ["integer", "null"]}}),
    "EnvironmentList": _list_of("environments", "Environment"),
    "Agent": _obj({
        "agent_id": _STR, "environment": _STR,
        "status": {"type": "string", "enum": ["enrolled", "revoked"]},
        "presence": {"type": "string", "enum": ["online", "offline", "never", "revoked"]},
        "hostname": _STR, "label": _STR, "enrolled_at": _TIME, "last_seen": _TIME_OR_NULL,
    }),
    "AgentList": _list_of("agents", "Agent"),
    "SecretRequest": _obj({
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
        "value": {"type": "string", "minLength": 1, "description": "Write-only: never "
                  "returned, listed or logged."}}),
    "SecretInfo": _obj({"environment": _STR, "name": _STR, "set_by": _STR, "set_at": _STR}),
    "SecretList": _list_of("secrets", "SecretInfo"),
    "NotificationTarget": _obj({
        "id": {"type": "integer"}, "kind": {"type": "string", "enum": ["webhook", "email"]},
        "environment": _STR,
        "url": {"type": "string", "description": "The webhook's URL, or the e-mail "
                "target's recipients (comma-separated)."},
        "events": {"type": "array", "items": {"type": "string", "enum": _NOTIFY_EVENTS}},
        "secret_file": {"type": "string", "description": "Where the HMAC secret is read "
                        "(empty: unsigned)."},
        "created_by": _STR, "created_at": _TIME}),
    "NotificationTargetRequest": _obj({
        "kind": {"type": "string", "enum": ["webhook", "email"]},
        "url": {"type": "string", "description": "webhook: http(s) URL"},
        "recipients": {"type": "array", "items": _STR,
                       "description": "email: 1 to 20 addresses (local@domain)"},
        "events": {"type": "array", "items": {"type": "string", "enum": _NOTIFY_EVENTS}}},
        required=["events"]),
    "NotificationThresholds": _obj({
        "environment": _STR, "agent_offline_s": _SECONDS_OR_NULL,
        "result_overdue_s": _SECONDS_OR_NULL, "updated_by": _STR,
        "updated_at": _TIME_OR_NULL}),
    "NotificationThresholdsRequest": _obj({
        "agent_offline_s": _SECONDS_OR_NULL, "result_overdue_s": _SECONDS_OR_NULL},
        required=[]),
    "NotificationConfig": _obj({
        "environment": _STR,
        "targets": {"type": "array", "items": _ref("NotificationTarget")},
        "thresholds": _ref("NotificationThresholds")}),
    "Delivery": _obj({
        "id": {"type": "integer"}, "webhook": {"type": "integer"},
        "kind": {"type": "string", "enum": ["webhook", "email"]}, "environment": _STR,
        "url": _STR, "event": {"type": "string", "enum": _NOTIFY_EVENTS},
        "state": {"type": "string",
                  "enum": ["pending", "delivered", "failed", "cancelled"]},
        "attempts": {"type": "integer", "minimum": 0}, "created_at": _TIME,
        "last_attempt_at": _TIME_OR_NULL, "last_status": {"type": ["integer", "null"]},
        "last_error": _STR, "next_attempt_at": _TIME_OR_NULL}),
    "DeliveryList": _list_of("deliveries", "Delivery"),
    "RolloutRequest": _obj({
        "environment": _STR, "selector": {"type": "string", "description": "k=v,k2=v2"},
        "canary": {"type": "integer", "minimum": 0},
        "canary_agents": {"type": "array", "items": _STR},
        "batch_size": {"type": "integer", "minimum": 1},
        "batch_percent": {"type": "integer", "minimum": 1, "maximum": 100},
        "soak_s": {"type": "integer", "minimum": 0}, "manual": {"type": "boolean"},
        "max_failures": {"type": "integer", "minimum": 0},
        "max_failure_percent": {"type": "integer", "minimum": 0, "maximum": 100},
        "on_failure": {"type": "string", "enum": ["pause", "abort"]},
        "auto_rollback": {"type": "boolean"},
    }, required=[]),
    "RolloutAction": _obj({"reason": _STR}, required=[]),
    "ChannelList": _obj({"channels": {"type": "array", "items": _obj({
        "position": {"type": "integer", "minimum": 1}, "channel": _STR,
        "releases": {"type": "array", "items": _STR, "description": "Newest first."},
        "subscribers": {"type": "array", "items": _STR},
        "rule": {"type": "string", "description": "The promotion rule in words."},
        "rule_settings": _obj({
            "required_approvals": {"type": "integer"}, "min_successes": {"type": "integer"},
            "no_failures": {"type": "boolean"}, "soak_seconds": {"type": "integer"},
            "preflight_within_h": {"type": ["integer", "null"]}}),
    })}}),
    "ChannelRequest": _obj({
        "name": {"type": "string", "description": "Stored in upper case."},
        "after": {"type": ["string", "null"], "description": "Insert after this channel "
                  "(default: at the end)."},
        "first": {"type": "boolean", "description": "Insert as the first channel."}},
        required=["name"]),
    "ChannelOrderRequest": _obj({"order": {"type": "array", "items": _STR,
                                           "description": "Every channel once, first to "
                                                          "last."}}),
    "ChannelOrder": _obj({
        "product": _STR, "channel": _STR,
        "releases": {"type": "array", "items": _STR,
                     "description": "remove: the releases the channel held."},
        "order": {"type": "array", "items": _STR, "description": "The channels now, first to "
                  "last."}}, required=["product", "order"]),
    "ChannelRuleRequest": _obj({
        "approvals": {"type": "integer", "minimum": 0},
        "min_successes": {"type": "integer", "minimum": 0},
        "no_failures": {"type": "boolean"},
        "soak": {"type": "string", "description": "90s, 30m, 6h, 2d; 0: off."},
        "preflight_within": {"type": "integer", "minimum": 0, "maximum": 720,
                             "description": "Hours; 0: off."}}, required=[]),
    "ChannelRule": _obj({
        "product": _STR, "channel": _STR, "required_approvals": {"type": "integer"},
        "min_successes": {"type": "integer"}, "no_failures": {"type": "boolean"},
        "soak_seconds": {"type": "integer"}, "preflight_within_h": {"type": ["integer", "null"]},
        "rule": {"type": "string", "description": "The promotion rule in words."}}),
    "SubscriptionRequest": _obj({"channel": _STR}),
    "Subscription": _obj({
        "environment": _STR, "product": _STR, "channel": _STR,
        "previous": {"type": ["string", "null"], "description": "subscribe: the channel it "
                     "replaced."}}, required=["environment", "product", "channel"]),
    "SubscriptionList": _obj({"subscriptions": {"type": "array", "items": _obj({
        "product": _STR, "channel": _STR, "since": _TIME, "by": _STR})}}),
    "PreflightPolicyRequest": _obj({"within_h": {
        "type": ["integer", "null"], "minimum": 1,
        "description": "Hours; null clears the policy."}}),
    "PreflightPolicy": _obj({
        "environment": _STR, "preflight_within_h": {"type": ["integer", "null"]},
        "policy": {"type": "string", "description": "The policy in words."}}),
    "PromotionRequest": _obj({
        "to": {"type": ["string", "null"], "description": "The channel (default: the next)."},
        "comment": _STR}, required=[]),
    "Promotion": _obj({
        "product": _STR, "version": _STR, "from": _STR, "to": _STR,
        "approvers": {"type": "array", "items": _STR},
        "gates": _obj({"environments": {"type": "array", "items": _STR},
                       "succeeded": {"type": "array", "items": _STR},
                       "failed": {"type": "array", "items": _STR},
                       "last_success": _TIME_OR_NULL}),
        "deployments": {"type": "array", "items": _obj({
            "deployment": {"type": "integer"}, "environment": _STR, "agent": _STR_OR_NULL,
            "state": {"type": "string", "enum": list(DEPLOYMENT_STATES)}})}}),
    "PromotionApproval": _obj({
        "product": _STR, "version": _STR, "channel": _STR,
        "approvers": {"type": "array", "items": _STR},
        "required": {"type": "integer", "minimum": 0}}),
    "RecallRequest": _obj({"channel": _STR, "reason": _STR}),
    "Recall": _obj({
        "product": _STR, "version": _STR, "reason": _STR,
        "channels": {"type": "array", "items": _STR},
        **{k: {"type": "array", "items": {"type": "integer"}, "description": d} for k, d in (
            ("cancelled", "Deployments cancelled."),
            ("lost", "Exported bundles declared lost: the site refuses them."),
            ("at_site", "Already at the site: the hub cannot stop them."),
            ("in_export", "Being exported now: recall again afterwards."))}}),
    "PolicyRuleRequest": _obj({
        "spec": {"type": ["string", "object"], "description": "As `tiangong hub windows|"
                 "freezes add` takes it, or the JSON object of docs/bundle-format.md §6.9."},
        "environment": {"type": ["string", "null"]}, "product": {"type": ["string", "null"]},
    }, required=["spec"]),
    "PolicyRule": _obj({
        "id": {"type": "integer"}, "kind": {"type": "string", "enum": ["window", "freeze"]},
        "environment": _STR_OR_NULL, "product": _STR_OR_NULL,
        "spec": {"type": "object"}, "description": _STR, "created_by": _STR,
        "created_at": _TIME_OR_NULL, "ended_at": _TIME_OR_NULL, "ended_by": _STR_OR_NULL}),
    "WindowList": _list_of("windows", "PolicyRule"),
    "FreezeList": _list_of("freezes", "PolicyRule"),
    "ReasonRequest": _obj({"reason": _STR}),
    "Override": _obj({
        "override": {"type": "integer"}, "deployment": {"type": "integer"},
        "state": {"type": "string", "enum": ["requested", "confirmed", "expired"]},
        "requested_by": _STR, "confirmed_by": _STR_OR_NULL, "reason": _STR}),
    "Rollout": _obj({
        "id": {"type": "integer"}, "release": _STR,
        "state": {"type": "string", "enum": ["running", "paused", "succeeded", "aborted",
                                             "cancelled"]},
        "reason": _STR, "selector": {"type": "object"}, "strategy": {"type": "object"},
        "strategy_text": _STR, "current_batch": {"type": "integer"},
        "batches": {"type": "array", "items": {"type": "object", "description":
                    "number, started_at, done_at, confirmed_by, confirmed_at, waiting_for "
                    "(sentences), agents (agent, environment, reached: live|media, "
                    "deployment, state, owes_result_since)"}},
        "failures_accepted": {"type": "integer"}, "rolled_back": {"type": "boolean"},
        "rollbacks": {"type": "array", "description": "The automatic (or manual) rollback "
                      "releases of the rollout's deployments.", "items": _obj({
                          "rolls_back": {"type": "integer"}, "release": _STR,
                          "state": _STR, "inherited_from": _STR_OR_NULL,
                          "deployments": {"type": "array", "items": _obj({
                              "id": {"type": "integer"}, "state": _STR,
                              "agent": _STR_OR_NULL})}})},
        "created_by": _STR, "created_at": _TIME, "updated_at": _TIME,
        "did": {"type": "array", "items": _STR, "description": "What this call did."},
    }),
    "RunRequest": _obj({
        **_MEDIA_REQUEST,
        "kind": {"type": "string", "enum": ["sql", "shell", "k8s", "http"]},
        "agent": {"type": "string", "description": "The enrolled agent that runs it."},
        "file_name": {"type": "string", "description": "The file's name (its suffix is "
                      "kept: run.sql); with content_base64."},
        "content_base64": {"type": "string", "description": "The file, base64 (at most "
                           "16 MiB): sql/shell the script, k8s the manifest, http the request "
                           "body (optional)."},
        "reason": {"type": "string", "description": "Why, at most 1000 characters (into the "
                   "release's description and the audit log)."},
        "connection": {"type": "string", "description": "sql, k8s (required), http."},
        "engine": {"type": "string", "enum": ["postgres", "mysql"], "description": "sql"},
        "interpreter": {"type": "string", "enum": ["sh", "bash", "python"],
                        "description": "shell"},
        "namespace": {"type": "string", "description": "k8s"},
        "wait": {"type": "boolean", "description": "k8s"},
        "url": {"type": "string", "description": "http (required)"},
        "method": {"type": "string", "description": "http (default GET)"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "http"},
        "expect": {"type": "array", "items": {"type": ["integer", "string"]},
                   "description": "http: statuses (200) or classes ('2xx')"},
        "retries": {"type": "integer", "minimum": 0, "description": "http"},
        "timeout": {"type": "string", "description": "How long the step may run (default "
                    "10m)."},
    }, required=["kind", "agent"]),
    "ShipRequest": _obj({"agent": _STR, **_MEDIA_REQUEST}, required=["agent"]),
    "Run": _obj({
        "product": _STR, "version": _STR,
        "state": {"type": "string", "enum": list(RELEASE_STATES)},
        "content_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "environment": _STR, "agent": _STR,
        "shipped": {"type": "boolean", "description": "Queued for the agent (the live "
                    "server delivers it when the agent is online)."},
        "deployment": {"type": ["integer", "null"]},
        "waiting_for": {"type": ["string", "null"], "description": "Not shipped: the "
                        "approvals the environment's ad-hoc policy still wants."},
        "template": {"type": "string", "description": "A template's run: which one."},
        "media": {**_obj({
            "expires_in_s": {"type": "integer", "description": "How long the bundles stay "
                             "valid at the site."},
            "files": {"type": "array", "items": _obj({
                "name": _STR, "deployment": {"type": ["integer", "null"]},
                "sequence": {"type": ["integer", "null"]},
                "content_base64": {"type": "string", "description": "The file (absent when "
                                   "it waits on the Media page)."}},
                required=["name", "deployment", "sequence"])},
            "download": {"type": ["string", "null"], "description": "Too large for one "
                         "answer: the web Media page where the bundles wait for download."},
            "failed": {"type": "array", "items": _obj({"deployment": {"type": "integer"},
                                                       "reason": _STR})}}),
            "description": "`out: true`: the bundles written for media (the bundle of the "
                           "run and whatever else was queued for the agent, and the "
                           "media's INDEX)."},
    }, required=["product", "version", "state", "content_hash", "environment", "agent",
                 "shipped", "deployment", "waiting_for"]),
    "RunProgress": _obj({
        "deployment": {"type": "integer"},
        "state": {"type": "string", "enum": list(DEPLOYMENT_STATES)},
        "done": {"type": "boolean", "description": "Final, and every line read."},
        "agent_online": {"type": "boolean"},
        "last_seq": {"type": "integer", "description": "The cursor for the next poll."},
        "lines": {"type": "array", "items": _obj({
            "seq": {"type": "integer"}, "step": {"type": "integer", "description":
                                                 "0-based"},
            "stream": _STR, "text": _STR})},
        "result": {**_obj({
            "status": _STR, "summary": _STR, "problem": _STR_OR_NULL,
            "steps": {"type": "array", "items": _obj({
                "step": {"type": "integer"}, "name": _STR, "status": _STR,
                "summary": _STR, "exit_code": {"type": ["integer", "null"]}})}}),
            "type": ["object", "null"], "description": "Once done: the verified result."},
    }),
    "Template": _obj({
        "name": _STR, "version": {"type": "integer", "minimum": 1},
        "kind": {"type": "string", "enum": ["sql", "shell", "k8s", "http"]},
        "description": _STR,
        "params": {"type": "array", "items": {"type": "object", "description": "name, type "
                   "(string, int, bool, enum, secret-ref), description, default, choices (an "
                   "enum's values; a secret-ref's allowed secrets), min, max, max_length"}},
        "step": {"type": "object", "description": "The step's own fields."},
        "file": _STR, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "created_by": _STR, "created_at": _TIME,
        "text": {"type": "string", "description": "show: the file."},
        "described": {"type": "array", "items": _STR,
                      "description": "show: each parameter as people read it."},
    }, required=["name", "version", "kind", "description", "params", "step", "file",
                 "sha256", "created_by", "created_at"]),
    "TemplateList": _list_of("templates", "Template"),
    "TemplateRequest": _obj({
        "definition_name": {"type": "string", "description": "The definition file's name "
                            "(errors name it)."},
        "definition": {"type": "string", "description": "Its TOML text."},
        "file_name": {"type": "string", "description": "The file it names (`file`)."},
        "content_base64": {"type": "string", "description": "That file, base64."}},
        required=["definition_name", "definition"]),
    "TemplateRunRequest": _obj({
        **_MEDIA_REQUEST,
        "agent": _STR, "version": {"type": "integer", "minimum": 1},
        "params": {"type": "object", "description": "name -> value (string, number or "
                   "boolean), checked against the template's parameters."}},
        required=["agent"]),
    "TemplateReleaseRequest": _obj({
        "product": _STR, "release_version": _STR,
        "version": {"type": "integer", "minimum": 1}, "params": {"type": "object"}},
        required=["product", "release_version"]),
    "TemplateRelease": _obj({
        "template": _STR, "values": {"type": "object"},
        "files": {"type": "object", "description": "file name -> its bytes, base64: "
                  "release.toml and the rendered file."}}),
    "Me": _obj({
        "user": _STR, "display_name": _STR,
        "roles": {"type": "array", "items": _obj({"role": _STR,
                                                  "environment": _STR_OR_NULL})},
        "token": _obj({
            "id": {"type": "integer"}, "prefix": {"type": "string", "pattern": "^tgp_"},
            "name": _STR,
            "scopes": {"type": "array",
                       "items": {"type": "string", "enum": list(API_TOKEN_SCOPES)}},
            "expires_at": _TIME}),
    }),
    "OpenApiDocument": {"type": "object", "required": ["openapi", "info", "paths"]},
}

_STATUS_TEXT = {200: "OK", 201: "Created", 400: "Bad request", 401: "No valid token",
                403: "Token scope or the person's roles do not allow this",
                404: "Not found (or outside the caller's scope)",
                409: "Conflict or wrong state", 413: "Upload too large",
                500: "The hub failed (its log says why)"}


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op.endpoint, "summary": op.summary,
        "description": op.description,
        "responses": {
            str(status): {"description": _STATUS_TEXT.get(status, "Answer"),
                          "content": {"application/json": {"schema": _ref(name)}}}
            for status, name in sorted(op.responses.items())},
    }  # fmt: skip
    if op.scope is None:
        out["security"] = []
    else:
        out["security"] = [{"token": []}]
        out["x-tiangong-scope"] = op.scope
        out["description"] = f"{op.description}\n\nToken scope: `{op.scope}`.".strip()
    if op.params:
        out["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
             "description": p.description, "schema": p.schema} for p in op.params]
    if op.body is not None:
        if op.body.startswith("multipart:"):
            field = op.body.split(":", 1)[1]
            schema = {"type": "object", "required": [field], "properties": {
                field: {"type": "string", "contentMediaType": "application/octet-stream",
                        "description": "The release archive."}}}
            out["requestBody"] = {"required": True,
                                  "content": {"multipart/form-data": {"schema": schema}}}
        else:
            out["requestBody"] = {"required": False, "content": {
                "application/json": {"schema": _ref(op.body)}}}
    return out


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every registered operation."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    scopes = "\n".join(f"* `{s}`: {SCOPE_HELP[s]}" for s in API_TOKEN_SCOPES)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Tiangong hub API", "version": __version__,
            "description": (
                "Personal API tokens (issued on the hub's web UI, page API tokens) in "
                "`Authorization: Bearer tgp_…`; browser sessions are not accepted. A call "
                "needs the token's scope and the person's roles. Scopes:\n\n" + scopes),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "bearerFormat": "tgp_<10 hex>_<secret>"}},
        },
    }
