"""``tiangong hub templates``: script and job templates (docs/operations.md "Job templates").

``add DEFINITION.toml`` stores the next version of a template; ``list`` and ``show`` read
them; ``run NAME --agent A --param k=v …`` checks the values, then goes the way of
``tiangong run`` (the environment's ad-hoc policy, ``--out`` or the live server,
``--follow``); ``release NAME --param … DIR`` writes a release directory for the normal
path. Every rule is in ``hub.services.templates``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from hub.cli.base import _done, _emit, _services, hub, json_option
from hub.cli.run import _delivery, _ship, _shipping
from tiangong import options, run_text

__all__ = ["templates"]


@hub.group()
def templates() -> None:
    """Script and job templates with typed parameters."""


def _row(t: Any) -> dict[str, Any]:
    from hub.services.templates import template_json

    return template_json(t)


_split, _params, _param = run_text.split_name, run_text.param_values, run_text.param_option


@templates.command("add")
@click.argument("definition", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def templates_add(ctx: click.Context, definition: Path, as_json: bool) -> None:
    """Store DEFINITION (a TOML file next to its script) as the next version of its
    template."""
    from hub.services.templates import add_template

    with _services(ctx) as sc:
        row = _row(add_template(sc, definition))
    _done(as_json, run_text.template_added(row), row)


@templates.command("list")
@json_option
@click.pass_context
def templates_list(ctx: click.Context, as_json: bool) -> None:
    """The newest version of every template."""
    from hub.services.templates import list_templates

    with _services(ctx) as sc:
        rows = [_row(t) for t in list_templates(sc)]
    _emit(rows if as_json else run_text.template_rows(rows), as_json)


@templates.command("show")
@click.argument("name")
@json_option
@click.pass_context
def templates_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """One template (NAME or NAME@VERSION): its step, parameters and file."""
    from hub.services.templates import get_template, specs_of, template_json

    with _services(ctx) as sc:
        t = get_template(sc, *_split(name))
        row = {**template_json(t, text=True),
               "described": [p.describe() for p in specs_of(t)]}
    if as_json:
        _emit({k: v for k, v in row.items() if k != "described"}, True)
        return
    run_text.echo_template(row)


@templates.command("run")
@click.argument("name")
@_param
@_shipping
@click.pass_context
def templates_run(ctx: click.Context, name: str, params: tuple[str, ...], agent_id: str,
                  out_dir: Path | None, expires: str, follow: bool, follow_timeout: str,
                  as_json: bool) -> None:
    """Run template NAME (or NAME@VERSION) on one agent, as `tiangong run` would. The
    values are checked first: a bad one creates, queues and exports nothing."""
    from hub.services.templates import get_template, instantiate, run_template

    how = _delivery(agent_id, out_dir, expires, follow, follow_timeout, as_json)
    given = _params(params)
    with tempfile.TemporaryDirectory(prefix="tiangong-template-") as work, \
            _services(ctx) as sc:
        instance = instantiate(get_template(sc, *_split(name)), given)
        made = run_template(sc, instance, agent_id, Path(work))
        product, version = made.release.product.name, made.release.version
        created = {"environment": made.environment, "template": instance.label,
                   "content_hash": made.release.content_hash}
    if not as_json:
        click.echo(run_text.created(product, version, "", "", agent_id, made.environment,
                                    origin=instance.label))
    _ship(ctx, product, version, how, created)


@templates.command("release")
@options.template_release(_param)
@json_option
@click.pass_context
def templates_release(ctx: click.Context, name: str, out: Path, product: str,
                      release_version: str, params: tuple[str, ...], as_json: bool) -> None:
    """Write template NAME with its values as a release directory OUT (release.toml and the
    rendered file), for `tiangong hub releases create OUT`."""
    from hub.services.templates import get_template, instantiate, release_of

    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} is not empty")
    with _services(ctx) as sc:
        instance = instantiate(get_template(sc, *_split(name)), _params(params))
        files = release_of(sc, instance, product, release_version)
        out.mkdir(parents=True, exist_ok=True)
        for file_name, data in files.items():
            (out / file_name).write_bytes(data)
    row = {"template": instance.label, "directory": str(out), "values": instance.values}
    _done(as_json, run_text.template_written(instance.label, out), row)
