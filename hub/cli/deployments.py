"""``tiangong hub deployments``: queue approved releases, follow their state (rules in
``hub.services.deployments``)."""

from __future__ import annotations

from typing import Any

import click

from hub.cli.base import _done, _emit, _services, hub, json_option


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


def _attempt_rows(d: Any) -> list[dict[str, Any]]:
    """The deployment's runs at the site, as its results reported them (oldest first)."""
    from hub.services.deployments import attempt_outcome

    return [
        {
            "attempt": a.attempt,
            "status": attempt_outcome(a),
            "result_seq": a.result_seq,
            "started_at": a.started_at,
            "finished_at": a.finished_at,
            "imported_at": a.imported_at,
        }
        for a in d.attempts
    ]


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
    """Queue an approved release for an environment (one deployment per agent).

    Says at once what preflight finds against each target's last known inventory (a missing
    connection, step kind or disk space; the export will refuse it without --force)."""
    from hub.services.deployments import queue_deployment
    from hub.services.preflight import check_deployment
    from hub.services.releases import get_release

    with _services(ctx) as sc:
        deps = queue_deployment(sc, get_release(sc.session, product, version), environment)
        rows = [_deployment_row(d) | {"preflight": [f.to_json() for f in
                                                    check_deployment(sc.session, d)]}
                for d in deps]
    if as_json:
        _emit(rows, True)
        return
    _emit(rows, False, ["id", "release", "environment", "agent", "state"])
    for row in rows:
        for finding in row["preflight"]:
            click.echo(f"deployment {row['id']}: preflight {finding['severity']}: "
                       f"{finding['message']}", err=True)


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
    from hub.services.readiness import waiting_for
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        deps = list_deployments(sc.session, environment, state)
        rows = [_deployment_row(d) for d in deps]
        if as_json:  # why each one waits (hub deployments why ID)
            for row, dep in zip(rows, deps, strict=True):
                row["waiting_for"] = [r.to_json() for r in
                                      waiting_for(sc.session, dep, sc.now())]
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
    """Show one deployment and its attempts (each run at the site, retries included)."""
    from hub.services.deployments import get_deployment
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        dep = get_deployment(sc.session, deployment_id)
        row = _deployment_row(dep)
        attempts = _attempt_rows(dep)
    if as_json:
        _emit({**row, "attempts": attempts}, True)
        return
    _emit(row, False)
    if attempts:
        click.echo("")
        _emit(attempts, False, ["attempt", "status", "result_seq", "started_at",
                                "finished_at", "imported_at"])


@deployments.command("mark")
@click.argument("deployment_id", type=int)
@click.argument("state")
@json_option
@click.pass_context
def deployments_mark(ctx: click.Context, deployment_id: int, state: str, as_json: bool) -> None:
    """Move a deployment to STATE by hand (e.g. interrupted), if the transition is allowed."""
    from hub.services.deployments import get_deployment, transition

    with _services(ctx) as sc:
        dep = get_deployment(sc.session, deployment_id)
        transition(sc, dep, state)
        row = _deployment_row(dep)
    _done(as_json, f"deployment {deployment_id} is now {state}", row)


@deployments.command("declare-lost")
@click.argument("deployment_id", type=int)
@click.option("--reason", required=True, help="Why the bundle will never reach the site "
              "(audited, and shown at the site).")
@click.option("--requeue", is_flag=True, help="Queue the same release again for the same "
              "agent: its bundle carries the decision to the site.")
@json_option
@click.pass_context
def deployments_declare_lost(ctx: click.Context, deployment_id: int, reason: str,
                             requeue: bool, as_json: bool) -> None:
    """Declare the bundle of an exported deployment lost (a lost stick, a wiped share).

    The next bundle exported to the same agent carries the signed decision: the agent stops
    waiting for the lost bundle and refuses it if it ever turns up. See docs/agent.md
    ("Order") and docs/hub.md ("Sequence chain and lost bundles").
    """
    from hub.services.chain import declare_lost

    with _services(ctx) as sc:
        dep, again = declare_lost(sc, deployment_id, reason, requeue=requeue)
        row = _deployment_row(dep)
        row["requeued_as"] = again.id if again is not None else None
    text = (f"deployment {deployment_id} ({row['release']}, sequence {row['sequence']}) "
            "declared lost; the next bundle exported to its target carries the decision")
    if row["requeued_as"] is not None:
        text += (f"\nqueued again as deployment {row['requeued_as']}: export it to carry the "
                 "decision")
    _done(as_json, text, row)


@deployments.command("rollback")
@click.argument("deployment_id", type=int)
@click.option("--reason", required=True, help="Why (audited, and written into the rollback "
              "release's description).")
@json_option
@click.pass_context
def deployments_rollback(ctx: click.Context, deployment_id: int, reason: str,
                         as_json: bool) -> None:
    """Create and submit a release that undoes deployment ID at its site from the undo data
    its agent recorded (docs/rollouts.md, "Rollback"); approve and queue it like any release.
    """
    from hub.services.rollback import create_rollback

    with _services(ctx) as sc:
        rel, plan = create_rollback(sc, deployment_id, reason)
        row = {"deployment": deployment_id, "product": rel.product.name,
               "version": rel.version, "state": rel.state, "content_hash": rel.content_hash,
               "undo_steps": [s["name"] for s in plan.steps], "not_undone": plan.not_undone}
    text = (f"rollback release {row['product']} {row['version']} created and submitted "
            f"({len(plan.steps)} undo step(s)); approve and queue it like any release")
    for item in plan.not_undone:
        ran = "" if item["ran"] else " (if it ran)"
        text += f"\ncannot be undone{ran}: step {item['step']} ({item['name']}): {item['why']}"
    _done(as_json, text, row)
