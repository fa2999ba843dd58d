"""``tiangong hub rollouts …``, ``hub fleet`` and ``hub agents label``: fleet rollouts in
batches with gates (rules in ``hub.services.rollouts``; docs/rollouts.md)."""

from __future__ import annotations

from typing import Any

import click

from hub.cli.base import _done, _emit, _services, hub, json_option
from hub.cli.sites import agents


def _show(sc: Any, rollout: Any) -> dict[str, Any]:
    from hub.services.rollouts import rollout_json

    return rollout_json(sc.session, rollout, sc.now())


def _text(view: dict[str, Any]) -> str:
    lines = [f"rollout {view['id']}: {view['release']} — {view['state']}"
             + (f" ({view['reason']})" if view["reason"] else ""),
             f"  strategy: {view['strategy_text']}",
             f"  started by {view['created_by']} at {view['created_at']}"]
    for b in view["batches"]:
        mark = "▶" if b["number"] == view["current_batch"] else " "
        status = ("done " + b["done_at"] if b["done_at"] else
                  "started " + b["started_at"] if b["started_at"] else "not started")
        if b["confirmed_by"]:
            status += f", gate confirmed by {b['confirmed_by']}"
        lines.append(f"{mark} batch {b['number']}: {status}")
        for a in b["agents"]:
            owes = f", owes a result since {a['owes_result_since']}" \
                if a["owes_result_since"] else ""
            lines.append(f"      {a['agent']} ({a['environment']}, {a['reached']}): "
                         f"{a['state']}{owes}")
        lines += [f"    waiting for: {w}" for w in b["waiting_for"]]
    for rb in view.get("rollbacks", []):
        how = (f"approved by inheritance from {rb['inherited_from']}" if rb["inherited_from"]
               else rb["state"])
        deps = ", ".join(f"{d['agent'] or '?'} {d['state']} (deployment {d['id']})"
                         for d in rb["deployments"]) or "not queued"
        lines.append(f"  rollback of deployment {rb['rolls_back']}: {rb['release']}, {how}: "
                     f"{deps}")
    return "\n".join(lines)


@hub.group()
def rollouts() -> None:
    """Fleet rollouts: a release over many agents in batches with gates."""


@rollouts.command("start")
@click.argument("product")
@click.argument("version")
@click.option("--environment", default=None, help="Every enrolled agent of it.")
@click.option("--selector", default=None, help="Agents carrying these labels: k=v,k2=v2.")
@click.option("--canary", default="0", help="First batch: a number of agents (the first by "
              "agent id), or agent ids separated by commas.")
@click.option("--batch", "batch", default=None, help="Later batches: N agents or P%% of "
              "the targets (default: the rest at once).")
@click.option("--soak", "soak_s", type=click.IntRange(0), default=0,
              help="Seconds to wait after each batch is done.")
@click.option("--manual", is_flag=True, help="Each gate needs `rollouts confirm` by "
              "another operator.")
@click.option("--max-failures", default="0", help="Failures allowed before --on-failure: "
              "N, or P%% of the targets.")
@click.option("--on-failure", type=click.Choice(["pause", "abort"]), default="pause")
@click.option("--auto-rollback", is_flag=True, help="Roll back the failed deployments "
              "when the threshold is crossed.")
@click.option("--preflight-within", "preflight_within_h", type=click.IntRange(1, 720),
              default=None, metavar="HOURS", help="Queue each batch only once a preflight "
              "plan of the release passed on every agent of it within HOURS "
              "(`tiangong hub releases plan`).")
@json_option
@click.pass_context
def rollouts_start(ctx: click.Context, product: str, version: str, environment: str | None,
                   selector: str | None, canary: str, batch: str | None, soak_s: int,
                   manual: bool, max_failures: str, on_failure: str, auto_rollback: bool,
                   preflight_within_h: int | None, as_json: bool) -> None:
    """Start a rollout of an approved release; its first batch is queued at once."""
    from hub.services.releases import get_release
    from hub.services.rollouts import Strategy, parse_selector, start_rollout

    with _services(ctx) as sc:
        strategy = Strategy.from_text(
            canary=canary, batch=batch, soak_s=soak_s, manual=manual,
            max_failures=max_failures, on_failure=on_failure, auto_rollback=auto_rollback,
            preflight_within_h=preflight_within_h)
        rollout = start_rollout(sc, get_release(sc.session, product, version),
                                environment=environment,
                                labels=parse_selector(selector) if selector else None,
                                strategy=strategy)
        view = _show(sc, rollout)
    _done(as_json, _text(view), view)


@rollouts.command("list")
@click.option("--state", default=None, help="Only rollouts in this state.")
@json_option
@click.pass_context
def rollouts_list(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """Rollouts, newest first."""
    from hub.services.rollouts import list_rollouts

    with _services(ctx) as sc:
        rows = [{"id": r.id, "release": r.release.label, "state": r.state,
                 "batch": r.current_batch, "created_by": r.created_by,
                 "created_at": r.created_at, "reason": r.reason}
                for r in list_rollouts(sc.session, state)]
    _emit(rows, as_json, ["id", "release", "state", "batch", "created_by", "reason"])


@rollouts.command("show")
@click.argument("rollout_id", type=int)
@json_option
@click.pass_context
def rollouts_show(ctx: click.Context, rollout_id: int, as_json: bool) -> None:
    """Batches, gates, each agent's state and what the current batch waits for."""
    from hub.services.rollouts import get_rollout

    with _services(ctx) as sc:
        view = _show(sc, get_rollout(sc.session, rollout_id))
    _done(as_json, _text(view), view)


def _action(name: str, doc: str, *, reason: bool) -> None:
    def command(ctx: click.Context, /, rollout_id: int, as_json: bool, **kw: Any) -> None:
        from hub.services import rollouts as service

        with _services(ctx) as sc:
            rollout = service.get_rollout(sc.session, rollout_id)
            fn = {"pause": service.pause_rollout, "resume": service.resume_rollout,
                  "abort": service.abort_rollout, "cancel": service.cancel_rollout,
                  "confirm": service.confirm_gate, "advance": service.advance}[name]
            args = [kw["reason"]] if reason else []
            did = fn(sc, rollout, *args)
            view = _show(sc, rollout)
        view["did"] = did if isinstance(did, list) else []
        _done(as_json, "\n".join([*view["did"], _text(view)]), view)

    command.__doc__ = doc
    decorated: Any = click.pass_context(command)
    decorated = json_option(decorated)
    if reason:
        decorated = click.option("--reason", default="", help="Why (audited).")(decorated)
    decorated = click.argument("rollout_id", type=int)(decorated)
    rollouts.command(name)(decorated)


_action("pause", "No further batch starts; deployments already queued go on.", reason=True)
_action("resume", "Run a paused rollout again; failures so far are accepted.", reason=False)
_action("abort", "Stop: no further batch, queued deployments cancelled.", reason=True)
_action("cancel", "Abort, and withdraw bundles exported but not yet at the site (declared "
        "lost: the next bundle tells the agent).", reason=True)
_action("confirm", "Confirm the manual gate after the current batch (not by the person "
        "who started the rollout).", reason=False)
_action("advance", "Do what is due now (results imported, soak over); the hub also does "
        "this on its own.", reason=False)


@hub.command("fleet")
@click.option("--environment", "environments", multiple=True,
              help="Only this environment (repeatable).")
@json_option
@click.pass_context
def fleet_command(ctx: click.Context, environments: tuple[str, ...], as_json: bool) -> None:
    """Environments × agents × the version of each product each runs, presence, pending."""
    from hub.services.fleet import fleet

    with _services(ctx) as sc:
        view = fleet(sc.session, sc.now(), set(environments) or None)
    if as_json:
        _emit(view, True)
        return
    rows = [{"environment": e["environment"], "agent": a["agent"],
             "presence": "online" if a["online"] else f"last seen {a['last_seen'] or 'never'}",
             "runs": ", ".join(f"{p} {v}" for p, v in a["runs"].items()) or "-",
             "pending": ", ".join(f"{p['release']} ({p['state']})" for p in a["pending"])
             or "-"}
            for e in view for a in e["agents"]]
    _emit(rows, False, ["environment", "agent", "presence", "runs", "pending"])


@agents.command("label")
@click.argument("agent_id")
@click.argument("changes", nargs=-1, required=True)
@json_option
@click.pass_context
def agents_label(ctx: click.Context, agent_id: str, changes: tuple[str, ...],
                 as_json: bool) -> None:
    """Set (k=v) or remove (k-) labels of an agent; admins only."""
    from hub.services.rollouts import set_agent_labels

    with _services(ctx) as sc:
        labels = dict(set_agent_labels(sc, agent_id, list(changes)).labels)
    _done(as_json, f"agent {agent_id}: " + (", ".join(f"{k}={v}" for k, v in
                                                      sorted(labels.items())) or "no labels"),
          {"agent": agent_id, "labels": labels})
