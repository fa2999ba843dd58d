"""Script and job templates (issue 16 §2): a step (``sql``, ``shell``, ``k8s`` or ``http``)
with its file and typed parameters, stored on the hub in numbered versions, instantiated
into an ad-hoc run or written out as a release directory.

A definition is a TOML file (docs/operations.md "Job templates")::

    name = "purge-sessions"
    kind = "sql"                      # sql | shell | k8s | http
    file = "purge.sql"                # next to the definition (http: the body, optional)
    description = "delete old sessions"
    [step]                            # the step's own fields (release-format.md §3)
    engine = "postgres"
    connection = "app-db"
    [[params]]
    name = "days"
    type = "int"                      # string | int | bool | enum | secret-ref
    min = 1
    max = 365
    default = 30

:func:`add_template` checks it (parameters, placeholders, the step as a release would have
it) and stores it as the next version of ``name`` (``template.add``, audited, developers and
admins). :func:`instantiate` checks the values given against the parameters —
**before anything is created**: a bad value creates no release, queues nothing, uses no
sequence — and renders the step and its file (:mod:`hub.services.template_params` says how
values are substituted). :func:`run_template` hands that to :func:`hub.services.adhoc.
create_adhoc_release` (``template.run``, audited, naming the release).

This module does not ship anything itself: the ad-hoc path does (its policy, export, live).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bundle.errors import BundleError
from bundle.release import parse_release_toml
from hub.db import JobTemplate
from hub.errors import NotFoundError, RefusalEvent, ValidationError
from hub.services import audit
from hub.services.adhoc import FILE_FIELD, AdhocRun, create_adhoc_release, run_file_name
from hub.services.context import ServiceContext
from hub.services.generated import release_toml
from hub.services.template_params import (
    ParamSpec,
    check_values,
    json_literal,
    misplaced_placeholder,
    misplaced_yaml_placeholder,
    parse_params,
    placeholders,
    render,
    render_sql,
    secret_not_allowed,
    shell_env,
    url_text,
    yaml_literal,
)
from hub.services.users import require

__all__ = [
    "MAX_DEFINITION_BYTES",
    "MAX_TEMPLATE_BYTES",
    "TEMPLATE_KINDS",
    "Instance",
    "add_template",
    "get_template",
    "instantiate",
    "list_templates",
    "read_definition",
    "release_of",
    "run_template",
    "specs_of",
    "template_json",
]

TEMPLATE_KINDS = ("sql", "shell", "k8s", "http")
MAX_TEMPLATE_BYTES = 60 * 1024  # bytes of a template's file (stored in the database)
MAX_DEFINITION_BYTES = 64 * 1024  # bytes of a definition file
_TOP = ("name", "kind", "file", "description", "step", "params")
_NOT_IN_STEP = ("name", "kind", "script", "manifests", "body")  # the template sets them
#: http: the only [step] fields that may hold a {{placeholder}} (url: percent-encoded
#: values; secret_headers: exactly "{{p}}" naming a secret-ref parameter)
_HTTP_PLACEHOLDER_FIELDS = ("url", "secret_headers")
_TEMPLATE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Definition:
    """A parsed definition file."""

    name: str
    kind: str
    description: str
    step: dict[str, Any]
    params: tuple[ParamSpec, ...]
    file_name: str
    content: bytes


def _name(value: Any, where: str) -> str:
    text = value if isinstance(value, str) else ""
    if not _TEMPLATE_NAME.fullmatch(text):
        raise ValidationError(f"{where}: name must be 1-32 lower-case letters, digits, '_' or "
                              "'-', starting with a letter")
    return text


def read_definition(path: Path) -> Definition:
    """Parse the definition file ``path`` and read its file (next to it).

    Raises:
        ValidationError: naming ``path``, the key and the rule.
    """
    where = str(path)
    try:
        data = path.read_bytes()[: MAX_DEFINITION_BYTES + 1]
    except OSError as exc:
        raise ValidationError(f"{where}: {exc.strerror}") from exc
    if len(data) > MAX_DEFINITION_BYTES:
        raise ValidationError(f"{where}: larger than {MAX_DEFINITION_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"{where}: not a TOML file: {exc}") from exc
    unknown = sorted(set(doc) - set(_TOP))
    if unknown:
        raise ValidationError(f"{where}: unknown key(s) {', '.join(unknown)} (a definition "
                              f"has {', '.join(_TOP)})")
    name = _name(doc.get("name"), where)
    kind = doc.get("kind")
    if kind not in TEMPLATE_KINDS:
        raise ValidationError(f"{where}: kind must be one of {', '.join(TEMPLATE_KINDS)}, "
                              f"not {kind!r}")
    file = doc.get("file")
    if file is None and kind == "http":
        file, content = "", b""  # a request without a body
    elif not isinstance(file, str) or not file or "/" in file or file.startswith("."):
        raise ValidationError(f"{where}: file must name a file next to the definition")
    else:
        content = _read_file(path.parent / file, where)
    step = doc.get("step", {})
    if not isinstance(step, dict):
        raise ValidationError(f"{where}: [step] must be a table")
    description = doc.get("description", "")
    if not isinstance(description, str) or len(description) > 4096:
        raise ValidationError(f"{where}: description must be at most 4096 characters")
    return Definition(name, str(kind), description, dict(step), parse_params(
        doc.get("params"), where), file, content)


def _read_file(source: Path, where: str) -> bytes:
    try:
        with source.open("rb") as fh:
            content = fh.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as exc:
        raise ValidationError(f"{where}: file {source}: {exc.strerror}") from exc
    if len(content) > MAX_TEMPLATE_BYTES:
        raise ValidationError(f"{where}: file {source} is larger than {MAX_TEMPLATE_BYTES} "
                              "bytes")
    return content


def _check_placeholders(text: str, where: str, what: str, names: set[str]) -> None:
    unknown = [n for n in placeholders(text) if n not in names]
    if unknown:
        declared = ", ".join(sorted(names)) or "none"
        raise ValidationError(f"{where}: {what}: placeholder {{{{{unknown[0]}}}}} names no "
                              f"parameter (declared: {declared})")


def _file_text(d: Definition, where: str) -> str:
    try:
        return d.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{where}: file {d.file_name} is not UTF-8 text") from exc


def _check_http(d: Definition, where: str, values: set[str], secrets: set[str]) -> None:
    """An http template: placeholders in the URL (after its host) and the body stand for
    values; ``secret_headers`` values are a secret's name or exactly ``{{p}}`` of a
    secret-ref parameter; no other field holds one."""
    for key, value in d.step.items():
        if key not in _HTTP_PLACEHOLDER_FIELDS and placeholders(json.dumps(value)):
            raise ValidationError(f"{where}: [step], field {key}: takes no {{{{placeholder}}}} "
                                  f"(only {', '.join(_HTTP_PLACEHOLDER_FIELDS)} and the body "
                                  "do)")
    url = d.step.get("url")
    if isinstance(url, str):
        _check_placeholders(url, where, "[step], field url", values)
        if placeholders(url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0]):
            raise ValidationError(f"{where}: [step], field url: a placeholder may stand in the "
                                  "path or the query, not in the scheme or the host")
    headers = d.step.get("secret_headers")
    for header, value in (headers.items() if isinstance(headers, dict) else ()):
        named = placeholders(str(value))
        if named and (str(value).strip() != f"{{{{{named[0]}}}}}" or named[0] not in secrets):
            raise ValidationError(
                f"{where}: [step], field secret_headers.{header}: a placeholder there is the "
                "whole value and names a secret-ref parameter (declared: "
                f"{', '.join(sorted(secrets)) or 'none'})")
    if d.file_name:
        _check_placeholders(_file_text(d, where), where, f"file {d.file_name}", values)


def _check_definition(d: Definition, where: str) -> None:
    """The rules a definition must meet beyond its syntax (placeholders, where they stand,
    secret-refs, the step as a release would carry it, the rendered file)."""
    clash = sorted(set(d.step) & set(_NOT_IN_STEP))
    if clash:
        raise ValidationError(f"{where}: [step] may not set {', '.join(clash)} (the template "
                              "sets them)")
    names = {p.name for p in d.params}
    secrets = {p.name for p in d.params if p.type == "secret-ref"}
    if d.kind in ("sql", "k8s") and secrets:
        what = "a SQL template" if d.kind == "sql" else "a Kubernetes template"
        raise ValidationError(
            f"{where}: parameter {sorted(secrets)[0]}: {what} cannot take a secret-ref (the "
            "hub never sees a secret's value); use a connection whose password is a secret")
    unlisted = [p.name for p in d.params if p.type == "secret-ref" and not p.choices]
    if unlisted:
        raise ValidationError(
            f"{where}: parameter {unlisted[0]}: a secret-ref needs 'choices', the secrets a run "
            "may name (choices = [\"api-token\"]); without them a run could hand the step any "
            "secret of the environment")
    if d.kind in ("sql", "k8s"):
        text = _file_text(d, where)
        _check_placeholders(text, where, f"file {d.file_name}", names)
        misplaced = (misplaced_placeholder(text, str(d.step.get("engine", "postgres")))
                     if d.kind == "sql" else misplaced_yaml_placeholder(text))
        if misplaced is not None:
            raise ValidationError(f"{where}: file {d.file_name}: {misplaced}")
    elif d.kind == "http":
        _check_http(d, where, names - secrets, secrets)
    # The step as a release would carry it, checked by the release format's own rules, and
    # the file rendered with sample values, checked as the agent would read it.
    sample = {p.name: p.default if p.default is not None else _sample(p) for p in d.params}
    step, rendered = _render(d.kind, d.step, d.file_name, d.content, sample,
                             [sample[n] for n in sorted(secrets)])
    try:
        parse_release_toml(release_toml("template", "0.0.1", "check", [step]).encode(),
                           [run_file_name(d.file_name)] if d.file_name else [], source=where)
    except BundleError as exc:
        raise ValidationError(str(exc).replace("step 1 ('template')", "[step]")) from exc
    if d.kind == "k8s":
        _check_manifest(rendered, where, d.file_name)
    elif d.kind == "http" and d.file_name and placeholders(_file_text(d, where)):
        try:
            json.loads(rendered)
        except ValueError as exc:
            raise ValidationError(f"{where}: file {d.file_name}: with placeholders the body "
                                  f"must be JSON, each placeholder a whole value: {exc}"
                                  ) from None


def _check_manifest(rendered: bytes, where: str, file_name: str) -> None:
    """The manifest, rendered with sample values, as Kubernetes objects: YAML documents that
    are mappings with apiVersion, kind and metadata.name (the agent checks the same before
    it applies anything; a template that could never apply is refused when added)."""
    import yaml

    try:
        docs = [doc for doc in yaml.safe_load_all(rendered.decode("utf-8")) if doc is not None]
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValidationError(f"{where}: file {file_name}: not a YAML manifest once its "
                              f"placeholders are values: {exc}") from None
    if not docs:
        raise ValidationError(f"{where}: file {file_name}: holds no Kubernetes object")
    for number, doc in enumerate(docs, start=1):
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        if (not isinstance(doc, dict) or not isinstance(meta, dict)
                or not all(isinstance(doc.get(k), str) and doc[k] for k in ("apiVersion",
                                                                             "kind"))
                or not isinstance(meta.get("name"), str) or not meta["name"]):
            raise ValidationError(f"{where}: file {file_name}: document {number} is not a "
                                  "Kubernetes object (a mapping with apiVersion, kind and "
                                  "metadata.name)")


def _sample(p: ParamSpec) -> Any:
    if p.type in ("enum", "secret-ref") and p.choices:
        return p.choices[0]
    return {"int": p.min if p.min is not None else 0, "bool": False}.get(p.type, "x")


def _render(kind: str, fixed: Mapping[str, Any], file_name: str, content: bytes,
            values: Mapping[str, Any], secrets: Sequence[str] = ()
            ) -> tuple[dict[str, Any], bytes]:
    """The step (its file named ``run<suffix>`` in the kind's field: sql/shell ``script``,
    k8s ``manifests``, http ``body``; none for an http template without a body; the
    ``secrets`` named by secret-ref values added to its own) and the file's rendered
    bytes."""
    step: dict[str, Any] = {"name": "template", "kind": kind, **fixed}
    if secrets:
        step["secrets"] = sorted(set(fixed.get("secrets", [])) | set(secrets))
    if file_name:
        name = run_file_name(file_name)
        step[FILE_FIELD[kind]] = [name] if kind == "k8s" else name
    if kind == "sql":
        engine = str(fixed.get("engine", "postgres"))
        return step, render_sql(content.decode("utf-8"), values, engine).encode("utf-8")
    if kind == "k8s":
        text = content.decode("utf-8")
        problem = misplaced_yaml_placeholder(text)
        if problem is not None:  # checked when added; a stored template is checked again
            raise ValidationError(f"the manifest: {problem}")
        return step, render(text, values, yaml_literal).encode("utf-8")
    if kind == "http":
        if isinstance(fixed.get("url"), str):
            step["url"] = render(fixed["url"], values, url_text)
        if isinstance(fixed.get("secret_headers"), dict):
            step["secret_headers"] = {h: render(str(v), values, str)
                                      for h, v in fixed["secret_headers"].items()}
        if not file_name:
            return step, b""
        return step, render(content.decode("utf-8"), values, json_literal).encode("utf-8")
    env = {**dict(fixed.get("env") or {}), **shell_env(values)}
    if env:
        step["env"] = env
    return step, content


def template_json(t: JobTemplate, *, text: bool = False) -> dict[str, Any]:
    """A template as ``hub templates list|show --json`` and the API show it (``text``: its
    file, as UTF-8 with replacement characters)."""
    row = {"name": t.name, "version": t.version, "kind": t.kind,
           "description": t.description, "params": t.params, "step": t.step,
           "file": t.file_name, "sha256": t.sha256, "created_by": t.created_by,
           "created_at": t.created_at.isoformat()}
    if text:
        row["text"] = t.content.decode("utf-8", errors="replace")
    return row


def specs_of(template: JobTemplate) -> tuple[ParamSpec, ...]:
    return parse_params(template.params, f"template {template.name} v{template.version}")


def add_template(ctx: ServiceContext, path: Path) -> JobTemplate:
    """Store the definition ``path`` as the next version of its template; audited.

    Raises:
        PermissionDeniedError (developers and admins), ValidationError (naming the file).
    """
    require(ctx.actor, "release.create")
    d = read_definition(path)
    _check_definition(d, str(path))
    latest = ctx.session.scalar(select(func.max(JobTemplate.version))
                                .where(JobTemplate.name == d.name)) or 0
    row = JobTemplate(name=d.name, version=latest + 1, kind=d.kind, description=d.description,
                      step=d.step, params=[p.to_json() for p in d.params],
                      file_name=d.file_name, content=d.content,
                      sha256=hashlib.sha256(d.content).hexdigest(),
                      created_by=ctx.actor_name, created_at=ctx.now())
    ctx.session.add(row)
    ctx.session.flush()
    audit.record(ctx, "template.add", "template", f"{row.name} v{row.version}",
                 {"kind": row.kind, "sha256": row.sha256, "file": row.file_name,
                  "params": [p.name for p in d.params]})
    return row


def get_template(ctx: ServiceContext, name: str, version: int | None = None) -> JobTemplate:
    """Version ``version`` of template ``name`` (the newest when None).

    Raises:
        PermissionDeniedError (view), NotFoundError.
    """
    require(ctx.actor, "view")
    query = select(JobTemplate).where(JobTemplate.name == name)
    if version is not None:
        query = query.where(JobTemplate.version == version)
    row: JobTemplate | None = ctx.session.scalar(
        query.order_by(JobTemplate.version.desc()).limit(1))
    if row is None:
        which = f"template {name[:64]!r}" + (f" version {version}" if version is not None else "")
        raise NotFoundError(f"{which} not found (`tiangong hub templates list`)")
    return row


def list_templates(ctx: ServiceContext) -> list[JobTemplate]:
    """The newest version of every template, by name."""
    require(ctx.actor, "view")
    newest = (select(JobTemplate.name, func.max(JobTemplate.version).label("v"))
              .group_by(JobTemplate.name).subquery())
    return list(ctx.session.scalars(
        select(JobTemplate).join(newest, (JobTemplate.name == newest.c.name)
                                 & (JobTemplate.version == newest.c.v))
        .order_by(JobTemplate.name)))


@dataclass(frozen=True)
class Instance:
    """A template with its values: the step and its rendered file."""

    template: JobTemplate
    values: dict[str, Any]
    step: dict[str, Any]
    content: bytes

    @property
    def file_name(self) -> str | None:
        """The rendered file's name in the release (None: an http template without a
        body)."""
        return run_file_name(self.template.file_name) if self.template.file_name else None

    @property
    def label(self) -> str:
        return f"template {self.template.name} v{self.template.version}"


def instantiate(template: JobTemplate, given: Mapping[str, str]) -> Instance:
    """Check ``given`` (name -> text) against the template's parameters and render it.

    Raises:
        ValidationError: ``template purge-sessions v2: parameter days: 'x' is not an
        integer`` (and the other rules of :func:`~hub.services.template_params.check_values`);
        a secret-ref naming a secret not among its ``choices`` is a refusal the audit log
        keeps (``template.refused``: the parameter, the secret, the allowed ones).
    """
    where = f"template {template.name} v{template.version}"
    specs = specs_of(template)
    values = check_values(specs, given, where)
    refused = secret_not_allowed(specs, values, where)
    if refused is not None:
        spec, secret, message = refused
        raise ValidationError(message, audit=RefusalEvent(
            "template.refused", "template", f"{template.name} v{template.version}",
            {"parameter": spec.name, "secret": secret, "allowed": list(spec.choices)}))
    secrets = [values[p.name] for p in specs if p.type == "secret-ref"]
    step, content = _render(template.kind, template.step, template.file_name,
                            template.content, values, secrets)
    step["name"] = f"{template.name} v{template.version}"
    return Instance(template, values, step, content)


def run_template(ctx: ServiceContext, instance: Instance, agent_id: str,
                 work_dir: Path) -> AdhocRun:
    """Create and submit the ad-hoc run of ``instance`` for ``agent_id`` (its rendered file
    is written into ``work_dir``, a private directory of the caller); audited
    ``template.run`` with the values (secret-refs are names, never values).

    Raises:
        what :func:`hub.services.adhoc.create_adhoc_release` raises.
    """
    field = FILE_FIELD[instance.template.kind]
    script = None
    if instance.file_name is not None:
        script = work_dir / instance.file_name
        script.write_bytes(instance.content)
    step = {k: v for k, v in instance.step.items() if k != field}
    made = create_adhoc_release(ctx, agent_id, step, script, origin=instance.label)
    t = instance.template
    audit.record(ctx, "template.run", "template", f"{t.name} v{t.version}",
                 {"release": made.release.label, "agent": agent_id,
                  "values": instance.values, "content_hash": made.release.content_hash})
    return made


def release_of(ctx: ServiceContext, instance: Instance, product: str, version: str
               ) -> dict[str, bytes]:
    """The files of a release directory for ``instance`` (``release.toml`` and the rendered
    file), for the normal release path; audited ``template.release``. The release itself
    is created (and checked, and audited) by ``releases create``.

    Raises:
        PermissionDeniedError (developers and admins).
        ValidationError: ``product`` or ``version`` breaks the rule of ``releases create``.
    """
    from bundle.errors import ReleaseFormatError
    from bundle.release import RELEASE_TOML, parse_release_toml

    require(ctx.actor, "release.create")
    t = instance.template
    toml = release_toml(product, version, f"{instance.label}: {t.description}"[:4096],
                        [instance.step])
    files = {RELEASE_TOML: toml.encode("utf-8")}
    if instance.file_name is not None:
        files[instance.file_name] = instance.content
    try:  # the checks of `releases create`, so no unusable release.toml is handed out
        parse_release_toml(files[RELEASE_TOML], set(files) - {RELEASE_TOML},
                           f"{instance.label}: {RELEASE_TOML}")
    except ReleaseFormatError as exc:
        raise ValidationError(str(exc)) from exc
    audit.record(ctx, "template.release", "template", f"{t.name} v{t.version}",
                 {"product": product, "version": version, "values": instance.values})
    return files
