"""``tiangong hub releases plan`` and ``plans``: preflight plans of a release
(hub.services.plans; docs/rollouts.md, "Preflight bundles")."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from hub.cli.base import _done, _emit, _services, json_option
from hub.cli.releases import releases
from signing.durations import parse_duration


@releases.command("plan")
@click.argument("product")
@click.argument("version")
@click.option("--environment", default=None, help="Every enrolled agent of it.")
@click.option("--agent", "agent_id", default=None, help="This one agent.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Write the plan here (media); without it, into the live "
              "spool of each target agent.")
@click.option("--expires", default="24h", show_default=True, metavar="DURATION",
              help="How long the plan stays valid at the sites.")
@json_option
@click.pass_context
def releases_plan(ctx: click.Context, product: str, version: str, environment: str | None,
                  agent_id: str | None, out_dir: Path | None, expires: str,
                  as_json: bool) -> None:
    """Write a preflight plan of a release for an environment or an agent: the agents check
    connections, database versions, a Kubernetes dry run, free space and the release's own
    check scripts — changing nothing — and answer with a signed result (import it like any
    result). Uses no deployment sequence."""
    from hub.services.plans import create_plan
    from hub.services.releases import get_release

    try:
        expires_in = timedelta(seconds=parse_duration(expires))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with _services(ctx) as sc:
        report = create_plan(sc, get_release(sc.session, product, version),
                             environment=environment, agent_id=agent_id, out_dir=out_dir,
                             expires_in=expires_in)
    where = ", ".join(str(p) for p in report.files)
    if report.note and not as_json:
        click.echo(f"note: {report.note}", err=True)
    _done(as_json, f"plan {report.sequence} of {report.release} for {report.target} "
          f"({', '.join(report.agents)}) written to {where}; valid until "
          f"{report.expires_at:%Y-%m-%d %H:%M} UTC", report.to_json())


@releases.command("plans")
@click.argument("product")
@click.argument("version")
@json_option
@click.pass_context
def releases_plans(ctx: click.Context, product: str, version: str, as_json: bool) -> None:
    """The preflight plans of a release and every agent's answer, newest first."""
    from hub.services.plans import outcomes_json
    from hub.services.releases import get_release
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = outcomes_json(sc.session, get_release(sc.session, product, version))
    if as_json:
        _emit(rows, True)
        return
    if not rows:
        click.echo(f"no preflight plan of {product} {version} yet")
    for plan in rows:
        target = f"agent {plan['agent']}" if plan["agent"] else \
            f"environment {plan['environment']}"
        click.echo(f"plan {plan['plan']} for {target} by {plan['created_by']} at "
                   f"{plan['created_at']}")
        if not plan["outcomes"]:
            click.echo("  no answer yet")
        for o in plan["outcomes"]:
            click.echo(f"  {o['agent']}: {o['status']} at {o['received_at']}: {o['summary']}")
            for c in o["checks"]:
                if c["status"] == "failed":
                    click.echo(f"    failed {c['check']}: {c['summary']}")
