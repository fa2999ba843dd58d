"""``tiangong hub audit``: verify, checkpoint, export and show the hub's hash-chained audit
log (rules in ``hub.services.audit``). The offline verifier of an export is ``hub.audit_cli``
(``tiangong audit verify-export``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hub.audit_cli import chain_report_json
from hub.cli.base import _done, _emit, _services, hub, json_option


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
        _emit(chain_report_json(report), True)
    else:
        click.echo(report.summary())
    if not report.ok:
        sys.exit(3)


@audit_group.command("checkpoint")
@json_option
@click.pass_context
def audit_checkpoint(ctx: click.Context, as_json: bool) -> None:
    """Sign the current head with the audit key."""
    from hub.services import audit

    with _services(ctx) as sc:
        cp = audit.write_checkpoint(sc)
        seq, head = cp.seq, cp.head_hash
    _done(as_json, f"checkpoint signed at event {seq}: {head}", {"seq": seq, "head_hash": head})


@audit_group.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-checkpoint", is_flag=True, help="Do not sign a fresh checkpoint first.")
@json_option
@click.pass_context
def audit_export(ctx: click.Context, out: Path, no_checkpoint: bool, as_json: bool) -> None:
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
    _done(as_json, f"{count} audit events written to {out}", {"events": count, "file": str(out)})


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


@audit_group.command("mac-key")
@json_option
@click.pass_context
def audit_mac_key(ctx: click.Context, as_json: bool) -> None:
    """Give a hub initialised before audit MACs its audit MAC key (keys/audit-mac.key).

    Every event from the next one on must then carry a MAC. Stop the hub's other processes
    (serve, live) first and start them again after: until they load the key, the events
    they write carry none and `audit verify` would name them.
    """
    from sqlalchemy import select

    from hub import audit_mac
    from hub.cli.base import _config, _state
    from hub.db import AuditHead
    from hub.errors import ConfigError
    from hub.services import audit
    from hub.services.users import require

    keys_dir = _config(_state(ctx)).data_dir / "keys"
    with _services(ctx) as sc:
        require(sc.actor, "audit.checkpoint")
        audit.lock_head(sc.session)
        head = int(sc.session.scalar(select(AuditHead.seq)) or 0)
        try:
            mac = audit_mac.create(keys_dir, from_seq=head + 1)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        audit.append_event(sc.session, sc.now(), sc.actor_name, "audit.mac_key_created",
                           "audit", "mac-key", {"from_seq": head + 1}, mac=mac)
    _done(as_json, f"audit MAC key written to {keys_dir / audit_mac.MAC_KEY_FILE}: events "
          f"from {head + 1} on carry a MAC", {"from_seq": head + 1,
                                              "file": str(keys_dir / audit_mac.MAC_KEY_FILE)})
