"""``tiangong hub serve``, ``tiangong hub live`` and ``tiangong hub scheduler``: run the hub
under gunicorn, the live WebSocket server and the scheduler (as ``serve``'s children or on
their own). The serving itself is in ``hub.serve``, ``hub.live`` and ``hub.scheduler``."""

from __future__ import annotations

import sys
from typing import Any

import click

from hub.cli.base import _config, _state, hub
from hub.errors import ConfigError

DEFAULT_LIVE_PORT = 8401  # TCP port of the live server when a bind address names none


def with_live_port(bind: str) -> str:
    """``bind`` with :data:`DEFAULT_LIVE_PORT` added when it names a host only
    (``0.0.0.0`` -> ``0.0.0.0:8401``, ``::1`` / ``[::1]`` -> ``[::1]:8401``)."""
    bind = bind.strip()
    if bind.startswith("[") and bind.endswith("]"):
        return f"{bind}:{DEFAULT_LIVE_PORT}"
    if ":" not in bind:
        return f"{bind}:{DEFAULT_LIVE_PORT}"
    if bind.count(":") > 1 and not bind.startswith("["):  # a bare IPv6 address
        return f"[{bind}]:{DEFAULT_LIVE_PORT}"
    return bind


@hub.command()
@click.option("--bind", default=None, help="host:port (default from config: 127.0.0.1:8400).")
@click.option("--workers", type=int, default=None)
@click.option(
    "--live-bind",
    default=None,
    metavar="HOST[:PORT]",
    help="Also run the live WebSocket server on this address; the port defaults to 8401 "
    "(default: [live] bind in hub.toml; none: no live server).",
)
@click.option(
    "--live-insecure-loopback",
    is_flag=True,
    help="Live server without TLS (plain ws://), on a loopback address only: for tests.",
)
@click.option("--no-scheduler", is_flag=True, help="Do not start the scheduler child "
              "(`tiangong hub scheduler`: windows opening, freezes ending), e.g. when it runs "
              "on another host of this hub.")
@click.pass_context
def serve(
    ctx: click.Context,
    bind: str | None,
    workers: int | None,
    live_bind: str | None,
    live_insecure_loopback: bool,
    no_scheduler: bool,
) -> None:
    """Serve the hub under gunicorn (health check at /healthz, which also says whether the
    live server answers), the live WebSocket server as a child process (`tiangong hub
    live`) when a live bind address is set, and the scheduler as another (`tiangong hub
    scheduler`)."""
    import logging

    from hub.config import with_overrides
    from hub.serve import live_child_command, scheduler_child_command
    from hub.serve import serve as run

    # the master's own lines (children started, exited, started again) beside gunicorn's
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per migration plugin
    try:
        cfg = _config(_state(ctx))
        changes: dict[str, Any] = {}
        if bind:
            changes["bind"] = bind
        if workers:
            changes["workers"] = workers
        if live_bind or cfg.live_bind:
            changes["live_bind"] = with_live_port(live_bind or cfg.live_bind)
        if live_insecure_loopback:
            changes["live_allow_insecure_loopback"] = True
        cfg = with_overrides(cfg, **changes)
        live_command = _live_command_if_configured(cfg, live_child_command)
        # build_app refuses bad web settings and a database newer than this hub
        run(cfg, live_command=live_command,
            scheduler_command=None if no_scheduler else scheduler_child_command(cfg))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


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
    metavar="HOST[:PORT]",
    help="Listen here; the port defaults to 8401 (default: [live] bind in hub.toml or "
    "TIANGONG_HUB_LIVE_BIND).",
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
        bind = with_live_port(bind or cfg.live_bind) if (bind or cfg.live_bind) else None
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


@hub.command("scheduler")
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="Stop when this process is gone (set by `hub serve`).")
@click.pass_context
def scheduler_cmd(ctx: click.Context, parent_pid: int | None) -> None:
    """Run only the scheduler (`hub serve` runs it as a child): acts when a maintenance
    window opens or a freeze ends — releases held deployments (the live server pushes them),
    writes bundles to export_dir for the environments in scheduled_export, expires one-off
    freezes and unconfirmed override requests. One per hub (a lock file in the data
    directory). Stops on SIGTERM/SIGINT."""
    import logging

    from hub.scheduler import run_configured

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run
    try:
        run_configured(_config(_state(ctx)), parent_pid=parent_pid)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
