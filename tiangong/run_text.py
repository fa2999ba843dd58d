"""What ``tiangong run … --follow`` (on the hub's machine) and ``tiangong remote run …
--follow`` (through the API) print while they follow a run and when it ends, in one place
so that both say the same words. Only click and the standard library (``tiangong remote``
has no hub extra). A line and a result are the JSON of ``hub.services.run_follow``
(``LiveLine.to_json``, ``result_json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tiangong import options
from tiangong.output import cell, text_lines

__all__ = [
    "KIND_HELP",
    "OUT_AND_FOLLOW",
    "agent_option",
    "created",
    "echo_line",
    "echo_outcome",
    "echo_template",
    "expires_option",
    "follow_options",
    "kind_options",
    "not_online",
    "out_option",
    "param_option",
    "param_values",
    "queued",
    "split_name",
    "step_options",
    "template_added",
    "template_rows",
    "template_written",
    "written",
]


# --- the options of `tiangong run KIND` and `tiangong remote run KIND` -------------------------

#: each kind's one-line help
KIND_HELP = {
    "sql": "Run a SQL file on one agent's connection (a one-off release of product adhoc).",
    "shell": "Run a script on one agent's machine (a one-off release of product adhoc).",
    "k8s": "Apply one manifest file (server-side apply) on one agent's cluster.",
    "http": "Send one HTTP request from one agent's machine and check its status.",
}

Decorator = options.Decorator
_stack = options.stack


_file = click.option("--file", "script", required=True,
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The file to run (stored with the release, at most 16 MiB).")
_timeout = click.option("--timeout", default="10m", show_default=True, metavar="DURATION",
                        help="How long the step may run (1s to 24h; checked like a "
                             "release's).")
_KIND_OPTIONS: dict[str, tuple[Decorator, ...]] = {
    "sql": (_file,
            click.option("--connection", required=True,
                         help="The agent's connection (agent.toml)."),
            click.option("--engine", type=click.Choice(["postgres", "mysql"]),
                         default="postgres", show_default=True,
                         help="The connection's database engine.")),
    "shell": (_file,
              click.option("--interpreter", type=click.Choice(["sh", "bash", "python"]),
                           default="sh", show_default=True,
                           help="What runs the file at the agent.")),
    "k8s": (_file,
            click.option("--connection", required=True,
                         help="The agent's Kubernetes connection (agent.toml)."),
            click.option("--namespace", default=None,
                         help="For objects that name no namespace."),
            click.option("--wait", is_flag=True,
                         help="Wait until the applied workloads rolled out.")),
    "http": (click.option("--url", required=True,
                          help="http:// or https:// URL (no user:password@)."),
             click.option("--method", default="GET", show_default=True,
                          type=click.Choice(["GET", "HEAD", "POST", "PUT", "PATCH",
                                             "DELETE"])),
             click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
                          help="A request header (repeatable)."),
             click.option("--body", "body", default=None,
                          type=click.Path(exists=True, dir_okay=False, path_type=Path),
                          help="A file sent as the request body (not with GET or HEAD)."),
             click.option("--expect", multiple=True, metavar="STATUS",
                          help="A status (200) or class (2xx) that means success "
                               "(repeatable; default 2xx)."),
             click.option("--connection", default=None,
                          help="The agent's http connection (CA file, basic auth)."),
             click.option("--retries", type=int, default=0, show_default=True)),
}


def kind_options(kind: str) -> Decorator:
    """The options of ``run KIND`` (its file, its step's fields, ``--timeout``)."""
    return _stack(*_KIND_OPTIONS[kind], _timeout)


agent_option = click.option("--agent", "agent_id", required=True,
                            help="The enrolled agent that runs it.")


out_option = click.option(
    "--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
    help="Write the bundle here for media (the mounted USB stick or share). Without it the "
         "run is queued and the hub's live server delivers it when the agent is online.")
expires_option = click.option("--expires", default="14d", show_default=True,
                              metavar="DURATION",
                              help="How long the bundle stays valid at the site (--out).")
OUT_AND_FOLLOW = ("--follow and --out exclude each other: a run on media comes back with "
                  "`tiangong hub import`")


def written(product: str, version: str, agent_id: str, deployment: Any, sequence: Any,
            files: list[str]) -> str:
    """One bundle a run wrote for media."""
    return (f"{product} {version}: deployment {deployment}, sequence {sequence} for agent "
            f"{agent_id}: {', '.join(files)}")


def follow_options(follow_help: str) -> Decorator:
    """``--follow`` and ``--follow-timeout``."""
    return _stack(
        click.option("--follow", is_flag=True, help=follow_help),
        click.option("--follow-timeout", default="30m", show_default=True,
                     metavar="DURATION",
                     help="How long --follow waits for the result (the run goes on after it "
                          "stops waiting)."))


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise click.UsageError(f"--header {value!r}: write it as 'Name: value'")
        out[name.strip()] = text.strip()
    return out


def step_options(options: dict[str, Any]) -> tuple[Path | None, dict[str, Any]]:
    """The file (``--file`` or ``--body``) and the step's options, from what the options of
    :func:`kind_options` gave (``--header`` as a mapping, ``--expect`` as statuses)."""
    opts = dict(options)
    script: Path | None = opts.pop("script", None) or opts.pop("body", None)
    opts.pop("body", None)
    if "headers" in opts:
        opts["headers"] = _headers(opts["headers"])
    if "expect" in opts:
        opts["expect"] = [int(v) if v.isdecimal() else v for v in opts["expect"]]
    return script, opts


def created(product: str, version: str, kind: str, what: str, agent_id: str,
            environment: str, origin: str = "") -> str:
    """``release adhoc V created and submitted (sql demo.sql for agent A, environment E)``."""
    return (f"release {product} {version} created and submitted ({origin or f'{kind} {what}'} "
            f"for agent {agent_id}, environment {environment})")


def queued(product: str, version: str, deployment: int, agent_id: str) -> str:
    return (f"{product} {version}: deployment {deployment} queued for agent {agent_id}; the "
            f"hub's live server delivers it when the agent is online (`tiangong hub export "
            f"--agent {agent_id}` for media)")


def echo_line(line: dict[str, Any]) -> None:
    """One live line: ``[step 1 info] [2/2] line 2: INSERT …``."""
    # The text comes from the site (a script's output, a row of its database): shown, never
    # obeyed by the terminal (tiangong.output.text_lines).
    click.echo(f"[step {line['step'] + 1} {cell(line['stream'])}] "
               f"{text_lines(line['text'].rstrip())}")


def not_online(agent_id: str) -> None:
    click.echo(f"agent {agent_id} is not online: waiting for it to connect (the run stays "
               "queued if you stop following)", err=True)


def echo_outcome(deployment: int, state: str, done: bool, result: dict[str, Any] | None,
                 waited_s: int, show: str) -> None:
    """The end of a followed run: the verified result and one line per step, or that it
    is still going (``show``: the command that shows it later)."""
    if not done:
        click.echo(f"error: deployment {deployment} is still {state} after {waited_s}s; it "
                   f"goes on at the agent (`{show}`)", err=True)
        return
    click.echo(f"deployment {deployment}: {state}"
               + (f" — {cell(result['summary'])}" if result and result["summary"] else ""))
    for s in (result or {}).get("steps", []):
        click.echo(f"  step {s['step']} {cell(s['name'])}: {cell(s['status'])}"
                   + (f" (exit {s['exit_code']})" if s["exit_code"] is not None else "")
                   + (f" — {cell(s['summary'])}" if s["summary"] else ""))
    if result is not None and result["problem"]:
        click.echo(f"error: {cell(result['problem'])}", err=True)


# --- templates (``tiangong hub templates``, ``tiangong remote templates``) ---------------------


def split_name(name: str) -> tuple[str, int | None]:
    """``purge`` or ``purge@3``."""
    base, sep, version = name.partition("@")
    if not sep:
        return base, None
    if not version.isdecimal() or len(version) > 9:
        raise click.UsageError(f"{name[:80]!r}: write NAME or NAME@VERSION (a number)")
    return base, int(version)


def param_values(values: tuple[str, ...]) -> dict[str, str]:
    """``--param NAME=VALUE`` … as a mapping (each name once)."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--param {value!r}: write it as NAME=VALUE")
        if name in out:
            raise click.UsageError(f"--param {name} is given twice")
        out[name] = text
    return out


param_option = click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                            help="A parameter's value (repeatable).")


def template_added(row: dict[str, Any]) -> str:
    return (f"template {row['name']} version {row['version']} added ({row['kind']}, "
            f"{len(row['params'])} parameter(s))")


def template_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table of ``templates list``."""
    return [{"name": r["name"], "version": r["version"], "kind": r["kind"],
             "params": ", ".join(p["name"] for p in r["params"]),
             "description": r["description"]} for r in rows]


def echo_template(row: dict[str, Any]) -> None:
    """``templates show`` for people: the head, each parameter described, the file."""
    click.echo(f"template {row['name']} version {row['version']} ({row['kind']}) by "
               f"{row['created_by']}: {cell(row['description'])}")
    for text in row["described"]:
        click.echo(f"  parameter {cell(text)}")
    click.echo(f"  file {cell(row['file'])} (sha256 {row['sha256']}):")
    click.echo(text_lines(row["text"]))  # what will run: no line hidden by escape codes


def template_written(label: str, out: Path,
                     command: str = "tiangong hub releases create") -> str:
    return f"{label} written to {out} (`{command} {out}`)"
