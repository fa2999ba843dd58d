"""``tiangong hub init`` and ``tiangong hub tls``: create a hub's data directory, keys, root
of trust and the live channel's private CA; re-issue its server certificate."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hub.cli.base import _config, _emit, _state, hub, json_option
from hub.errors import ConfigError, HubError

#: How people sign in to the web UI (``hub init --sign-in``): ``[saml]`` with an identity
#: provider, ``local`` passwords of the hub's own users (``[web] local_login``; for a trial
#: or a hub without an IdP), or ``none`` (the CLI only until one is configured).
SIGN_IN_METHODS = ("none", "saml", "local")


@dataclass(frozen=True)
class InitAnswers:
    """What ``hub init`` was told or asked: the first admin and environment, and sign-in."""

    admin: str
    environment: str | None
    sign_in: str
    public_url: str | None = None
    idp_metadata: Path | None = None
    admin_password: str | None = None  # local sign-in: the first admin's web password

    def web_settings(self) -> dict[str, Any]:
        """The ``[saml]`` / ``[web]`` tables for hub.toml (the metadata file is copied to
        ``idp-metadata.xml`` in the data directory)."""
        if self.sign_in == "saml":
            return {"saml": {"sp_base_url": self.public_url,
                             "idp_metadata_file": "idp-metadata.xml"}}
        if self.sign_in == "local":
            # Plain http is only for a hub on loopback (the web UI refuses local_login
            # beyond loopback without TLS); behind TLS the cookies are Secure.
            https = bool(self.public_url and self.public_url.startswith("https://"))
            return {"web": {"local_login": True, "secure_cookies": https}}
        return {}


@hub.command()
@click.option("--admin", "admin", default=None, metavar="USER",
              help="The first admin (default: asked on a terminal, else your login name).")
@click.option("--environment", "environment", default=None, metavar="NAME",
              help="Also create this first environment (site) (asked on a terminal).")
@click.option("--sign-in", "sign_in", type=click.Choice(SIGN_IN_METHODS), default=None,
              help="How people sign in to the web UI: saml (with --idp-metadata and "
                   "--public-url), local (passwords of the hub's own users, e.g. for a trial "
                   "on 127.0.0.1; `hub users set-password`) or none (the CLI only). Asked on "
                   "a terminal; default: saml when --idp-metadata is given, else none.")
@click.option("--admin-password-stdin", is_flag=True,
              help="With --sign-in local: read the first admin's web password from the "
                   "first line of standard input (asked on a terminal otherwise).")
@click.option("--idp-metadata", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The SAML identity provider's metadata XML (copied into the "
                                 "data directory as idp-metadata.xml).")
@click.option("--public-url", default=None, metavar="URL",
              help="How browsers reach the hub, e.g. https://hub.example.org (SAML's "
                   "sp_base_url; with local sign-in, https:// makes cookies Secure).")
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
@json_option
@click.pass_context
def init(
    ctx: click.Context,
    admin: str | None,
    environment: str | None,
    sign_in: str | None,
    admin_password_stdin: bool,
    idp_metadata: Path | None,
    public_url: str | None,
    hub_id: str | None,
    database_url: str | None,
    root_key_out: Path | None,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    tls_names: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create the data directory, database, keys, root document, the live channel's private
    CA and server certificate, the first admin, the first environment and the web UI's
    sign-in settings. On a terminal it asks for what the options do not give."""
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
    if (data_dir / "hub.toml").exists() or (data_dir / "root.json").exists():
        click.echo(f"error: {data_dir} is already initialised", err=True)
        sys.exit(2)
    answers = _init_answers(admin, environment, sign_in, idp_metadata, public_url,
                            interactive=sys.stdin.isatty(), password_stdin=admin_password_stdin)
    admin = answers.admin
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
        doc: dict[str, Any] = {"hub": settings} | answers.web_settings()
        if answers.idp_metadata is not None:
            (data_dir / "idp-metadata.xml").write_bytes(answers.idp_metadata.read_bytes())
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"# Tiangong hub settings (TIANGONG_HUB_* environment variables win)\n")
            fh.write(tomli_w.dumps(doc).encode("utf-8"))
        (data_dir / "releases").mkdir(exist_ok=True)
        from hub.config import load_config

        cfg = load_config(data_dir)
        from hub import audit_mac

        engine = make_engine(cfg.database_url, audit_mac=audit_mac.load(data_dir / "keys"))
        try:
            upgrade(engine)
            with make_session_factory(engine)() as session:
                first = bootstrap_admin(session, lambda: now, admin)
                session.commit()
                env_error = _first_steps(session, first, answers, data_dir)
        finally:
            engine.dispose()
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        _emit({"hub_id": trust.hub_id, "data_dir": data_dir, "database": cfg.database_url,
               "root_json": trust.root_json, "release_key": trust.release_key,
               "audit_key": trust.audit_key, "tls_ca": tls.ca_cert,
               "tls_cert": tls.server_cert, "admin": admin,
               "environment": answers.environment if env_error is None else None,
               "sign_in": answers.sign_in, "root_key": trust.root_key,
               "root_key_encrypted": trust.root_key_encrypted}, True)
    else:
        _print_init(trust, cfg, tls, server_cert, answers, env_error is None)
    if env_error is not None:
        click.echo(f"error: {env_error}", err=True)
        sys.exit(1)


def _print_init(trust: Any, cfg: Any, tls: Any, server_cert: Any, answers: InitAnswers,
                environment_made: bool) -> None:
    data_dir, admin = cfg.data_dir, answers.admin
    click.echo(f"hub {trust.hub_id} initialised in {data_dir}")
    click.echo(f"  database       {cfg.database_url}")
    click.echo(f"  root document  {trust.root_json}  (give this to agents and auditors)")
    click.echo(f"  release key    {trust.release_key}")
    click.echo(f"  audit key      {trust.audit_key}")
    click.echo(f"  live TLS CA    {tls.ca_cert}  (enrollment responses carry it to agents)")
    click.echo(f"  live TLS cert  {tls.server_cert}  for {_cert_names(server_cert)}")
    click.echo(f"  first admin    {admin}  (act as them: tiangong hub --local-admin {admin} …)")
    if answers.environment and environment_made:
        click.echo(f"  environment    {answers.environment}")
    if answers.sign_in == "saml":
        click.echo(f"  web sign-in    SAML: IdP metadata {data_dir / 'idp-metadata.xml'}, "
                   f"hub at {answers.public_url}")
    elif answers.sign_in == "local":
        how = ("password set" if answers.admin_password else
               f"set its password: tiangong hub --local-admin {admin} users set-password {admin}")
        click.echo(f"  web sign-in    local passwords ([web] local_login); {admin}: {how}")
    else:
        click.echo("  web sign-in    none configured: add [saml] to hub.toml (docs/web-login.md)")
    enc = "passphrase-encrypted" if trust.root_key_encrypted else "NOT encrypted"
    click.echo(f"ROOT KEY ({enc}): {trust.root_key}")
    click.echo("  Move it off this machine now (offline storage); the hub runs without it and")
    click.echo("  needs it only to rotate keys (tiangong keys root rotate).")
    click.echo(f"Next: add people with `tiangong hub --local-admin {admin} users add NAME "
               "--role ROLE`.")


def _init_answers(admin: str | None, environment: str | None, sign_in: str | None,
                  idp_metadata: Path | None, public_url: str | None, *,
                  interactive: bool, password_stdin: bool) -> InitAnswers:
    """The first admin, first environment and sign-in settings of ``hub init``: from the
    options, else asked on a terminal, else the defaults (login name, none, none). Checked
    here, before anything is created.

    Raises:
        click.UsageError: SAML without its metadata or public URL; an option that does not
            go with the sign-in method; a local password that is too short or long.
    """
    import getpass

    from hub.services.users import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS

    if admin is None:
        admin = (click.prompt("First admin (a hub user name)", default=getpass.getuser())
                 if interactive else getpass.getuser())
    if environment is None and interactive:
        environment = click.prompt("First environment (a site, e.g. plant-a; empty: none)",
                                   default="", show_default=False) or None
    if sign_in is None:
        if idp_metadata is not None:
            sign_in = "saml"
        elif interactive:
            sign_in = click.prompt("Web UI sign-in", type=click.Choice(SIGN_IN_METHODS),
                                   default="none")
        else:
            sign_in = "none"
    if password_stdin and sign_in != "local":
        raise click.UsageError("--admin-password-stdin goes with --sign-in local")
    if sign_in == "none":
        if idp_metadata is not None or public_url is not None:
            raise click.UsageError("--idp-metadata and --public-url go with --sign-in saml")
        return InitAnswers(admin, environment, sign_in)
    if sign_in == "local":
        if idp_metadata is not None:
            raise click.UsageError("--idp-metadata goes with --sign-in saml")
        password = None
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        elif interactive:
            password = click.prompt(f"Web password for {admin} (empty: set it later)",
                                    default="", show_default=False, hide_input=True,
                                    confirmation_prompt=True) or None
        if password is not None and not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            raise click.UsageError(f"a password has {MIN_PASSWORD_CHARS} to "
                                   f"{MAX_PASSWORD_CHARS} characters, not {len(password)}")
        return InitAnswers(admin, environment, sign_in, public_url=public_url,
                           admin_password=password)
    if idp_metadata is None and interactive:
        idp_metadata = click.prompt("The IdP's metadata XML file", type=click.Path(
            dir_okay=False, exists=True, path_type=Path))
    if public_url is None and interactive:
        public_url = click.prompt("How browsers reach the hub (e.g. https://hub.example.org)")
    if idp_metadata is None or not public_url:
        raise click.UsageError("--sign-in saml needs --idp-metadata FILE and --public-url URL")
    return InitAnswers(admin, environment, sign_in, public_url=public_url.rstrip("/"),
                       idp_metadata=idp_metadata)


def _first_steps(session: Any, admin: Any, answers: InitAnswers, data_dir: Path) -> str | None:
    """As the first admin: set its web password (local sign-in), create the first
    environment. The error (with its fix) if the environment fails, None otherwise; the hub
    is usable either way."""
    from hub.keystore import load_hub_keys
    from hub.services.context import ServiceContext, utc_now
    from hub.services.environments import create_environment
    from hub.services.users import set_password

    sc = ServiceContext(session, utc_now, admin, load_hub_keys(data_dir), None)
    if answers.admin_password:
        set_password(sc, admin.username, answers.admin_password)  # checked in _init_answers
        session.commit()
    name = answers.environment
    if not name:
        return None
    try:
        create_environment(sc, name)
        session.commit()
    except HubError as exc:
        session.rollback()
        return (f"environment {name!r} not created: {exc}; the hub is ready otherwise: "
                f"create it with `tiangong hub --local-admin {admin.username} environments "
                "create NAME`")
    return None


def _cert_json(files: Any, cert: Any) -> dict[str, Any]:
    return {"ca_cert": files.ca_cert, "server_cert": files.server_cert,
            "names": _cert_names(cert).split(", "), "not_after": cert.not_valid_after_utc}


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
@json_option
@click.pass_context
def tls_init(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
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
    if as_json:
        _emit(_cert_json(files, cert), True)
        return
    click.echo(f"live TLS CA {files.ca_cert} created; server certificate {files.server_cert} "
               f"for {_cert_names(cert)}")
    click.echo("  agents enrolled from now on get the CA in their enrollment response; give "
               "it to agents enrolled before (docs/live.md)")


@tls_group.command("issue")
@_tls_names_option
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Validity in days (default: 730; never past the CA's own expiry).")
@json_option
@click.pass_context
def tls_issue(ctx: click.Context, names: tuple[str, ...], days: int | None,
              as_json: bool) -> None:
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
    if as_json:
        _emit(_cert_json(files, cert), True)
        return
    click.echo(f"server certificate {files.server_cert} issued for {_cert_names(cert)}, "
               f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%MZ}")
    click.echo("  restart `tiangong hub serve` (or `hub live`) to use it")
