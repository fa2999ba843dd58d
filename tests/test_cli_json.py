"""Every ``tiangong`` command that reports something a script would read takes ``--json``:
the whole command tree (bundle, keys, agent, hub, audit) is walked, so a new command without
it fails here. Daemons log instead (``agent run`` has ``--json-logs``)."""

from __future__ import annotations

import click

from tiangong.cli import root

#: Long-running commands: they log (``--json-logs``), they print no report.
DAEMONS = {"agent run", "agent supervise", "hub serve", "hub live", "hub scheduler"}


def _leaves(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()
            ) -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, f"'{' '.join((*prefix, name))}' is listed but cannot be loaded"
        if isinstance(cmd, click.Group):
            out |= _leaves(cmd, click.Context(cmd, parent=ctx), (*prefix, name))
        else:
            out[" ".join((*prefix, name))] = cmd
    return out


def test_every_command_that_reports_takes_json() -> None:
    leaves = _leaves(root, click.Context(root))
    groups = {name.split()[0] for name in leaves}
    assert {"bundle", "keys", "agent", "hub", "audit"} <= groups
    assert set(leaves) >= DAEMONS
    missing = sorted(name for name, cmd in leaves.items() if name not in DAEMONS
                     and not any("--json" in getattr(p, "opts", ()) for p in cmd.params))
    assert missing == []
