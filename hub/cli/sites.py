"""``tiangong hub environments`` and ``tiangong hub agents``: the sites and the agents
enrolled in them (rules in ``hub.services.environments`` and ``hub.services.agents``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hub.cli.base import _done, _emit, _services, hub, json_option
from hub.errors import ConfigError
from tiangong import channel_text


@hub.group()
def environments() -> None:
    """Environments (sites or clusters)."""


@environments.command("create")
@click.argument("name")
@click.option("--description", default="")
@click.option("--required-approvals", type=int, default=1, show_default=True)
@json_option
@click.pass_context
def environments_create(
    ctx: click.Context, name: str, description: str, required_approvals: int, as_json: bool
) -> None:
    """Create an environment."""
    from hub.services.environments import create_environment

    with _services(ctx) as sc:
        create_environment(sc, name, description=description, required_approvals=required_approvals)
    _done(as_json, f"environment {name} created (requires {required_approvals} approval(s))",
          {"name": name, "description": description, "required_approvals": required_approvals})


@environments.command("set-approvals")
@click.argument("name")
@click.argument("required_approvals", type=int)
@json_option
@click.pass_context
def environments_set_approvals(
    ctx: click.Context, name: str, required_approvals: int, as_json: bool
) -> None:
    """Change how many distinct approvers NAME requires."""
    from hub.services.environments import set_required_approvals

    with _services(ctx) as sc:
        set_required_approvals(sc, name, required_approvals)
    _done(as_json, f"environment {name} now requires {required_approvals} approval(s)",
          {"name": name, "required_approvals": required_approvals})


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
                "adhoc_required_approvals": e.adhoc_required_approvals,
                "preflight_within_h": e.preflight_within_h,
                "description": e.description,
            }
            for e in list_environments(sc.session)
        ]
    _emit(rows, as_json)


@environments.command("adhoc-policy")
@click.argument("name")
@click.option("--required", type=int, default=None,
              help="Approvals an ad-hoc run (tiangong run) needs in NAME (0: none).")
@click.option("--clear", is_flag=True, help="Ad-hoc runs follow NAME's approval rule again.")
@json_option
@click.pass_context
def environments_adhoc_policy(ctx: click.Context, name: str, required: int | None,
                              clear: bool, as_json: bool) -> None:
    """Show or set NAME's ad-hoc policy: how many approvals a one-off run needs there
    (docs/operations.md "Ad-hoc policy"). Admins only; audited. Releases keep NAME's rule."""
    from hub.services.adhoc_policy import describe_policy, set_adhoc_policy

    _policy_command(ctx, name, required, clear, as_json, option="--required",
                    field="adhoc_required_approvals", setter=set_adhoc_policy,
                    describe=describe_policy)


def _policy_command(ctx: click.Context, name: str, value: int | None, clear: bool,
                    as_json: bool, *, option: str, field: str,
                    setter: Callable[[Any, str, int | None], Any],
                    describe: Callable[[Any], str]) -> None:
    """Show NAME's policy (``field``), or set ``value`` / clear it with ``setter`` (the
    service checks the grant and audits)."""
    from hub.services.environments import get_environment
    from hub.services.users import require

    if clear and value is not None:
        raise click.UsageError(f"--clear takes no {option}")
    with _services(ctx) as sc:
        if clear or value is not None:
            env = setter(sc, name, None if clear else value)
        else:
            env = get_environment(sc.session, name)
            require(sc.actor, "view", env)
        row = {"environment": env.name, field: getattr(env, field), "policy": describe(env)}
    _done(as_json, channel_text.policy(row), row)


@environments.command("preflight-policy")
@channel_text.preflight_options
@json_option
@click.pass_context
def environments_preflight_policy(ctx: click.Context, name: str, within_h: int | None,
                                  clear: bool, as_json: bool) -> None:
    """Show or set NAME's preflight policy (docs/rollouts.md "Preflight policy of an
    environment"): `deployments queue`, the web and API, rollouts and channels all obey it.
    Admins only; audited."""
    from hub.services.environments import describe_preflight_policy, set_preflight_policy

    _policy_command(ctx, name, within_h, clear, as_json, option="--within",
                    field="preflight_within_h", setter=set_preflight_policy,
                    describe=describe_preflight_policy)


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
    from hub.errors import ValidationError
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
    """List agents with their presence: ``online`` while a live connection is open and its
    last heartbeat is at most one interval (and a grace) old, else ``offline`` / ``never`` /
    ``revoked`` (hub.services.presence)."""
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


@agents.command("show")
@click.argument("agent_id")
@json_option
@click.pass_context
def agents_show(ctx: click.Context, agent_id: str, as_json: bool) -> None:
    """Show one agent: enrollment, presence, its last known inventory (agent version, OS,
    free disk, CPUs, memory, connection names, step kinds, time zone, window; what preflight
    checks releases against) and the bundles it reported holding (window, freeze, an
    earlier held bundle), from its newest result or live heartbeat."""
    from hub.services.agents import get_agent
    from hub.services.presence import agent_presence
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        a = get_agent(sc.session, agent_id)
        presence = agent_presence(a, sc.now())
        row = _agent_row(a) | {"presence": presence.state, "agent_version": a.agent_version,
                               "inventory_at": a.inventory_at, "inventory": a.inventory,
                               "holds": a.holds}
    if as_json:
        _emit(row, True)
        return
    inv = row.pop("inventory")
    holds = row.pop("holds")
    _emit(row, False)
    if inv is None:
        click.echo("inventory     not known yet (it comes with the agent's next result or "
                   "live connection)")
        return
    for key in ("os", "cpus", "memory_bytes", "free_disk_bytes", "time_zone", "window"):
        click.echo(f"{key.ljust(16)}  {inv.get(key)}")
    conns = ", ".join(f"{n} ({t})" for n, t in sorted(inv.get("connections", {}).items()))
    click.echo(f"{'connections'.ljust(16)}  {conns or 'none'}")
    click.echo(f"{'step_kinds'.ljust(16)}  {', '.join(inv.get('step_kinds', [])) or 'none'}")
    if holds is None:
        click.echo(f"{'held'.ljust(16)}  not reported")
    elif not holds:
        click.echo(f"{'held'.ljust(16)}  nothing")
    for h in holds or []:
        click.echo(f"{'held'.ljust(16)}  bundle {h['bundle_id']} (sequence {h['sequence']}, "
                   f"{h['kind']}): {h['text']}")


@agents.command("revoke")
@click.argument("agent_id")
@click.option("--reason", default="")
@json_option
@click.pass_context
def agents_revoke(ctx: click.Context, agent_id: str, reason: str, as_json: bool) -> None:
    """Revoke an agent."""
    from hub.services.agents import revoke_agent

    with _services(ctx) as sc:
        revoke_agent(sc, agent_id, reason=reason)
    _done(as_json, f"agent {agent_id} revoked",
          {"agent_id": agent_id, "status": "revoked", "reason": reason})


def _rule_text(rule: Any) -> str:
    where = f"environment {rule.environment}"
    if rule.channel:
        where += f", channel {rule.channel}"
    return f"{where}: {rule.describe()}"


@environments.command("approval-rule")
@click.argument("name")
@click.option("--required", type=int, default=None,
              help="Distinct approvers needed (never the release's author).")
@click.option("--group", "groups", multiple=True, metavar="GROUP",
              help="Only approvers in this group count (repeatable; default: any approver).")
@click.option("--min-groups", type=int, default=None,
              help="The approvers come from at least this many different groups.")
@click.option("--channel", default=None,
              help="The rule for releases reaching NAME through this channel only.")
@click.option("--clear", is_flag=True, help="Remove the --channel rule.")
@json_option
@click.pass_context
def environments_approval_rule(
    ctx: click.Context, name: str, required: int | None, groups: tuple[str, ...],
    min_groups: int | None, channel: str | None, clear: bool, as_json: bool,
) -> None:
    """Show or set NAME's approval rule: how many approvals, from which groups, from how
    many different groups (docs/governance.md "Approvals"). Without --required, --group,
    --min-groups or --clear it lists the rules."""
    from hub.services.approval_rules import (
        clear_channel_rule,
        rule_for,
        rules_of,
        set_channel_rule,
        set_environment_rule,
    )
    from hub.services.environments import get_environment

    changing = required is not None or groups or min_groups is not None
    if clear and (changing or channel is None):
        raise click.UsageError("--clear takes --channel and nothing else")
    with _services(ctx) as sc:
        if clear:
            assert channel is not None
            clear_channel_rule(sc, name, channel)
            rules = rules_of(sc, name)
        elif changing:
            current = rule_for(get_environment(sc.session, name), channel)
            values = {
                "required": required if required is not None else current.required,
                "groups": groups or current.groups,
                "min_groups": min_groups if min_groups is not None else current.min_groups,
            }
            if channel is None:
                rules = [set_environment_rule(sc, name, **values)]  # type: ignore[arg-type]
            else:
                rules = [set_channel_rule(sc, name, channel, **values)]  # type: ignore[arg-type]
        else:
            rules = rules_of(sc, name)
    if as_json:
        _emit([r.to_json() for r in rules], True)
        return
    for rule in rules:
        click.echo(_rule_text(rule))
