"""``tiangong hub …``: every hub service action as a command.

Global options: ``--data-dir`` (or ``TIANGONG_HUB_DATA_DIR``) and ``--as USER`` (or
``TIANGONG_HUB_AS``; default: the operating-system login name). **The CLI trusts the local
operating-system user**: whoever can read the data directory (database, online keys) can act
as any hub user, so protect the data directory like the keys it holds. ``--as`` only says
which hub user's roles apply and whose name goes into the audit log.

Output: readable tables by default, ``--json`` on every listing/showing command for scripts.
Exit codes: 0 success; 1 a domain error (permission, state, conflict, validation — the
message says which rule); 2 usage or configuration error; 3 audit verification failed.

Commands only translate: every rule is in ``hub/services``. Each command runs in one
transaction, committed only when the service call succeeded.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from hub.errors import ConfigError, HubError

__all__ = ["hub"]


@dataclass
class CliState:
    data_dir: Path | None
    actor: str | None


def _state(ctx: click.Context) -> CliState:
    state = ctx.find_object(CliState)
    assert state is not None
    return state


def _config(state: CliState) -> Any:
    from hub.config import load_config

    if state.data_dir is None:
        raise click.UsageError("give --data-dir or set TIANGONG_HUB_DATA_DIR")
    return load_config(state.data_dir)


@contextlib.contextmanager
def _services(ctx: click.Context, *, as_actor: bool = True) -> Iterator[Any]:
    """Open a session, build the service context, commit on success, roll back on error."""
    from hub.db import make_engine, make_session_factory
    from hub.keystore import load_hub_keys
    from hub.services import releases as _releases  # noqa: F401 - registers the release guard
    from hub.services.context import ServiceContext, utc_now
    from hub.services.users import get_user

    state = _state(ctx)
    try:
        cfg = _config(state)
        if not (cfg.data_dir / "root.json").exists():
            raise ConfigError(f"{cfg.data_dir} is not an initialised hub: run `tiangong hub init`")
        keys = load_hub_keys(cfg.data_dir)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    engine = make_engine(cfg.database_url)
    session = make_session_factory(engine)()
    try:
        actor = None
        if as_actor:
            name = state.actor or getpass.getuser()
            actor = get_user(session, name)
        yield ServiceContext(session, utc_now, actor, keys, cfg.releases_dir)
        session.commit()
    except HubError as exc:
        session.rollback()
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        session.close()
        engine.dispose()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _emit(
    rows: Sequence[dict[str, Any]] | dict[str, Any],
    as_json: bool,
    columns: Sequence[str] | None = None,
) -> None:
    if as_json:
        click.echo(json.dumps(rows, default=_json_default, indent=2, sort_keys=True))
        return
    if isinstance(rows, dict):
        width = max((len(k) for k in rows), default=0)
        for key, value in rows.items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value, default=_json_default)
            click.echo(f"{key.ljust(width)}  {_cell(value)}")
        return
    if not rows:
        click.echo("(none)")
        return
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


# --- root group -----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    envvar="TIANGONG_HUB_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The hub's data directory [env TIANGONG_HUB_DATA_DIR].",
)
@click.option(
    "--as",
    "actor",
    envvar="TIANGONG_HUB_AS",
    metavar="USER",
    help="Act as this hub user [env TIANGONG_HUB_AS; default: your login name]. The CLI "
    "trusts the local OS user who can read the data directory.",
)
@click.pass_context
def hub(ctx: click.Context, data_dir: Path | None, actor: str | None) -> None:
    """Run the hub: releases, approvals, environments, agents, deployments, audit."""
    ctx.obj = CliState(data_dir, actor)


@hub.command()
@click.option("--admin", "admin", required=True, metavar="USER", help="The first admin.")
@click.option("--hub-id", default=None, help="Hub identifier (default: generated).")
@click.option("--database-url", default=None, help="Default: SQLite in the data directory.")
@click.option(
    "--root-key-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the root key (default: <data-dir>/root-key.OFFLINE.json).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="First line: passphrase for the root key (or TIANGONG_KEY_PASSPHRASE).",
)
@click.option("--insecure-no-passphrase", is_flag=True, help="Write the root key unencrypted.")
@click.option(
    "--tls-name",
    "tls_names",
    multiple=True,
    metavar="NAME",
    help="A host name or IP address agents use to reach the live server (repeatable; "
    "default: localhost, 127.0.0.1 and this host's name).",
)
@click.pass_context
def init(
    ctx: click.Context,
    admin: str,
    hub_id: str | None,
    database_url: str | None,
    root_key_out: Path | None,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    tls_names: tuple[str, ...],
) -> None:
    """Create the data directory, database, keys, root document, the live channel's private
    CA and server certificate, and the first admin."""
    import tomli_w

    from hub.db import make_engine, make_session_factory
    from hub.keystore import create_trust
    from hub.migrate import upgrade
    from hub.services.context import utc_now
    from hub.services.users import bootstrap_admin
    from hub.tls import create_ca, default_names, issue_server_certificate, tls_files
    from signing.errors import PassphraseError
    from signing.keyfile import resolve_passphrase

    state = _state(ctx)
    if state.data_dir is None:
        raise click.UsageError("give --data-dir or set TIANGONG_HUB_DATA_DIR")
    data_dir = state.data_dir.absolute()
    passphrase = None
    if not insecure_no_passphrase:
        try:
            passphrase = resolve_passphrase(
                file=passphrase_file,
                interactive=sys.stdin.isatty(),
                confirm=True,
                what="the hub's root key",
            )
        except PassphraseError as exc:
            click.echo(f"error: {exc} (or pass --insecure-no-passphrase)", err=True)
            sys.exit(2)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cfg_path = data_dir / "hub.toml"
        if cfg_path.exists() or (data_dir / "root.json").exists():
            raise ConfigError(f"{data_dir} is already initialised")
        now = utc_now()
        trust = create_trust(
            data_dir,
            int(now.timestamp()),
            hub_id=hub_id,
            root_key_path=root_key_out,
            root_passphrase=passphrase,
            insecure_no_passphrase=insecure_no_passphrase,
        )
        tls = tls_files(data_dir)
        create_ca(tls, trust.hub_id, now)
        server_cert = issue_server_certificate(tls, list(tls_names) or default_names(), now)
        settings: dict[str, Any] = {"hub_id": trust.hub_id, "secret_key": secrets.token_hex(32)}
        if database_url:
            settings["database_url"] = database_url
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"# Tiangong hub settings (TIANGONG_HUB_* environment variables win)\n")
            fh.write(tomli_w.dumps({"hub": settings}).encode("utf-8"))
        (data_dir / "releases").mkdir(exist_ok=True)
        from hub.config import load_config

        cfg = load_config(data_dir)
        engine = make_engine(cfg.database_url)
        try:
            upgrade(engine)
            with make_session_factory(engine)() as session:
                bootstrap_admin(session, lambda: now, admin)
                session.commit()
        finally:
            engine.dispose()
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"hub {trust.hub_id} initialised in {data_dir}")
    click.echo(f"  database       {cfg.database_url}")
    click.echo(f"  root document  {trust.root_json}  (give this to agents and auditors)")
    click.echo(f"  release key    {trust.release_key}")
    click.echo(f"  audit key      {trust.audit_key}")
    click.echo(f"  live TLS CA    {tls.ca_cert}  (enrollment responses carry it to agents)")
    click.echo(f"  live TLS cert  {tls.server_cert}  for {_cert_names(server_cert)}")
    click.echo(f"  first admin    {admin}")
    enc = "passphrase-encrypted" if trust.root_key_encrypted else "NOT encrypted"
    click.echo(f"ROOT KEY ({enc}): {trust.root_key}")
    click.echo("  Move it off this machine now (offline storage); the hub runs without it and")
    click.echo("  needs it only to rotate keys (tiangong keys root rotate).")


@hub.command()
@click.option("--bind", default=None, help="host:port (default from config: 127.0.0.1:8400).")
@click.option("--workers", type=int, default=None)
@click.option(
    "--live-bind",
    default=None,
    metavar="HOST:PORT",
    help="Also run the live WebSocket server on this address (default: [live] bind in "
    "hub.toml; none: no live server).",
)
@click.option(
    "--live-insecure-loopback",
    is_flag=True,
    help="Live server without TLS (plain ws://), on a loopback address only: for tests.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    bind: str | None,
    workers: int | None,
    live_bind: str | None,
    live_insecure_loopback: bool,
) -> None:
    """Serve the hub under gunicorn (health check at /healthz), and the live WebSocket
    server as a child process (`tiangong hub live`) when a live bind address is set."""
    from hub.config import with_overrides
    from hub.serve import live_child_command
    from hub.serve import serve as run

    try:
        cfg = _config(_state(ctx))
        changes: dict[str, Any] = {}
        if bind:
            changes["bind"] = bind
        if workers:
            changes["workers"] = workers
        if live_bind:
            changes["live_bind"] = live_bind
        if live_insecure_loopback:
            changes["live_allow_insecure_loopback"] = True
        cfg = with_overrides(cfg, **changes)
        live_command = _live_command_if_configured(cfg, live_child_command)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    run(cfg, live_command=live_command)


def _live_command_if_configured(cfg: Any, live_child_command: Any) -> list[str] | None:
    """The live child's command line, after checking its settings here (so a bad address or
    a missing certificate stops `hub serve` at once, naming the file).

    Raises:
        ConfigError.
    """
    from hub.live import is_loopback, parse_bind
    from hub.tls import load_server_tls

    if not cfg.live_bind:
        return None
    host, _port = parse_bind(cfg.live_bind)
    if cfg.live_allow_insecure_loopback:
        if not is_loopback(host):
            raise ConfigError(
                f"refusing plain ws:// on {host}: --live-insecure-loopback applies to "
                "loopback addresses only"
            )
    else:
        load_server_tls(cfg.live_tls_cert, cfg.live_tls_key)
    command: list[str] = live_child_command(
        cfg, bind=cfg.live_bind, allow_insecure_loopback=cfg.live_allow_insecure_loopback
    )
    return command


@hub.command("live")
@click.option(
    "--bind",
    default=None,
    metavar="HOST:PORT",
    help="Listen here (default: [live] bind in hub.toml or TIANGONG_HUB_LIVE_BIND).",
)
@click.option(
    "--insecure-loopback",
    is_flag=True,
    help="Plain ws:// without TLS, on a loopback address only: for tests.",
)
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="Stop when this process is gone (set by `hub serve`).")
@click.pass_context
def live_cmd(
    ctx: click.Context, bind: str | None, insecure_loopback: bool, parent_pid: int | None
) -> None:
    """Run only the live WebSocket server (agents connect here; `hub serve` runs it as a
    child). Stops on SIGTERM/SIGINT, closing every agent connection with code 1001."""
    import logging

    from hub.live import run_until_signalled, start_configured

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = _config(_state(ctx))
        if not (cfg.data_dir / "root.json").exists():
            raise ConfigError(f"{cfg.data_dir} is not an initialised hub: run `tiangong hub init`")
        server = start_configured(
            cfg, bind=bind, allow_insecure_loopback=True if insecure_loopback else None
        )
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"error: live server: cannot listen on {bind or cfg.live_bind}: {exc}",
                   err=True)
        sys.exit(2)
    scheme = "ws" if server.hub.binding == b"" else "wss"
    click.echo(f"live server for hub {server.hub.hub_id} on {scheme}://{bind or cfg.live_bind}"
               "/live", err=True)
    run_until_signalled(server, parent_pid=parent_pid)


def _cert_names(cert: Any) -> str:
    from cryptography import x509

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "-"
    return ", ".join(str(n.value) for n in names)


_tls_names_option = click.option(
    "--name",
    "names",
    multiple=True,
    metavar="NAME",
    help="Host name or IP address agents connect to (repeatable; default: localhost, "
    "127.0.0.1 and this host's name).",
)


@hub.group("tls")
def tls_group() -> None:
    """The live channel's TLS files in <data-dir>/tls (private CA, server certificate)."""


@tls_group.command("init")
@_tls_names_option
@click.pass_context
def tls_init(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Create the private CA and a server certificate for a hub initialised before it had
    them (`hub init` does this for new hubs). Refuses if the CA exists."""
    from hub.keystore import load_hub_keys
    from hub.services.context import utc_now
    from hub.tls import create_ca, default_names, issue_server_certificate, tls_files

    try:
        cfg = _config(_state(ctx))
        hub_id = load_hub_keys(cfg.data_dir, with_private=False).hub_id
        files = tls_files(cfg.data_dir)
        now = utc_now()
        create_ca(files, hub_id, now)
        cert = issue_server_certificate(files, list(names) or default_names(), now)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"live TLS CA {files.ca_cert} created; server certificate {files.server_cert} "
               f"for {_cert_names(cert)}")
    click.echo("  agents enrolled from now on get the CA in their enrollment response; give "
               "it to agents enrolled before (docs/live.md)")


@tls_group.command("issue")
@_tls_names_option
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Validity in days (default: 730; never past the CA's own expiry).")
@click.pass_context
def tls_issue(ctx: click.Context, names: tuple[str, ...], days: int | None) -> None:
    """Sign a new server certificate (and key) with the hub's CA, e.g. when the hub's
    address changes. Agents pin the CA, so they accept it at once; restart `hub serve` /
    `hub live` to use it."""
    from hub.services.context import utc_now
    from hub.tls import SERVER_VALIDITY_DAYS, default_names, issue_server_certificate, tls_files

    try:
        cfg = _config(_state(ctx))
        files = tls_files(cfg.data_dir)
        cert = issue_server_certificate(files, list(names) or default_names(), utc_now(),
                                        days=days or SERVER_VALIDITY_DAYS)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"server certificate {files.server_cert} issued for {_cert_names(cert)}, "
               f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%MZ}")
    click.echo("  restart `tiangong hub serve` (or `hub live`) to use it")


# --- users ----------------------------------------------------------------------------


def _user_row(user: Any) -> dict[str, Any]:
    from hub.services.users import roles_of

    return {
        "username": user.username,
        "display_name": user.display_name,
        "email": user.email,
        "source": user.source,
        "active": user.is_active,
        "roles": [f"{r}@{e}" if e else r for r, e in roles_of(user)],
    }


@hub.group()
def users() -> None:
    """Users and role grants."""


@users.command("create")
@click.argument("username")
@click.option("--display-name", default="")
@click.option("--email", default="")
@click.option("--source", type=click.Choice(["local", "saml"]), default="local")
@json_option
@click.pass_context
def users_create(
    ctx: click.Context, username: str, display_name: str, email: str, source: str, as_json: bool
) -> None:
    """Create a user (no roles yet)."""
    from hub.services.users import create_user

    with _services(ctx) as sc:
        user = create_user(sc, username, display_name=display_name, email=email, source=source)
        row = _user_row(user)
    _emit(row, as_json)


@users.command("list")
@json_option
@click.pass_context
def users_list(ctx: click.Context, as_json: bool) -> None:
    """List users and their roles."""
    from hub.services.users import list_users, require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = [_user_row(u) for u in list_users(sc.session)]
    _emit(rows, as_json)


@users.command("grant")
@click.argument("username")
@click.argument("role")
@click.option("--environment", default=None, help="Only in this environment (default: all).")
@click.pass_context
def users_grant(ctx: click.Context, username: str, role: str, environment: str | None) -> None:
    """Grant ROLE to USERNAME."""
    from hub.services.users import grant_role

    with _services(ctx) as sc:
        grant_role(sc, username, role, environment)
    scope = f"in {environment}" if environment else "globally"
    click.echo(f"granted {role} to {username} {scope}")


@users.command("revoke")
@click.argument("username")
@click.argument("role")
@click.option("--environment", default=None)
@click.pass_context
def users_revoke(ctx: click.Context, username: str, role: str, environment: str | None) -> None:
    """Remove ROLE from USERNAME."""
    from hub.services.users import revoke_role

    with _services(ctx) as sc:
        revoke_role(sc, username, role, environment)
    click.echo(f"revoked {role} from {username}")


@users.command("deactivate")
@click.argument("username")
@click.pass_context
def users_deactivate(ctx: click.Context, username: str) -> None:
    """Deactivate a user (it keeps its history; it may do nothing)."""
    from hub.services.users import set_active

    with _services(ctx) as sc:
        set_active(sc, username, False)
    click.echo(f"user {username} deactivated")


@users.command("activate")
@click.argument("username")
@click.pass_context
def users_activate(ctx: click.Context, username: str) -> None:
    """Reactivate a user."""
    from hub.services.users import set_active

    with _services(ctx) as sc:
        set_active(sc, username, True)
    click.echo(f"user {username} activated")


# --- products and releases ------------------------------------------------------------


@hub.group()
def products() -> None:
    """Products (things you deploy)."""


@products.command("create")
@click.argument("name")
@click.option("--description", default="")
@click.pass_context
def products_create(ctx: click.Context, name: str, description: str) -> None:
    """Create a product."""
    from hub.services.releases import create_product

    with _services(ctx) as sc:
        create_product(sc, name, description=description)
    click.echo(f"product {name} created")


@products.command("list")
@json_option
@click.pass_context
def products_list(ctx: click.Context, as_json: bool) -> None:
    """List products."""
    from hub.services.releases import list_products
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = [
            {"name": p.name, "description": p.description, "created_at": p.created_at}
            for p in list_products(sc.session)
        ]
    _emit(rows, as_json)


def _release_row(rel: Any, full: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {
        "product": rel.product.name,
        "version": rel.version,
        "state": rel.state,
        "author": rel.author.username,
        "content_hash": rel.content_hash if full else rel.content_hash[:16],
        "created_at": rel.created_at,
    }
    if full:
        row.update(
            description=rel.description,
            submitted_at=rel.submitted_at,
            stored_path=rel.stored_path,
            steps=[s.get("name") for s in rel.steps],
            files=[f["name"] for f in rel.files],
            approvals=[
                {
                    "by": a.approver.username,
                    "decision": a.decision,
                    "environment": a.environment.name if a.environment else None,
                    "comment": a.comment,
                    "at": a.at,
                }
                for a in rel.approvals
            ],
        )
    return row


@hub.group()
def releases() -> None:
    """Releases: create, submit, approve, reject, diff."""


@releases.command("create")
@click.argument("release_path", type=click.Path(exists=True, path_type=Path))
@click.option("--product", default=None, help="Refuse unless release.toml names this product.")
@click.option(
    "--create-product",
    "make_product",
    is_flag=True,
    help="Create the product first if it does not exist.",
)
@json_option
@click.pass_context
def releases_create(
    ctx: click.Context, release_path: Path, product: str | None, make_product: bool, as_json: bool
) -> None:
    """Create a draft release from RELEASE_PATH: a release directory (release.toml + files)
    or a release archive (.tar, .tar.gz, .tgz, .zip)."""
    from hub.services.releases import create_release

    with _services(ctx) as sc:
        rel = create_release(sc, release_path, product=product, create_missing_product=make_product)
        row = _release_row(rel, full=True)
    _emit(row, as_json)


@releases.command("list")
@click.option("--product", default=None)
@json_option
@click.pass_context
def releases_list(ctx: click.Context, product: str | None, as_json: bool) -> None:
    """List releases."""
    from hub.services.releases import list_releases
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = [_release_row(r) for r in list_releases(sc.session, product)]
    _emit(rows, as_json)


@releases.command("show")
@click.argument("product")
@click.argument("version")
@json_option
@click.pass_context
def releases_show(ctx: click.Context, product: str, version: str, as_json: bool) -> None:
    """Show one release with its steps, files and approvals."""
    from hub.services.releases import get_release
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        row = _release_row(get_release(sc.session, product, version), full=True)
    _emit(row, as_json)


@releases.command("submit")
@click.argument("product")
@click.argument("version")
@click.pass_context
def releases_submit(ctx: click.Context, product: str, version: str) -> None:
    """Submit a draft for approval (its content hash is fixed from now on)."""
    from hub.services.releases import get_release, submit_release

    with _services(ctx) as sc:
        rel = submit_release(sc, get_release(sc.session, product, version))
        digest = rel.content_hash
    click.echo(f"release {product} {version} submitted; content hash {digest}")


@releases.command("approve")
@click.argument("product")
@click.argument("version")
@click.option("--comment", default="")
@click.option("--environment", default=None, help="Approve for this environment only.")
@click.pass_context
def releases_approve(
    ctx: click.Context, product: str, version: str, comment: str, environment: str | None
) -> None:
    """Approve a submitted release (never your own)."""
    from hub.services.approvals import approve_release
    from hub.services.releases import get_release

    with _services(ctx) as sc:
        approve_release(
            sc, get_release(sc.session, product, version), comment=comment, environment=environment
        )
        who = sc.actor_name
    click.echo(f"release {product} {version} approved by {who}")


@releases.command("reject")
@click.argument("product")
@click.argument("version")
@click.option("--comment", required=True, help="Why (required).")
@click.option("--environment", default=None)
@click.pass_context
def releases_reject(
    ctx: click.Context, product: str, version: str, comment: str, environment: str | None
) -> None:
    """Reject a submitted release (final)."""
    from hub.services.approvals import reject_release
    from hub.services.releases import get_release

    with _services(ctx) as sc:
        reject_release(
            sc, get_release(sc.session, product, version), comment=comment, environment=environment
        )
    click.echo(f"release {product} {version} rejected")


@releases.command("diff")
@click.argument("product")
@click.argument("from_version")
@click.argument("to_version")
@json_option
@click.pass_context
def releases_diff(
    ctx: click.Context, product: str, from_version: str, to_version: str, as_json: bool
) -> None:
    """Steps and files added, removed or changed between two versions."""
    from hub.services.releases import diff_releases, get_release
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        d = diff_releases(
            get_release(sc.session, product, from_version),
            get_release(sc.session, product, to_version),
        )
    if as_json:
        _emit(d.to_json(), True)
        return
    if d.empty:
        click.echo("no differences")
        return
    for what, data in d.to_json().items():
        for change, names in data.items():
            if change == "reordered":
                if names:
                    click.echo(f"{what}: reordered")
                continue
            for name in names:
                click.echo(f"{what} {change}: {name}")


# --- environments and agents ----------------------------------------------------------


@hub.group()
def environments() -> None:
    """Environments (sites or clusters)."""


@environments.command("create")
@click.argument("name")
@click.option("--description", default="")
@click.option("--required-approvals", type=int, default=1, show_default=True)
@click.pass_context
def environments_create(
    ctx: click.Context, name: str, description: str, required_approvals: int
) -> None:
    """Create an environment."""
    from hub.services.environments import create_environment

    with _services(ctx) as sc:
        create_environment(sc, name, description=description, required_approvals=required_approvals)
    click.echo(f"environment {name} created (requires {required_approvals} approval(s))")


@environments.command("set-approvals")
@click.argument("name")
@click.argument("required_approvals", type=int)
@click.pass_context
def environments_set_approvals(ctx: click.Context, name: str, required_approvals: int) -> None:
    """Change how many distinct approvers NAME requires."""
    from hub.services.environments import set_required_approvals

    with _services(ctx) as sc:
        set_required_approvals(sc, name, required_approvals)
    click.echo(f"environment {name} now requires {required_approvals} approval(s)")


@environments.command("list")
@json_option
@click.pass_context
def environments_list(ctx: click.Context, as_json: bool) -> None:
    """List environments."""
    from hub.services.environments import list_environments
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = [
            {
                "name": e.name,
                "required_approvals": e.required_approvals,
                "description": e.description,
            }
            for e in list_environments(sc.session)
        ]
    _emit(rows, as_json)


@hub.group()
def agents() -> None:
    """Agents: enroll, list, revoke."""


def _agent_row(a: Any) -> dict[str, Any]:
    return {
        "agent_id": a.agent_id,
        "environment": a.environment.name,
        "hostname": a.hostname,
        "status": a.status,
        "enrolled_at": a.enrolled_at,
        "last_seen": a.last_seen,
        "ed25519_public": a.ed25519_public,
    }


@agents.command("enroll")
@click.argument("request_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--environment",
    default=None,
    help="Environment to enroll into (default: the one the request names).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the signed enrollment response here.",
)
@json_option
@click.pass_context
def agents_enroll(
    ctx: click.Context, request_file: Path, environment: str | None, out: Path | None, as_json: bool
) -> None:
    """Enroll the agent whose enrollment request is REQUEST_FILE (the signed file `tiangong
    agent init` writes, or a plain JSON object)."""
    from hub.errors import ConfigError, ValidationError
    from hub.services.agents import MAX_REQUEST_BYTES, EnrollmentRequest, enroll_agent
    from signing.keyfile import write_file_atomic

    with _services(ctx) as sc:
        try:
            with open(request_file, "rb") as fh:
                data = fh.read(MAX_REQUEST_BYTES + 1)
        except OSError as exc:
            raise ValidationError(f"enrollment request {request_file}: {exc}") from exc
        request = EnrollmentRequest.from_bytes(data)
        env = environment or request.environment
        if env is None:
            raise ValidationError("the request names no environment: give --environment")
        resp = enroll_agent(sc, env, request)
        if out is not None:
            if sc.keys is None or sc.keys.release_key is None:
                raise ConfigError("the release key is needed to sign the enrollment response")
            write_file_atomic(
                out, resp.to_envelope(sc.keys.release_key), mode=0o644, overwrite=True
            )
        data_out = resp.to_json()
    _emit(
        {k: v for k, v in data_out.items() if k != "root"} | {"response": str(out or "-")}, as_json
    )


@agents.command("list")
@click.option("--environment", default=None)
@json_option
@click.pass_context
def agents_list(ctx: click.Context, environment: str | None, as_json: bool) -> None:
    """List agents with their presence: ``online`` when seen (live authentication or
    heartbeat) within 2.5 heartbeat intervals, else ``offline`` / ``never`` / ``revoked``."""
    from hub.services.agents import list_agents
    from hub.services.presence import agent_presence
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        now = sc.now()
        rows = []
        for a in list_agents(sc.session, environment):
            presence = agent_presence(a, now)
            rows.append(_agent_row(a) | {"presence": presence.state, "online": presence.online})
    _emit(
        rows,
        as_json,
        ["agent_id", "environment", "hostname", "status", "presence", "last_seen", "enrolled_at"]
        if not as_json
        else None,
    )


@agents.command("revoke")
@click.argument("agent_id")
@click.option("--reason", default="")
@click.pass_context
def agents_revoke(ctx: click.Context, agent_id: str, reason: str) -> None:
    """Revoke an agent."""
    from hub.services.agents import revoke_agent

    with _services(ctx) as sc:
        revoke_agent(sc, agent_id, reason=reason)
    click.echo(f"agent {agent_id} revoked")


# --- deployments ----------------------------------------------------------------------


def _deployment_row(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "release": d.release.label,
        "environment": d.environment.name,
        "agent": d.agent.agent_id if d.agent else None,
        "state": d.state,
        "sequence": d.sequence,
        "bundle_id": d.bundle_id,
        "queued_by": d.queued_by,
        "queued_at": d.queued_at,
        "updated_at": d.updated_at,
        "result_summary": d.result_summary,
    }


@hub.group()
def deployments() -> None:
    """Deployments: queue approved releases, follow their state."""


@deployments.command("queue")
@click.argument("product")
@click.argument("version")
@click.option("--environment", required=True)
@json_option
@click.pass_context
def deployments_queue(
    ctx: click.Context, product: str, version: str, environment: str, as_json: bool
) -> None:
    """Queue an approved release for an environment (one deployment per agent)."""
    from hub.services.deployments import queue_deployment
    from hub.services.releases import get_release

    with _services(ctx) as sc:
        deps = queue_deployment(sc, get_release(sc.session, product, version), environment)
        rows = [_deployment_row(d) for d in deps]
    _emit(rows, as_json, ["id", "release", "environment", "agent", "state"])


@deployments.command("list")
@click.option("--environment", default=None)
@click.option("--state", default=None)
@json_option
@click.pass_context
def deployments_list(
    ctx: click.Context, environment: str | None, state: str | None, as_json: bool
) -> None:
    """List deployments."""
    from hub.services.deployments import list_deployments
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = [_deployment_row(d) for d in list_deployments(sc.session, environment, state)]
    _emit(
        rows,
        as_json,
        None
        if as_json
        else ["id", "release", "environment", "agent", "state", "sequence", "updated_at"],
    )


@deployments.command("show")
@click.argument("deployment_id", type=int)
@json_option
@click.pass_context
def deployments_show(ctx: click.Context, deployment_id: int, as_json: bool) -> None:
    """Show one deployment."""
    from hub.services.deployments import get_deployment
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        row = _deployment_row(get_deployment(sc.session, deployment_id))
    _emit(row, as_json)


@deployments.command("mark")
@click.argument("deployment_id", type=int)
@click.argument("state")
@click.pass_context
def deployments_mark(ctx: click.Context, deployment_id: int, state: str) -> None:
    """Move a deployment to STATE by hand (e.g. interrupted), if the transition is allowed."""
    from hub.services.deployments import get_deployment, transition

    with _services(ctx) as sc:
        transition(sc, get_deployment(sc.session, deployment_id), state)
    click.echo(f"deployment {deployment_id} is now {state}")


# --- audit ----------------------------------------------------------------------------


@hub.group("audit")
def audit_group() -> None:
    """The hash-chained audit log: verify, checkpoint, export, show."""


@audit_group.command("verify")
@json_option
@click.pass_context
def audit_verify(ctx: click.Context, as_json: bool) -> None:
    """Verify the whole chain and every signed checkpoint; name every problem."""
    from hub.services import audit

    with _services(ctx) as sc:
        report = audit.verify(sc)
    if as_json:
        _emit(
            {
                "ok": report.ok,
                "events": report.events,
                "head_seq": report.last_seq,
                "head_hash": report.head_hash,
                "checkpoints": report.checkpoints_checked,
                "problems": [p.message for p in report.problems],
                "problem_count": report.problem_count,
            },
            True,
        )
    else:
        click.echo(report.summary())
    if not report.ok:
        sys.exit(3)


@audit_group.command("checkpoint")
@click.pass_context
def audit_checkpoint(ctx: click.Context) -> None:
    """Sign the current head with the audit key."""
    from hub.services import audit

    with _services(ctx) as sc:
        cp = audit.write_checkpoint(sc)
        seq, head = cp.seq, cp.head_hash
    click.echo(f"checkpoint signed at event {seq}: {head}")


@audit_group.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-checkpoint", is_flag=True, help="Do not sign a fresh checkpoint first.")
@click.pass_context
def audit_export(ctx: click.Context, out: Path, no_checkpoint: bool) -> None:
    """Write the log as JSON lines (with the root and checkpoints) for offline verification
    with `tiangong audit verify-export OUT --trust root.json`."""
    from hub.services import audit

    tmp = out.with_name(f".{out.name}.partial")
    with _services(ctx) as sc:
        if not no_checkpoint:
            audit.write_checkpoint(sc)
            sc.session.flush()
        with open(tmp, "wb") as fh:
            count = audit.export_audit(sc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    click.echo(f"{count} audit events written to {out}")


@audit_group.command("show")
@click.option("--last", "last", type=int, default=20, show_default=True)
@json_option
@click.pass_context
def audit_show(ctx: click.Context, last: int, as_json: bool) -> None:
    """Show the newest events."""
    from sqlalchemy import select

    from hub.db import AuditEvent
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "audit.read")
        rows = [
            {
                "seq": e.seq,
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "object": f"{e.object_type}:{e.object_id}",
                "details": e.details,
            }
            for e in sc.session.scalars(
                select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(last)
            )
        ][::-1]
    _emit(rows, as_json)
