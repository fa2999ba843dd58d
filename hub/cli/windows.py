"""``tiangong hub windows|freezes …``, and ``hub deployments why|override|confirm-override``:
maintenance windows, change freezes, hub overrides and "why is this not deploying?" (rules
in ``hub.services.windows`` and ``hub.services.readiness``).

A SPEC is the short form of ``bundle create --window/--freeze`` or the JSON object of
docs/bundle-format.md §6.9::

    sat,sun 01:00-05:00 Europe/Berlin            weekly window (days, mon-fri, daily)
    2027-01-02T01:00Z/2027-01-02T05:00Z          one-off window (ISO 8601 or Unix seconds)
    12-20..01-05 UTC: year end                   yearly freeze, both days included
    2027-03-29T00:00Z/2027-04-02T00:00Z: close   one-off freeze (a reason after ': ')
"""

from __future__ import annotations

from typing import Any

import click

from hub.cli.base import _done, _emit, _services, hub, json_option
from hub.cli.deployments import deployments
from tiangong import options, rule_text


def _rule_row(rule: Any) -> dict[str, Any]:
    from hub.services.windows import rule_json

    return rule_json(rule)


def _rules_group(kind: str, plural: str) -> click.Group:
    """The ``add``/``list``/``remove`` commands of windows or freezes."""

    @hub.group(plural)
    def group() -> None:
        pass

    group.help = (f"Maintenance {plural}." if kind == "window" else
                  "Change freezes: no deployment starts inside one (unless overridden).")

    @group.command("add")
    @options.rule_add
    @json_option
    @click.pass_context
    def add(ctx: click.Context, spec: str, environment: str | None, product: str | None,
            as_json: bool) -> None:
        from hub.services.windows import add_rule

        with _services(ctx) as sc:
            row = _rule_row(add_rule(sc, kind, spec, environment=environment,
                                     product=product))
        _done(as_json, rule_text.added(kind, row), row)

    add.help = (f"Add a {kind} (SPEC: see `tiangong hub {plural} --help`); admins only. "
                "Queued deployments it applies to are held or released at once.")

    @group.command("list")
    @options.rule_list(kind)
    @json_option
    @click.pass_context
    def list_(ctx: click.Context, environment: str | None, product: str | None,
              as_json: bool, include_ended: bool = False) -> None:
        from hub.services.windows import list_rules

        with _services(ctx) as sc:
            rows = [_rule_row(r) for r in list_rules(sc, kind, environment=environment,
                                                     product=product,
                                                     include_ended=include_ended)]
        _emit(rows, as_json, None if as_json else rule_text.columns(kind))

    list_.help = f"List {plural} (those of every environment/product too)."

    @group.command("remove")
    @click.argument("rule_id", type=int)
    @json_option
    @click.pass_context
    def remove(ctx: click.Context, rule_id: int, as_json: bool) -> None:
        from hub.services.windows import remove_rule

        with _services(ctx) as sc:
            row = remove_rule(sc, kind, rule_id)
        _done(as_json, rule_text.removed(kind, rule_id, row), row)

    remove.help = f"Delete a {kind} (audited)."
    return group


windows = _rules_group("window", "windows")
freezes = _rules_group("freeze", "freezes")
windows.help = ("Maintenance windows: when deployments may run (none: any time). SPEC: "
                "'sat,sun 01:00-05:00 Europe/Berlin', 'START/END' (ISO 8601 with offset), "
                "or the JSON object of docs/bundle-format.md §6.9.")
freezes.help = ("Change freezes: no deployment is exported or starts inside one, unless a "
                "hub override lifts it. SPEC: '12-20..01-05 UTC: year end', "
                "'START/END: reason', 'fri 18:00-24:00 UTC: weekend', or a JSON object.")


@freezes.command("end")
@options.freeze_end
@json_option
@click.pass_context
def freezes_end(ctx: click.Context, rule_id: int, reason: str, as_json: bool) -> None:
    """End a freeze now (kept as ended, for the record); held deployments are released."""
    from hub.services.windows import end_freeze

    with _services(ctx) as sc:
        row = _rule_row(end_freeze(sc, rule_id, reason))
    _done(as_json, rule_text.ended(rule_id, row), row)


# --- deployments: why, override -------------------------------------------------------------


@deployments.command("why")
@click.argument("deployment_id", type=int)
@json_option
@click.pass_context
def deployments_why(ctx: click.Context, deployment_id: int, as_json: bool) -> None:
    """Why is this deployment not deploying? Every reason it waits (approvals, freeze,
    window, override, site), or that it waits for nothing."""
    from hub.services.deployments import get_visible_deployment
    from hub.services.readiness import waiting_for

    with _services(ctx) as sc:
        dep = get_visible_deployment(sc, deployment_id)
        reasons = waiting_for(sc.session, dep, sc.now())
        data = {"id": dep.id, "release": dep.release.label,
                "environment": dep.environment.name, "state": dep.state,
                "waiting_for": [r.to_json() for r in reasons]}
    if as_json:
        _emit(data, True)
    else:
        rule_text.echo_why(data)


@deployments.command("override")
@options.deployment_reason
@json_option
@click.pass_context
def deployments_override(ctx: click.Context, deployment_id: int, reason: str,
                         as_json: bool) -> None:
    """Ask to deploy a queued deployment despite freezes and windows. A second person
    confirms it with `hub deployments confirm-override ID` within 24 hours."""
    from hub.services.deployments import get_deployment
    from hub.services.windows import override_row, request_override

    with _services(ctx) as sc:
        data = override_row(request_override(sc, get_deployment(sc.session, deployment_id),
                                             reason))
    _done(as_json, rule_text.override_requested(data, "tiangong hub"), data)


@deployments.command("confirm-override")
@click.argument("deployment_id", type=int)
@json_option
@click.pass_context
def deployments_confirm_override(ctx: click.Context, deployment_id: int,
                                 as_json: bool) -> None:
    """Confirm another person's override request (never your own): the deployment is
    exported despite freezes and windows, and its bundle tells the agent so."""
    from hub.services.deployments import get_deployment
    from hub.services.windows import confirm_override, override_row

    with _services(ctx) as sc:
        data = override_row(confirm_override(sc, get_deployment(sc.session, deployment_id)))
    _done(as_json, rule_text.override_confirmed(data), data)
