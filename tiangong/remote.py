"""``tiangong remote``: the hub's HTTP API (``/api/v1``, docs/api.md) from anywhere, acting as
the person whose personal API token it sends.

Why a group of its own rather than ``tiangong hub --url …``: ``tiangong hub`` commands open
the hub's database and keys on the hub's machine (local-admin mode, anybody may type any
name); ``tiangong remote`` commands hold no hub secret, authenticate as one person with a
token issued on the web UI, and can do only what that token's scopes and that person's roles
allow. Keeping them apart keeps each command's trust obvious, and ``tiangong remote`` needs
only click and the standard library (no hub extra).

Options (before the command): ``--url`` (``TIANGONG_HUB_URL``), ``--token-file``
(``TIANGONG_TOKEN_FILE``, default ``~/.tiangong/token``; refused when group or others may
read it, like ssh refuses a key), ``--ca-file`` (``TIANGONG_HUB_CA_FILE``: the CA of a hub
behind a TLS proxy with a private CA), ``--timeout``. ``http://`` is accepted only for a
loopback host: a token must not cross a network in clear.

Exit codes: 0 success; 1 the hub refused (the message is the hub's: scope, role, state);
2 usage, token file or connection trouble.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import ssl
import stat
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from tiangong import channel_text, options, rule_text, run_text, secret_input
from tiangong.output import done, emit

__all__ = ["remote"]

DEFAULT_TOKEN_FILE = "~/.tiangong/token"  # noqa: S105 - a path, not a secret
DEFAULT_TIMEOUT_S = 120.0  # seconds per HTTP request
MAX_TOKEN_FILE_BYTES = 4096  # bytes: a token is ~60 characters
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # bytes of one JSON answer read at most
CHUNK_BYTES = 1024 * 1024  # bytes per chunk of an upload
MAX_SIGNATURE_BYTES = 32 * 1024  # bytes of an approval file (signing.approvals)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_LOOPBACK_NAMES = {"localhost"}


class RemoteError(Exception):
    """Trouble before or around the call (exit 2), or the hub's refusal (``refused``, 1)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    """The token in ``path`` (one line).

    Raises:
        RemoteError: missing, unreadable, readable by group or others, empty or too large.
    """
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise RemoteError(
                f"token file {path}: group or others may access it (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`")
        if info.st_size > MAX_TOKEN_FILE_BYTES:
            raise RemoteError(f"token file {path}: {info.st_size} bytes, more than a token "
                              f"(at most {MAX_TOKEN_FILE_BYTES})")
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise RemoteError(f"token file {path}: {exc.strerror or exc}; issue a token on the "
                          "hub's web UI (API tokens) and save it there") from exc
    if not text or "\n" in text:
        raise RemoteError(f"token file {path}: expected one line holding the token (tgp_…)")
    return text


@dataclass
class Client:
    """One hub API endpoint and the token to send."""

    url: str
    token_file: Path
    ca_file: Path | None
    timeout: float

    def _base(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"--url {self.url!r}: give the hub's address, e.g. "
                              "https://hub.example.org")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise RemoteError(f"--url {self.url}: plain http sends the token in clear; use "
                              "https (http is allowed to a loopback address only)")
        return self.url.rstrip("/") + "/api/v1"

    def _context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https:"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def call(self, method: str, path: str, *, body: Any = None, upload: Path | None = None,
             raw: bytes | None = None) -> Any:
        """The JSON answer of ``method path``.

        Raises:
            RemoteError: bad URL or token file, connection trouble, a non-JSON answer, or
                the hub's refusal (``refused``: its status, code and message).
        """
        url = self._base() + path
        headers = {"Authorization": f"Bearer {read_token(self.token_file.expanduser())}",
                   "Accept": "application/json"}
        data: Any = None
        if upload is not None:
            boundary = uuid.uuid4().hex
            head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; "
                    f"filename=\"{upload.name}\"\r\nContent-Type: application/octet-stream"
                    "\r\n\r\n").encode()
            tail = f"\r\n--{boundary}--\r\n".encode()
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
            headers["Content-Length"] = str(len(head) + upload.stat().st_size + len(tail))
            data = _chunks(head, upload, tail)
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        # _base() allowed http(s) only
        request = urllib.request.Request(url, data=data, headers=headers,  # noqa: S310
                                         method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,  # noqa: S310
                                        context=self._context()) as resp:
                return _json(resp, url)
        except urllib.error.HTTPError as exc:
            answer = _json(exc, url, strict=False)
            if isinstance(answer, dict) and "message" in answer:
                raise RemoteError(f"the hub refused ({exc.code} {answer.get('error')}): "
                                  f"{answer['message']}", refused=True) from None
            raise RemoteError(f"{method} {url}: HTTP {exc.code} {exc.reason}",
                              refused=True) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach the hub at {self.url}: {reason}") from exc


def _chunks(head: bytes, path: Path, tail: bytes) -> Iterator[bytes]:
    yield head
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk
    yield tail


def _json(resp: IO[bytes], url: str, *, strict: bool = True) -> Any:
    raw = resp.read(MAX_ANSWER_BYTES + 1)
    try:
        if len(raw) > MAX_ANSWER_BYTES:
            raise ValueError(f"more than {MAX_ANSWER_BYTES} bytes")
        return json.loads(raw)
    except ValueError as exc:
        if not strict:
            return None
        raise RemoteError(f"{url}: the answer is not the hub API's JSON ({exc})") from exc


def _archive(path: Path, work: Path) -> Path:
    """``path`` itself when it is an archive, else a ``.tar.gz`` of the release directory
    (its folder as the single top-level entry, as the web upload expects)."""
    if path.is_file():
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise RemoteError(f"{path}: not a release directory or archive "
                              f"({', '.join(ARCHIVE_SUFFIXES)})")
        return path
    if not (path / "release.toml").is_file():
        raise RemoteError(f"{path}: no release.toml in this directory")
    out = work / f"{path.resolve().name}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(path, arcname=path.resolve().name,
                filter=lambda info: None if info.issym() or info.islnk() else info)
    return out


# --- commands -------------------------------------------------------------------------

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _client(ctx: click.Context) -> Client:
    client = ctx.find_object(Client)
    if client is None:  # checked here, not by click: help needs no address
        raise click.UsageError("Missing option '--url' (or TIANGONG_HUB_URL).", ctx=ctx)
    return client


def _run(ctx: click.Context, method: str, path: str, **kw: Any) -> Any:
    try:
        return _client(ctx).call(method, path, **kw)
    except RemoteError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1 if exc.refused else 2)


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _release_row(rel: dict[str, Any]) -> dict[str, Any]:
    keys = ("product", "version", "state", "author", "content_hash", "created_at")
    return {k: (rel[k][:16] if k == "content_hash" else rel[k]) for k in keys}


_DEPLOYMENT_COLUMNS = ("id", "product", "version", "environment", "agent", "state",
                       "queued_by", "updated_at")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# Not required=True: click would then refuse every sub-command's --help without it.
@click.option("--url", envvar="TIANGONG_HUB_URL", metavar="URL",
              help="The hub's web address, e.g. https://hub:8443 [env TIANGONG_HUB_URL; "
              "required].")
@click.option("--token-file", envvar="TIANGONG_TOKEN_FILE", default=DEFAULT_TOKEN_FILE,
              show_default=True, type=click.Path(path_type=Path),
              help="File holding your personal API token, mode 0600 [env TIANGONG_TOKEN_FILE].")
@click.option("--ca-file", envvar="TIANGONG_HUB_CA_FILE", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA certificate(s) to trust for https [env TIANGONG_HUB_CA_FILE].")
@click.option("--timeout", default=DEFAULT_TIMEOUT_S, show_default=True, type=float,
              help="Seconds to wait for each answer.")
@click.pass_context
def remote(ctx: click.Context, url: str | None, token_file: Path, ca_file: Path | None,
           timeout: float) -> None:
    """Use a hub's HTTP API as yourself, with a personal API token (issued on the hub's
    web UI, page API tokens). What you may do is what your roles and the token's scopes
    allow; the hub audits every call under your name."""
    ctx.obj = None if url is None else Client(url, token_file, ca_file, timeout)


@remote.command("whoami")
@json_option
@click.pass_context
def whoami(ctx: click.Context, as_json: bool) -> None:
    """Who the token belongs to, its scopes and expiry."""
    me = _run(ctx, "GET", "/me")
    token = me["token"]
    done(as_json, f"{me['user']} via token {token['prefix']} ({token['name']}): scopes "
         f"{', '.join(token['scopes'])}; expires {token['expires_at']}", me)


@remote.group("releases")
def releases() -> None:
    """Upload, submit, list, show, approve and reject releases."""


@releases.command("upload")
@click.argument("release_path", type=click.Path(exists=True, path_type=Path))
@json_option
@click.pass_context
def releases_upload(ctx: click.Context, release_path: Path, as_json: bool) -> None:
    """Upload RELEASE_PATH (a release directory, packed on the fly, or a release archive)
    as a draft release (scope releases:write)."""
    with tempfile.TemporaryDirectory(prefix="tiangong-upload-") as work:
        try:
            archive = _archive(release_path, Path(work))
        except (RemoteError, OSError, tarfile.TarError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        rel = _run(ctx, "POST", "/releases", upload=archive)
    done(as_json, f"draft release {rel['product']} {rel['version']} created; content hash "
         f"{rel['content_hash']}", rel)


@releases.command("list")
@click.option("--product", default=None)
@json_option
@click.pass_context
def releases_list(ctx: click.Context, product: str | None, as_json: bool) -> None:
    """List releases (scope read)."""
    query = f"?product={_q(product)}" if product else ""
    rels = _run(ctx, "GET", f"/releases{query}")["releases"]
    emit(rels if as_json else [_release_row(r) for r in rels], as_json)


@releases.command("show")
@click.argument("product")
@click.argument("version")
@json_option
@click.pass_context
def releases_show(ctx: click.Context, product: str, version: str, as_json: bool) -> None:
    """Show one release (scope read)."""
    emit(_run(ctx, "GET", f"/releases/{_q(product)}/{_q(version)}"), as_json)


@releases.command("submit")
@click.argument("product")
@click.argument("version")
@json_option
@click.pass_context
def releases_submit(ctx: click.Context, product: str, version: str, as_json: bool) -> None:
    """Submit a draft for approval (scope releases:write)."""
    rel = _run(ctx, "POST", f"/releases/{_q(product)}/{_q(version)}/submit")
    done(as_json, f"release {product} {version} submitted; content hash "
         f"{rel['content_hash']}", rel)


def _decide(ctx: click.Context, verb: str, product: str, version: str, comment: str,
            environment: str | None, as_json: bool) -> None:
    body = {"comment": comment, "environment": environment}
    rel = _run(ctx, "POST", f"/releases/{_q(product)}/{_q(version)}/{verb}", body=body)
    where = f" for {environment}" if environment else ""
    done(as_json, f"release {product} {version} {verb}d{where}; now {rel['state']}", rel)


@releases.command("approve")
@click.argument("product")
@click.argument("version")
@click.option("--comment", default="")
@click.option("--environment", default=None, help="Approve for this environment only.")
@click.option("--signature", "signature_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Upload a signed approval made with `tiangong keys approve` (it names its "
                   "own environments and comment).")
@json_option
@click.pass_context
def releases_approve(ctx: click.Context, product: str, version: str, comment: str,
                     environment: str | None, signature_file: Path | None,
                     as_json: bool) -> None:
    """Approve a submitted release, never your own (scope approve); with --signature, a
    signed approval that sites can verify."""
    if signature_file is None:
        _decide(ctx, "approve", product, version, comment, environment, as_json)
        return
    if comment or environment:
        raise click.UsageError("a signed approval names its own environments and comment")
    try:
        with signature_file.open("rb") as fh:
            envelope = fh.read(MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:
        click.echo(f"error: {signature_file}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    if len(envelope) > MAX_SIGNATURE_BYTES:
        click.echo(f"error: {signature_file}: larger than an approval file "
                   f"({MAX_SIGNATURE_BYTES} bytes)", err=True)
        sys.exit(2)
    rel = _run(ctx, "POST", f"/releases/{_q(product)}/{_q(version)}/signed-approvals",
               raw=envelope)
    done(as_json, f"release {product} {version}: signed approval {signature_file.name} "
         f"stored; now {rel['state']}", rel)


@releases.command("reject")
@options.release_reject
@json_option
@click.pass_context
def releases_reject(ctx: click.Context, product: str, version: str, comment: str,
                    environment: str | None, as_json: bool) -> None:
    """Reject a submitted release, final (scope approve)."""
    _decide(ctx, "reject", product, version, comment, environment, as_json)


@remote.group("deployments")
def deployments() -> None:
    """Queue, list and show deployments."""


@deployments.command("queue")
@click.argument("product")
@click.argument("version")
@click.option("--environment", required=True)
@json_option
@click.pass_context
def deployments_queue(ctx: click.Context, product: str, version: str, environment: str,
                      as_json: bool) -> None:
    """Queue an approved release for an environment (scope deploy)."""
    deps = _run(ctx, "POST", f"/releases/{_q(product)}/{_q(version)}/deployments",
                body={"environment": environment})["deployments"]
    emit(deps, as_json, _DEPLOYMENT_COLUMNS)


@deployments.command("list")
@click.option("--environment", default=None)
@click.option("--state", default=None)
@json_option
@click.pass_context
def deployments_list(ctx: click.Context, environment: str | None, state: str | None,
                     as_json: bool) -> None:
    """List deployments, newest first (scope read)."""
    query = urllib.parse.urlencode({k: v for k, v in (("environment", environment),
                                                      ("state", state)) if v})
    deps = _run(ctx, "GET", "/deployments" + (f"?{query}" if query else ""))["deployments"]
    emit(deps if as_json else [_waiting(d) for d in deps], as_json,
         (*_DEPLOYMENT_COLUMNS, "waiting_for"))


def _waiting(dep: dict[str, Any]) -> dict[str, Any]:
    """A deployment row whose ``waiting_for`` is the reasons' sentences, for a table."""
    return {**dep, "waiting_for": "; ".join(r["text"] for r in dep.get("waiting_for", []))
            or None}


@deployments.command("show")
@click.argument("deployment_id", type=int)
@json_option
@click.pass_context
def deployments_show(ctx: click.Context, deployment_id: int, as_json: bool) -> None:
    """Show one deployment and what it waits for (scope read)."""
    dep = _run(ctx, "GET", f"/deployments/{deployment_id}")
    emit(dep if as_json else _waiting(dep), as_json)


@deployments.command("why")
@click.argument("deployment_id", type=int)
@json_option
@click.pass_context
def deployments_why(ctx: click.Context, deployment_id: int, as_json: bool) -> None:
    """Why is this deployment not deploying? Every reason it waits (approvals, channel,
    freeze, window, override, site), as `tiangong hub deployments why` (scope read)."""
    dep = _run(ctx, "GET", f"/deployments/{deployment_id}")
    data = {"id": dep["id"], "release": f"{dep['product']} {dep['version']}",
            "environment": dep["environment"], "state": dep["state"],
            "waiting_for": dep["waiting_for"]}
    if as_json:
        emit(data, True)
    else:
        rule_text.echo_why(data)


@deployments.command("override")
@options.deployment_reason
@json_option
@click.pass_context
def deployments_override(ctx: click.Context, deployment_id: int, reason: str,
                         as_json: bool) -> None:
    """Ask to deploy a queued deployment despite freezes and windows (scope deploy). A
    second person confirms it with `remote deployments confirm-override ID` within 24
    hours."""
    row = _run(ctx, "POST", f"/deployments/{deployment_id}/override", body={"reason": reason})
    done(as_json, rule_text.override_requested(row, "tiangong remote"), row)


@deployments.command("confirm-override")
@click.argument("deployment_id", type=int)
@json_option
@click.pass_context
def deployments_confirm_override(ctx: click.Context, deployment_id: int,
                                 as_json: bool) -> None:
    """Confirm another person's override request, never your own (scope deploy): the
    deployment is exported despite freezes and windows, and its bundle tells the agent
    so."""
    row = _run(ctx, "POST", f"/deployments/{deployment_id}/override/confirm")
    done(as_json, rule_text.override_confirmed(row), row)


class _ListByDefault(click.Group):
    """A group whose ``list`` is also what it does without a subcommand (``remote
    environments``, ``remote channels hello``: the commands these groups once were)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands
                         and args[0] not in ctx.help_option_names):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@remote.group("environments", cls=_ListByDefault)
def environments() -> None:
    """Environments: list them, and as `tiangong hub environments` their preflight policy
    and channel subscriptions (setting: scope admin and an admin of the environment)."""


@environments.command("list")
@json_option
@click.pass_context
def environments_list(ctx: click.Context, as_json: bool) -> None:
    """List the environments you may view (scope read)."""
    emit(_run(ctx, "GET", "/environments")["environments"], as_json)


@environments.command("preflight-policy")
@channel_text.preflight_options
@json_option
@click.pass_context
def environments_preflight_policy(ctx: click.Context, name: str, within_h: int | None,
                                  clear: bool, as_json: bool) -> None:
    """Show or set NAME's preflight policy (docs/rollouts.md "Preflight policy of an
    environment"): every path that queues a deployment there obeys it. Setting: scope admin,
    admins only; audited."""
    if clear and within_h is not None:
        raise click.UsageError("--clear takes no --within")
    path = f"/environments/{_q(name)}/preflight-policy"
    row = (_run(ctx, "PUT", path, body={"within_h": within_h}) if clear or within_h is not None
           else _run(ctx, "GET", path))
    done(as_json, channel_text.policy(row), row)


@environments.command("subscribe")
@channel_text.subscribe_options
@json_option
@click.pass_context
def environments_subscribe(ctx: click.Context, environment: str, product: str, channel: str,
                           as_json: bool) -> None:
    """Subscribe ENVIRONMENT to a channel of a product (scope admin; an admin of the
    environment); replaces its subscription to another channel of that product."""
    row = _run(ctx, "PUT", f"/environments/{_q(environment)}/subscriptions/{_q(product)}",
               body={"channel": channel})
    done(as_json, channel_text.subscribed(row), row)


@environments.command("unsubscribe")
@channel_text.unsubscribe_options
@json_option
@click.pass_context
def environments_unsubscribe(ctx: click.Context, environment: str, product: str,
                             as_json: bool) -> None:
    """End ENVIRONMENT's subscription to a product's channel (scope admin; an admin of the
    environment). Deployments already planned stay."""
    row = _run(ctx, "DELETE",
               f"/environments/{_q(environment)}/subscriptions/{_q(product)}")
    done(as_json, channel_text.unsubscribed(row), row)


@environments.command("subscriptions")
@click.argument("environment")
@json_option
@click.pass_context
def environments_subscriptions(ctx: click.Context, environment: str, as_json: bool) -> None:
    """The channels ENVIRONMENT follows, one per product (scope read)."""
    rows = _run(ctx, "GET", f"/environments/{_q(environment)}/subscriptions")["subscriptions"]
    emit(rows, as_json, channel_text.SUBSCRIPTION_COLUMNS)


@remote.command("agents")
@click.option("--environment", default=None)
@json_option
@click.pass_context
def agents(ctx: click.Context, environment: str | None, as_json: bool) -> None:
    """List the agents of the environments you may view (scope read)."""
    query = f"?environment={_q(environment)}" if environment else ""
    emit(_run(ctx, "GET", f"/agents{query}")["agents"], as_json)



# --- change control: channels, promotion, recall, windows, freezes (docs/api.md) ----------


@remote.group("channels", cls=_ListByDefault)
def channels() -> None:
    """Release channels of a product, as `tiangong hub channels` (list and show a rule:
    scope read; add, remove, order and rule changes: scope admin and an admin)."""


@channels.command("list")
@click.argument("product")
@json_option
@click.pass_context
def channels_list(ctx: click.Context, product: str, as_json: bool) -> None:
    """A product's channels in order: releases, subscribers, the promotion rule (scope
    read)."""
    rows = _run(ctx, "GET", f"/products/{_q(product)}/channels")["channels"]
    emit(channel_text.list_rows(rows, as_json), as_json, channel_text.CHANNEL_COLUMNS)


@channels.command("add")
@channel_text.add_options
@json_option
@click.pass_context
def channels_add(ctx: click.Context, product: str, name: str, after: str | None, first: bool,
                 as_json: bool) -> None:
    """Add channel NAME to PRODUCT (scope admin; admins). Names are stored in upper case; a
    new channel has no promotion rule until `remote channels rule` sets one."""
    row = _run(ctx, "POST", f"/products/{_q(product)}/channels",
               body={"name": name, "after": after, "first": first})
    done(as_json, channel_text.added(row), row)


@channels.command("remove")
@click.argument("product")
@click.argument("name")
@json_option
@click.pass_context
def channels_remove(ctx: click.Context, product: str, name: str, as_json: bool) -> None:
    """Remove channel NAME of PRODUCT (scope admin; admins); refused while environments
    subscribe to it."""
    row = _run(ctx, "DELETE", f"/products/{_q(product)}/channels/{_q(name)}")
    done(as_json, channel_text.removed(row), row)


@channels.command("order")
@click.argument("product")
@click.argument("names", nargs=-1, required=True)
@json_option
@click.pass_context
def channels_order(ctx: click.Context, product: str, names: tuple[str, ...],
                   as_json: bool) -> None:
    """Reorder the channels of PRODUCT (scope admin; admins): name every channel once,
    first to last."""
    row = _run(ctx, "PUT", f"/products/{_q(product)}/channels", body={"order": list(names)})
    done(as_json, channel_text.ordered(row), row)


@channels.command("rule")
@channel_text.rule_options
@json_option
@click.pass_context
def channels_rule(ctx: click.Context, product: str, name: str, approvals: int | None,
                  min_successes: int | None, no_failures: bool | None, soak: str | None,
                  preflight_within_h: int | None, as_json: bool) -> None:
    """Show (scope read) or change (scope admin; admins) the rule for promoting a release
    into channel NAME. Options not given keep their value; with none, the rule is
    printed."""
    path = f"/products/{_q(product)}/channels/{_q(name)}/rule"
    change = {k: v for k, v in (("approvals", approvals), ("min_successes", min_successes),
                                ("no_failures", no_failures), ("soak", soak),
                                ("preflight_within", preflight_within_h)) if v is not None}
    row = _run(ctx, "PATCH", path, body=change) if change else _run(ctx, "GET", path)
    done(as_json, channel_text.rule(row), row)


@releases.command("promote")
@options.promotion("The channel to enter (default: the one after the last channel the "
                   "release is in).")
@json_option
@click.pass_context
def releases_promote(ctx: click.Context, product: str, version: str, to: str | None,
                     comment: str, as_json: bool) -> None:
    """Promote a release to the next channel, under its rule (scope deploy)."""
    done_ = _run(ctx, "POST", f"/releases/{_q(product)}/{_q(version)}/promote",
                 body={"to": to, "comment": comment})
    planned = ", ".join(f"deployment {d['deployment']} for {d['environment']}"
                        for d in done_["deployments"]) or "no deployment planned"
    done(as_json, f"release {product} {version} promoted from {done_['from']} to "
         f"{done_['to']}: {planned}", done_)


@releases.command("approve-promotion")
@options.promotion("The channel (default: the next one).")
@json_option
@click.pass_context
def releases_approve_promotion(ctx: click.Context, product: str, version: str, to: str | None,
                               comment: str, as_json: bool) -> None:
    """Approve promoting a release into a channel (scope approve; approvers, never the
    release's author). Counts toward the channel's approvals rule; `remote releases
    promote` then promotes."""
    out = _run(ctx, "POST", f"/releases/{_q(product)}/{_q(version)}/promotion-approvals",
               body={"to": to, "comment": comment})
    done(as_json, f"promoting {product} {version} to {out['channel']} approved "
         f"({len(out['approvers'])} of {out['required']} required: "
         f"{', '.join(out['approvers'])})", out)


@releases.command("recall")
@options.recall
@json_option
@click.pass_context
def releases_recall(ctx: click.Context, product: str, version: str, channel: str,
                    reason: str, as_json: bool) -> None:
    """Recall a release from a channel (scope deploy)."""
    out = _run(ctx, "POST", f"/releases/{_q(product)}/{_q(version)}/recall",
               body={"channel": channel, "reason": reason})
    done(as_json, f"release {product} {version} recalled from {', '.join(out['channels'])}: "
         f"{len(out['cancelled'])} cancelled, {len(out['lost'])} declared lost, "
         f"{len(out['at_site'])} already at the site", out)


_SPEC_HELP = {
    "window": "SPEC: 'sat,sun 01:00-05:00 Europe/Berlin' (weekly; mon-fri, daily), "
              "'START/END' (ISO 8601 with an offset, or Unix seconds), or the JSON object of "
              "docs/bundle-format.md §6.9.",
    "freeze": "SPEC: '12-20..01-05 UTC: year end' (yearly, both days included), "
              "'START/END: reason', 'fri 18:00-24:00 UTC: weekend', or a JSON object; a "
              "freeze always has a reason.",
}


def _rules_group(kind: str, plural: str) -> click.Group:
    """``remote windows|freezes add|list|remove``: the names, options and messages of
    ``tiangong hub windows|freezes`` (hub/cli/windows.py), through the API's operations
    (which call the same services: docs/api.md)."""

    @remote.group(plural)
    def group() -> None:
        pass

    group.help = (("Maintenance windows: when deployments may run (none: any time). "
                   if kind == "window" else
                   "Change freezes: no deployment is exported or starts inside one, unless a "
                   "hub override lifts it. ") + _SPEC_HELP[kind]
                  + " Listing needs scope read; adding and removing scope admin and an "
                    "admin of the environment (every environment: a global admin).")

    @group.command("add")
    @options.rule_add
    @json_option
    @click.pass_context
    def add(ctx: click.Context, spec: str, environment: str | None, product: str | None,
            as_json: bool) -> None:
        row = _run(ctx, "POST", f"/{plural}",
                   body={"spec": spec, "environment": environment, "product": product})
        done(as_json, rule_text.added(kind, row), row)

    add.help = (f"Add a {kind} (scope admin; admins only). {_SPEC_HELP[kind]} Queued "
                "deployments it applies to are held or released at once.")

    @group.command("list")
    @options.rule_list(kind)
    @json_option
    @click.pass_context
    def list_(ctx: click.Context, environment: str | None, product: str | None,
              as_json: bool, include_ended: bool = False) -> None:
        query = urllib.parse.urlencode({k: v for k, v in (
            ("environment", environment), ("product", product),
            ("all", "1" if include_ended else None)) if v})
        rows = _run(ctx, "GET", f"/{plural}" + (f"?{query}" if query else ""))[plural]
        emit(rows, as_json, None if as_json else rule_text.columns(kind))

    list_.help = f"List {plural} (those of every environment/product too; scope read)."

    @group.command("remove")
    @click.argument("rule_id", type=int)
    @json_option
    @click.pass_context
    def remove_(ctx: click.Context, rule_id: int, as_json: bool) -> None:
        row = _run(ctx, "DELETE", f"/{plural}/{rule_id}")
        done(as_json, rule_text.removed(kind, rule_id, row), row)

    remove_.help = f"Delete a {kind} (scope admin; audited)."
    return group


windows = _rules_group("window", "windows")
freezes = _rules_group("freeze", "freezes")


@freezes.command("end")
@options.freeze_end
@json_option
@click.pass_context
def freezes_end(ctx: click.Context, rule_id: int, reason: str, as_json: bool) -> None:
    """End a freeze now (kept as ended, for the record); the deployments it held are
    released (scope admin)."""
    row = _run(ctx, "POST", f"/freezes/{rule_id}/end", body={"reason": reason})
    done(as_json, rule_text.ended(rule_id, row), row)


# --- ad-hoc runs (docs/operations.md "Ad-hoc runs") -----------------------------------------

POLL_SECONDS = 0.5  # seconds between two polls of a followed run (as `tiangong run --follow`)


@remote.group("run")
def run_group() -> None:
    """Run one SQL, shell, Kubernetes or HTTP file on one agent through the hub's audited
    release path, as `tiangong run` does on the hub's machine (scopes releases:write and
    deploy; the developer role, and operator in the agent's environment, or admin).

    The hub creates and submits a one-off release of product adhoc and applies the
    environment's ad-hoc policy: when it is met the run is queued and the hub's live server
    delivers it when the agent is online (--follow prints its live log and result);
    otherwise the command says which approval it waits for and exits 1, and `remote run
    ship VERSION --agent A` ships it once approved. With --out DIR the hub exports the
    bundle for media instead (valid --expires) and sends it: it is written into DIR, as
    `tiangong run --out` writes it (bundles too large for one answer wait on the hub's web
    Media page).
    """


def _duration_s(text: str, option: str) -> float:
    from signing.durations import parse_duration

    try:
        return float(parse_duration(text))
    except ValueError as exc:
        raise click.UsageError(f"{option} {text!r}: {exc}") from exc


def _run_shared(f: Any) -> Any:
    """The options every remote run command shares (those of `tiangong run`), in the order
    --help shows them."""
    for option in (
        json_option,
        run_text.follow_options("Print the agent's live log, then the verified result (not "
                                "with --out); exit 0 only when it succeeded."),
        run_text.expires_option,
        run_text.out_option,
        run_text.agent_option,
    ):
        f = option(f)
    return f


def _media(out_dir: Path | None, expires: str, follow: bool) -> dict[str, Any]:
    """The request's fields for --out (a usage error with --follow, before anything is
    sent)."""
    if out_dir is None:
        return {}
    if follow:
        raise click.UsageError(run_text.OUT_AND_FOLLOW)
    return {"out": True, "expires": expires}


def _write_media(answer: dict[str, Any], out_dir: Path, as_json: bool) -> None:
    """Write the bundles the hub exported for media into ``out_dir`` (as `tiangong run --out`
    writes them); exit 1 when they did not come (too large for one answer: the web Media
    page has them) or a deployment failed to export."""
    media = answer["media"]
    written: list[dict[str, Any]] = []
    if media["download"] is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in media["files"]:
            name = Path(f["name"]).name
            if name != f["name"] or name.startswith("."):
                click.echo(f"error: the hub sent a file named {f['name']!r}; not written",
                           err=True)
                sys.exit(2)
            target = out_dir / name
            target.write_bytes(base64.b64decode(f["content_base64"]))
            written.append({**{k: v for k, v in f.items() if k != "content_base64"},
                            "path": str(target)})
    if as_json:
        emit({**{k: v for k, v in answer.items() if k != "media"},
              "media": {**media, "files": written or media["files"]}}, True)
    else:
        by_deployment: dict[Any, list[str]] = {}
        for f in written:
            if f["deployment"] is not None:
                by_deployment.setdefault((f["deployment"], f["sequence"]), []).append(f["path"])
        for (deployment, sequence), paths in by_deployment.items():
            click.echo(run_text.written(answer["product"], answer["version"], answer["agent"],
                                        deployment, sequence, paths))
    if media["download"] is not None:
        click.echo(f"error: the bundles are larger than one API answer carries; download "
                   f"them from the hub's web Media page: {media['download']}", err=True)
    for f in media["failed"]:
        click.echo(f"error: deployment {f['deployment']}: {f['reason']}", err=True)
    if media["download"] is not None or media["failed"] or not written:
        sys.exit(1)


_run_reason = click.option("--reason", default="",
                           help="Why (at most 1000 characters; into the release's description "
                                "and the audit log).")


def _file_fields(script: Path | None) -> dict[str, Any]:
    if script is None:
        return {}
    try:
        data = script.read_bytes()
    except OSError as exc:
        click.echo(f"error: {script}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    return {"file_name": script.name, "content_base64": base64.b64encode(data).decode()}


def _follow(ctx: click.Context, deployment: int, agent_id: str, follow_timeout: str,
            as_json: bool, row: dict[str, Any]) -> None:
    """Poll ``GET /deployments/{id}/progress`` until the run is final or --follow-timeout
    passed (each poll bounded by --timeout); print as `tiangong run --follow` does."""
    waited_s = _duration_s(follow_timeout, "--follow-timeout")
    deadline = time.monotonic() + waited_s
    after, said_offline = -1, False
    lines: list[dict[str, Any]] = []
    while True:
        progress = _run(ctx, "GET", f"/deployments/{deployment}/progress?after={after}")
        after = progress["last_seq"]
        for line in progress["lines"]:
            lines.append(line)
            if not as_json:
                run_text.echo_line(line)
        if not progress["agent_online"] and not said_offline and not progress["done"]:
            said_offline = True
            if not as_json:
                run_text.not_online(agent_id)
        if progress["done"] or time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
    if as_json:
        emit({**row, "state": progress["state"], "done": progress["done"], "lines": lines,
              "result": progress["result"]}, True)
    else:
        run_text.echo_outcome(deployment, progress["state"], progress["done"],
                              progress["result"], int(waited_s),
                              f"tiangong remote deployments show {deployment}")
    if not (progress["done"] and progress["state"] == "succeeded"):
        sys.exit(1)


def _after_ship(ctx: click.Context, answer: dict[str, Any], follow: bool,
                follow_timeout: str, as_json: bool, out_dir: Path | None = None) -> None:
    """Report a run the hub shipped (or not): queued, followed, written for media, or what
    it waits for."""
    product, version, agent_id = answer["product"], answer["version"], answer["agent"]
    if not answer["shipped"]:
        if as_json:
            emit(answer, True)
        click.echo(f"error: {answer['waiting_for']}", err=True)
        sys.exit(1)
    if out_dir is not None:
        _write_media(answer, out_dir, as_json)
    elif follow:
        _follow(ctx, answer["deployment"], agent_id, follow_timeout, as_json, answer)
    elif as_json:
        emit({**answer, "queued": True}, True)
    else:
        click.echo(run_text.queued(product, version, answer["deployment"], agent_id))


def _remote_run(ctx: click.Context, body: dict[str, Any], script: Path | None, follow: bool,
                follow_timeout: str, as_json: bool, out_dir: Path | None,
                expires: str) -> None:
    _duration_s(follow_timeout, "--follow-timeout")  # a usage error before anything is sent
    answer = _run(ctx, "POST", "/runs", body={
        **{k: v for k, v in body.items() if v not in (None, "", [], {})},
        **_file_fields(script), **_media(out_dir, expires, follow)})
    if not as_json:
        what = script.name if script is not None else str(body.get("url", ""))
        click.echo(run_text.created(answer["product"], answer["version"], body["kind"], what,
                                    answer["agent"], answer["environment"],
                                    origin=answer.get("template", "")))
    _after_ship(ctx, answer, follow, follow_timeout, as_json, out_dir)


def _kind_command(kind: str) -> None:
    """``remote run KIND``: the options of ``tiangong run KIND`` (tiangong/run_text.py), and
    ``--reason``."""

    @run_group.command(kind, help=run_text.KIND_HELP[kind])
    @run_text.kind_options(kind)
    @_run_reason
    @_run_shared
    @click.pass_context
    def command(ctx: click.Context, /, reason: str, agent_id: str, out_dir: Path | None,
                expires: str, follow: bool, follow_timeout: str, as_json: bool,
                **options: Any) -> None:
        script, opts = run_text.step_options(options)
        _remote_run(ctx, {"kind": kind, "agent": agent_id, "reason": reason, **opts},
                    script, follow, follow_timeout, as_json, out_dir, expires)


for _kind in ("sql", "shell", "k8s", "http"):
    _kind_command(_kind)


@run_group.command("ship")
@click.argument("version")
@_run_shared
@click.pass_context
def run_ship(ctx: click.Context, version: str, agent_id: str, out_dir: Path | None,
             expires: str, follow: bool, follow_timeout: str, as_json: bool) -> None:
    """Ship ad-hoc release VERSION once approved: queue it for --agent, for the hub's live
    server (--follow to watch it), or write it into --out for media."""
    _duration_s(follow_timeout, "--follow-timeout")
    answer = _run(ctx, "POST", f"/runs/{_q(version)}/ship",
                  body={"agent": agent_id, **_media(out_dir, expires, follow)})
    _after_ship(ctx, answer, follow, follow_timeout, as_json, out_dir)


# --- job templates (docs/operations.md "Job templates") -------------------------------------


@remote.group("templates")
def templates_group() -> None:
    """Script and job templates with typed parameters, as `tiangong hub templates` (list
    and show: scope read; add and release: releases:write and the developer role; run:
    releases:write and deploy, and operator in the agent's environment)."""


def _template_query(name: str) -> tuple[str, int | None]:
    base, version = run_text.split_name(name)
    return f"/templates/{_q(base)}", version


@templates_group.command("list")
@json_option
@click.pass_context
def templates_list(ctx: click.Context, as_json: bool) -> None:
    """The newest version of every template."""
    rows = _run(ctx, "GET", "/templates")["templates"]
    emit(rows if as_json else run_text.template_rows(rows), as_json)


@templates_group.command("show")
@click.argument("name")
@json_option
@click.pass_context
def templates_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """One template (NAME or NAME@VERSION): its step, parameters and file."""
    path, version = _template_query(name)
    row = _run(ctx, "GET", path + (f"?version={version}" if version is not None else ""))
    if as_json:
        emit({k: v for k, v in row.items() if k != "described"}, True)
    else:
        run_text.echo_template(row)


@templates_group.command("add")
@click.argument("definition", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def templates_add(ctx: click.Context, definition: Path, as_json: bool) -> None:
    """Store DEFINITION (a TOML file next to its script) as the next version of its
    template; the hub checks it by every rule of `tiangong hub templates add`."""
    try:
        text = definition.read_text(encoding="utf-8")
        named = tomllib.loads(text).get("file")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        click.echo(f"error: {definition}: not a readable TOML file: {exc}", err=True)
        sys.exit(2)
    body = {"definition_name": definition.name, "definition": text}
    if named is not None:  # else the hub says what is missing (an http template: no body)
        if not isinstance(named, str) or not named or "/" in named:
            click.echo(f"error: {definition}: file must name a file next to the definition",
                       err=True)
            sys.exit(2)
        try:
            content = (definition.parent / named).read_bytes()
        except OSError as exc:
            click.echo(f"error: {definition}: file {definition.parent / named}: "
                       f"{exc.strerror or exc}", err=True)
            sys.exit(2)
        body.update(file_name=named, content_base64=base64.b64encode(content).decode())
    row = _run(ctx, "POST", "/templates", body=body)
    done(as_json, run_text.template_added(row), row)


@templates_group.command("run")
@click.argument("name")
@run_text.param_option
@_run_shared
@click.pass_context
def templates_run(ctx: click.Context, name: str, params: tuple[str, ...], agent_id: str,
                  out_dir: Path | None, expires: str, follow: bool, follow_timeout: str,
                  as_json: bool) -> None:
    """Run template NAME (or NAME@VERSION) on one agent, as `tiangong remote run` would.
    The values are checked first: a bad one creates and queues nothing."""
    path, version = _template_query(name)
    _duration_s(follow_timeout, "--follow-timeout")
    answer = _run(ctx, "POST", f"{path}/runs", body={
        "agent": agent_id, "params": run_text.param_values(params), "version": version,
        **_media(out_dir, expires, follow)})
    if not as_json:
        click.echo(run_text.created(answer["product"], answer["version"], "", "",
                                    agent_id, answer["environment"],
                                    origin=answer["template"]))
    _after_ship(ctx, answer, follow, follow_timeout, as_json, out_dir)


@templates_group.command("release")
@options.template_release(run_text.param_option)
@json_option
@click.pass_context
def templates_release(ctx: click.Context, name: str, out: Path, product: str,
                      release_version: str, params: tuple[str, ...], as_json: bool) -> None:
    """Write template NAME with its values as a release directory OUT (release.toml and the
    rendered file), for `tiangong remote releases upload OUT`."""
    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} is not empty")
    path, version = _template_query(name)
    answer = _run(ctx, "POST", f"{path}/release", body={
        "product": product, "release_version": release_version,
        "params": run_text.param_values(params), "version": version})
    out.mkdir(parents=True, exist_ok=True)
    for file_name, data in answer["files"].items():
        (out / Path(file_name).name).write_bytes(base64.b64decode(data))
    row = {"template": answer["template"], "directory": str(out), "values": answer["values"]}
    done(as_json, run_text.template_written(answer["template"], out,
                                            "tiangong remote releases upload"), row)


# --- site secrets (docs/operations.md "Site secrets") ----------------------------------------


@remote.group("secrets")
def secrets_group() -> None:
    """Site secrets of an environment, as `tiangong hub secrets` (set and delete: scope
    admin and an admin of the environment; list: scope read). Values are read from standard
    input, a file or an environment variable, never from the command line; the hub never
    answers them back."""


@secrets_group.command("set")
@click.argument("environment")
@click.argument("name")
@secret_input.value_options
@json_option
@click.pass_context
def secrets_set(ctx: click.Context, environment: str, name: str, from_env: str | None,
                from_file: str | None, as_json: bool) -> None:
    """Store (or replace) secret NAME of ENVIRONMENT. Without --from-env or --from-file the
    value is read from standard input (a hidden prompt on a terminal)."""
    value = secret_input.read_value(from_env, from_file)
    info = _run(ctx, "POST", f"/environments/{_q(environment)}/secrets",
                body={"name": name, "value": value})
    done(as_json, secret_input.stored(name, environment), info)


@secrets_group.command("list")
@click.argument("environment")
@json_option
@click.pass_context
def secrets_list(ctx: click.Context, environment: str, as_json: bool) -> None:
    """Names of ENVIRONMENT's secrets, who set them and when (never the values)."""
    rows = _run(ctx, "GET", f"/environments/{_q(environment)}/secrets")["secrets"]
    emit(rows, as_json, None if as_json else ("name", "set_by", "set_at"))


@secrets_group.command("delete")
@click.argument("environment")
@click.argument("name")
@json_option
@click.pass_context
def secrets_delete(ctx: click.Context, environment: str, name: str, as_json: bool) -> None:
    """Forget secret NAME of ENVIRONMENT (audited). Bundles already exported keep their
    sealed copy."""
    info = _run(ctx, "DELETE", f"/environments/{_q(environment)}/secrets/{_q(name)}")
    done(as_json, secret_input.deleted(name, environment), info)
