"""The API's job templates (docs/operations.md "Job templates", issue 16 §2): list, show,
add a version, run one on an agent, and write one out as a release directory — what
``tiangong hub templates list|show|add|run|release`` do, through the same services
(:mod:`hub.services.templates`): every definition rule when it is added, every value checked
before anything is created, the run going the ad-hoc way (:mod:`web.api.runs`), everything
audited as the token's owner.

A definition travels as its text and its file (base64) with their names; the hub writes
both into a private temporary directory and reads them with
:func:`hub.services.templates.read_definition`, so a refusal names the caller's file, never
the directory.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Any

from flask import g, request

from hub.app import MAX_ROW_ID
from hub.errors import ValidationError
from hub.services.templates import (
    MAX_DEFINITION_BYTES,
    MAX_TEMPLATE_BYTES,
    add_template,
    get_template,
    instantiate,
    list_templates,
    release_of,
    run_template,
    specs_of,
    template_json,
)
from hub.services.tokens import require_scope
from web.api import ApiError, Param, api_ctx, operation
from web.api.routes import _body
from web.api.runs import MAX_FILE_NAME_CHARS, MEDIA_FIELDS, agent_for_run, run_json, ship

__all__: list[str] = []

_NAME = Param("name", "path", "The template's name, e.g. `purge-sessions`.")
_VERSION_Q = Param("version", "query", "A version (default: the newest).",
                   schema={"type": "integer"}, required=False)


def _plain(name: Any, field: str) -> str:
    if (not isinstance(name, str) or not name or Path(name).name != name
            or name in (".", "..") or "\x00" in name or len(name) > MAX_FILE_NAME_CHARS):
        raise ApiError(400, "bad_request", f"field {field!r} must be a plain file name")
    return name


def _values(doc: dict[str, Any]) -> dict[str, str]:
    """``params`` as the texts ``--param NAME=VALUE`` gives (numbers and booleans are
    written as text; the template's types decide)."""
    raw = doc.get("params") or {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | str):
            out[key] = str(value)
        else:
            raise ApiError(400, "bad_request", f"parameter {key[:64]!r}: a value is a string, "
                           "a number or a boolean")
    return out


def _version(doc: dict[str, Any]) -> int | None:
    version = doc.get("version")
    if version is not None and (isinstance(version, bool) or not 1 <= version <= MAX_ROW_ID):
        raise ApiError(400, "bad_request", "field 'version' is a version number (1, 2, …)")
    return version


@operation("/templates", "GET", scope="read", summary="List job templates",
           responses={200: "TemplateList"})
def templates_list() -> Any:
    """The newest version of every template, by name."""
    return {"templates": [template_json(t) for t in list_templates(api_ctx())]}


@operation("/templates/<name>", "GET", scope="read", summary="Show a job template",
           responses={200: "Template"}, params=(_NAME, _VERSION_Q), errors=(400, 404))
def templates_show(name: str) -> Any:
    """One version (default the newest): its step, parameters (`described`: as people read
    them) and file (`text`)."""
    raw = request.args.get("version")
    if raw is not None and not (raw.isdecimal() and 1 <= int(raw) <= MAX_ROW_ID):
        raise ApiError(400, "bad_request", "query 'version' must be a version number (1, 2, …)")
    t = get_template(api_ctx(), name, int(raw) if raw is not None else None)
    return {**template_json(t, text=True), "described": [p.describe() for p in specs_of(t)]}


@operation("/templates", "POST", scope="releases:write",
           summary="Add a job template (the next version of its name)",
           responses={201: "Template"}, body="TemplateRequest", errors=(400,))
def templates_add() -> Any:
    """`definition` (the TOML text of the definition file, named `definition_name`) and its
    file (`file_name`, `content_base64`; an http template may have none), checked by every
    rule of `tiangong hub templates add`; developers and admins."""
    doc = _body({"definition_name": str, "definition": str, "file_name": str,
                 "content_base64": str})
    definition_name = _plain(doc.get("definition_name"), "definition_name")
    text, content = doc.get("definition"), doc.get("content_base64")
    if text is None or (content is None) != (doc.get("file_name") is None):
        raise ApiError(400, "bad_request", "field 'definition' is required, and the file it "
                       "names as 'file_name' and 'content_base64' together (an http "
                       "template may have none)")
    if len(text) > MAX_DEFINITION_BYTES or len(content or "") > MAX_TEMPLATE_BYTES * 4 // 3 + 4:
        raise ApiError(400, "bad_request", f"a definition is at most {MAX_DEFINITION_BYTES} "
                       f"bytes and its file at most {MAX_TEMPLATE_BYTES}")
    with tempfile.TemporaryDirectory(prefix="tiangong-api-template-") as work:
        path = Path(work) / definition_name
        path.write_text(text, encoding="utf-8")
        if content is not None:
            file_name = _plain(doc.get("file_name"), "file_name")
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_request",
                               "field 'content_base64' is not base64") from None
            if file_name != definition_name:
                (Path(work) / file_name).write_bytes(data)
        try:
            row = add_template(api_ctx(), path)
        except ValidationError as exc:
            raise ValidationError(str(exc).replace(f"{work}/", "")) from None
    return template_json(row), 201


@operation("/templates/<name>/runs", "POST", scope="deploy",
           summary="Run a job template on one agent", responses={201: "Run"},
           params=(_NAME,), body="TemplateRunRequest", errors=(400, 404, 409))
def templates_run(name: str) -> Any:
    """`tiangong hub templates run`: the values (`params`) are checked against the
    template's parameters before anything is created; then the ad-hoc run of `POST /runs`
    (its policy, `shipped` or `waiting_for`). Scopes `deploy` and `releases:write`; the
    developer role and operator in the agent's environment (or admin)."""
    doc = _body({"agent": str, "params": dict, "version": int, **MEDIA_FIELDS})
    require_scope(g.api_token, "releases:write")
    agent_id = doc.get("agent")
    if not agent_id:
        raise ApiError(400, "bad_request", "field 'agent' is required")
    sc = api_ctx()
    agent_for_run(sc, agent_id)
    instance = instantiate(get_template(sc, name, _version(doc)), _values(doc))
    with tempfile.TemporaryDirectory(prefix="tiangong-api-template-") as work:
        made = run_template(sc, instance, agent_id, Path(work))
    shipped, waiting, media = ship(sc, made.release, agent_id, doc)
    extra = {} if media is None else {"media": media}
    return run_json(made.release, made.environment, agent_id, shipped, waiting,
                    template=instance.label, **extra), 201


@operation("/templates/<name>/release", "POST", scope="releases:write",
           summary="A job template with its values as release files",
           responses={200: "TemplateRelease"}, params=(_NAME,),
           body="TemplateReleaseRequest", errors=(400, 404))
def templates_release(name: str) -> Any:
    """`tiangong hub templates release`: `release.toml` and the rendered file (base64) of
    a release `product` `release_version`, for the normal release path (upload it with
    `POST /releases`); audited `template.release`."""
    doc = _body({"product": str, "release_version": str, "params": dict, "version": int})
    product, version = doc.get("product"), doc.get("release_version")
    if not product or not version:
        raise ApiError(400, "bad_request", "fields 'product' and 'release_version' are "
                       "required")
    sc = api_ctx()
    instance = instantiate(get_template(sc, name, _version(doc)), _values(doc))
    files = release_of(sc, instance, product, version)
    return {"template": instance.label, "values": instance.values,
            "files": {n: base64.b64encode(b).decode() for n, b in files.items()}}
