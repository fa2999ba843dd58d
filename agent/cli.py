"""``tiangong agent``: set up, run and inspect a site agent.

A thin layer over ``agent.home`` (init, the home lock), ``agent.service`` (run, apply, retry,
run-now, status), ``agent.recovery`` (journal recover) and ``agent.executors.sqlunlock`` (sql
unlock).

Commands that change the home (run, apply, retry, journal recover) take its exclusive lock
first; a second one exits with a message naming the process holding it. All of them log
through the one ``tiangong`` logger configured by :func:`setup_logging` (timestamps, levels,
``-v``, ``--json-logs``); Python warnings and other libraries' messages go through it too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from agent import upgrade
from agent.config import AgentConfig, ConfigError, load_config
from agent.home import HomeError, HomeLock, init_home, lock_home
from agent.journal import JournalError
from agent.service import Agent, apply_item
from bundle.cli import progress_bar
from bundle.printable import printable
from tiangong.stopsignals import stop_signals

__all__ = ["agent"]

_HOME_HELP = ("The agent home directory (default: $TIANGONG_AGENT_HOME or ./agent-home); "
              "before or after the command: `agent --home H status` = `agent status --home H`.")


def _home_default(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path:
    """A command's --home, else the group's --home (or $TIANGONG_AGENT_HOME), else ./agent-home."""
    group_home = ctx.find_object(Path) if value is None else None
    return value or group_home or Path("agent-home")


def _home_option(func: Any) -> Any:
    return click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path),
                        default=None, callback=_home_default, help=_HOME_HELP)(func)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                           "level": record.levelname.lower(), "logger": record.name,
                           "msg": record.getMessage()}, ensure_ascii=False)


def setup_logging(as_json: bool, verbose: bool) -> None:
    """One handler on stderr for everything the agent process logs: the ``tiangong`` loggers
    (agent, inbox, runner, live) at INFO (DEBUG with ``-v``), and — through the root logger —
    Python warnings and other libraries' warnings, with the same timestamp, level and format
    (JSON lines with ``--json-logs``)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                  "%Y-%m-%dT%H:%M:%S%z")
    formatter.converter = time.gmtime
    handler.setFormatter(_JsonFormatter() if as_json else formatter)
    handler.set_name("tiangong-agent")
    root = logging.getLogger()
    # Replace only a handler this function installed before (tests call commands in-process).
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "tiangong-agent"]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("tiangong")
    ours.handlers[:] = []
    ours.propagate = True
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)


def _lock(home: Path, purpose: str) -> HomeLock:
    try:
        return lock_home(home, purpose)
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc


def _config(home: Path) -> AgentConfig:
    try:
        return load_config(home)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _print_outcome(name: str, out: Any, as_json: bool) -> None:
    """One bundle's outcome (``apply``, ``retry``): a line for people, or JSON for scripts."""
    if as_json:
        click.echo(json.dumps({"name": name, "status": out.status, "summary": out.summary,
                               "bundle_id": out.bundle_id,
                               "result": str(out.result) if out.result else None},
                              indent=2, sort_keys=True))
        return
    click.echo(f"{name}: {out.status}: {out.summary}")
    if out.result:
        click.echo(f"result: {out.result}")


def _open(home: Path) -> Agent:
    try:
        return Agent(load_config(home))
    except (ConfigError, HomeError, JournalError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home", type=click.Path(file_okay=False, path_type=Path),
              envvar="TIANGONG_AGENT_HOME", default=None, help=_HOME_HELP)
@click.pass_context
def agent(ctx: click.Context, home: Path | None) -> None:
    """Run a site agent: it watches its inbox for bundle files, verifies each one
    completely, runs its steps, and writes a signed result to its outbox.

    --home goes before the command or after it (after wins).

    \b
    Typical setup:
      tiangong agent init /var/lib/tiangong-agent --root /media/usb/root.json --environment plant-a
      (root.json: the hub's <data-dir>/root.json, carried here; take
      outbox/enrollment-*.json to the hub; add connections to agent.toml)
      tiangong agent run --home /var/lib/tiangong-agent
    """
    ctx.obj = home  # the commands' --home default (see _home_default)


@agent.command("init")
@click.argument("home", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--root", "root_file", required=True, type=click.Path(dir_okay=False),
              help="The hub's root document: <hub data dir>/root.json, written by `tiangong "
                   "hub init`, carried here out of band. The agent trusts only bundles "
                   "chained to it.")
@click.option("--id", "agent_id", help="Agent id (default: hostname plus a key prefix).")
@click.option("--environment", help="The environment (site) this agent belongs to.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="A label for the hub (repeatable).")
@click.option("--hub-url", help="The hub's live endpoint (wss://...), if the site is online.")
@click.option("--insecure-loopback", is_flag=True,
              help="Allow a plain ws:// hub_url to a loopback address (tests only; written to "
                   "agent.toml as allow_insecure_loopback).")
@click.option("--passphrase-env", metavar="VAR",
              help="Encrypt the agent keys with the passphrase in VAR (then VAR must be set "
                   "when the agent runs). Default: keys stored unencrypted, mode 0600.")
@click.option("--json", "as_json", is_flag=True, help="Print what was created as JSON.")
def init_cmd(home: Path | None, root_file: str, agent_id: str | None, environment: str | None,
             labels: tuple[str, ...], hub_url: str | None, insecure_loopback: bool,
             passphrase_env: str | None, as_json: bool) -> None:
    """Create an agent home in HOME (or the group's --home): keys, config, journal and
    directories.

    Writes an enrollment request (outbox/enrollment-<id>.json) to carry to the hub, which
    registers the agent's public keys. Import the hub's answer with `tiangong agent
    enroll-response`: it pins the hub's live-channel CA.
    """
    home = home or click.get_current_context().find_object(Path)
    if home is None:
        raise click.UsageError("give the agent home: `tiangong agent init HOME --root ...`")
    if not Path(root_file).is_file():
        raise click.UsageError(
            f"--root {root_file}: no such file. It is the hub's root document, "
            "<hub data dir>/root.json (written by `tiangong hub init`): copy it here")
    if hub_url:
        from agent.live import LiveTLSError, check_hub_url

        try:
            check_hub_url(hub_url, allow_insecure_loopback=insecure_loopback)
        except LiveTLSError as exc:
            raise click.UsageError(f"--hub-url: {exc}") from exc
    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--label {item!r}: expected KEY=VALUE")
        parsed[key] = value
    try:
        config, request = init_home(home, root_file=Path(root_file), agent_id=agent_id,
                                    environment=environment, labels=parsed, hub_url=hub_url,
                                    passphrase_env=passphrase_env,
                                    allow_insecure_loopback=insecure_loopback)
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"agent_id": config.agent_id, "home": str(config.home),
                               "hub_id": config.hub_id, "inbox": str(config.inbox),
                               "outbox": str(config.outbox), "enrollment": str(request)},
                              indent=2, sort_keys=True))
        return
    click.echo(f"agent {config.agent_id} created in {config.home}")
    click.echo(f"  trusts hub {config.hub_id} (root pinned from {root_file})")
    click.echo(f"  inbox:       {config.inbox}   (drop bundle files here)")
    click.echo(f"  outbox:      {config.outbox}  (results for the hub)")
    click.echo(f"  enrollment:  {request}  -> import it at the hub")
    click.echo(f"  connections: add them to {config.home / 'agent.toml'}")


@agent.command("enroll-response")
@click.argument("response_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_home_option
@click.option("--json", "as_json", is_flag=True, help="Print what was imported as JSON.")
def enroll_response_cmd(response_file: Path, home: Path, as_json: bool) -> None:
    """Import the hub's signed enrollment response (`tiangong hub agents enroll --out`):
    verify it against the pinned hub root and pin the hub's live-channel CA to
    trust/hub-ca.pem (the live client trusts no other CA)."""
    from agent.home import MAX_RESPONSE_BYTES, import_enrollment_response

    try:
        config = load_config(home)
        with response_file.open("rb") as fh:
            data = fh.read(MAX_RESPONSE_BYTES + 1)
        info = import_enrollment_response(config, data, source=str(response_file))
    except (ConfigError, HomeError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot read {response_file}: {exc.strerror}") from exc
    if as_json:
        click.echo(json.dumps({"agent_id": info.agent_id, "hub_id": info.hub_id,
                               "environment": info.environment,
                               "ca_pinned": str(info.ca_pinned) if info.ca_pinned else None,
                               "live_url": info.live_url or None}, indent=2, sort_keys=True))
        return
    click.echo(f"agent {info.agent_id} enrolled at hub {info.hub_id} "
               f"(environment {info.environment or '-'})")
    if info.ca_pinned is not None:
        click.echo(f"  live TLS CA pinned: {info.ca_pinned}")
    else:
        click.echo("  the response carries no live TLS CA (the hub has none): live wss:// "
                   "connections will be refused until one is pinned")
    if info.live_url and not config.hub_url:
        click.echo(f"  the hub's live address is {info.live_url}: set hub_url in "
                   f"{config.home / 'agent.toml'} to use it")


@agent.command("run")
@_home_option
@click.option("--once", is_flag=True, help="Process what is ready now, then exit (files dated "
              "in the future are first watched unchanged for settle_seconds).")
@click.option("--json-logs", is_flag=True, help="Structured (JSON lines) logs on stderr.")
@click.option("-v", "--verbose", is_flag=True)
def run_cmd(home: Path, once: bool, json_logs: bool, verbose: bool) -> None:
    """Run the agent in the foreground (for systemd or a container).

    Logs go to stderr. SIGTERM/SIGINT stop it cleanly: the running step is cancelled and
    reported; a step that was running when the agent was killed is reported as interrupted
    on the next start and never re-run automatically.
    """
    import threading

    setup_logging(json_logs, verbose)
    # Installed first: a stop request during start-up is honoured once the agent exists.
    requested = threading.Event()
    started: list[Agent] = []

    def stop(signum: int) -> None:  # in a helper thread (tiangong.stopsignals)
        logging.getLogger("tiangong.agent").info("signal %d: stopping", signum)
        requested.set()
        for ag in started:
            ag.stopping.set()
            ag.runner.cancel.set()
            ag.wake.set()

    with stop_signals(stop, restore=False):
        config = _config(home)
        home_lock = _lock(config.home, "agent run")
        live_thread = None
        client = None
        if config.hub_url and not once:
            # Online site: the live client is a faster courier for the same files (it writes
            # bundles into the inbox and uploads results from the outbox).
            import asyncio

            from agent.live import LiveClient, LiveTLSError

            try:
                client = LiveClient(config)
            except (LiveTLSError, HomeError) as exc:
                raise click.ClickException(f"live channel: {exc}") from exc
        try:
            ag = Agent(config, live_log=client.live_log if client else None)
        except (ConfigError, HomeError, JournalError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from exc
        started.append(ag)
        if client is not None:
            ag.live_connected = client.connected
            client.state_source = ag.site_state
        upgrade.on_restart(ag.stopping.set)
        upgrade.on_restart(ag.wake.set)
        if requested.is_set():
            ag.stopping.set()
            ag.runner.cancel.set()
        if client is not None:
            live_thread = threading.Thread(target=asyncio.run, args=(client.run(ag.stopping),),
                                           name="tiangong-live", daemon=True)
            live_thread.start()
        try:
            if once:
                ag.recover()
                for out in ag.run_once_watching():
                    click.echo(f"{out.name}: {out.status}: {out.summary}")
            else:
                upgrade.confirm_started(config.home)
                ag.serve()
        finally:
            if live_thread is not None:
                live_thread.join(timeout=30)
            ag.close()
            home_lock.release()
    if upgrade.restart_requested():  # an agent-upgrade step: the supervisor starts us again
        sys.exit(upgrade.RESTART_EXIT)


@agent.command("apply")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_home_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON for scripts.")
@click.option("--progress", "force_progress", is_flag=True,
              help="Report verification progress on stderr even when it is not a terminal "
                   "(on a terminal it is always shown).")
def apply_cmd(files: tuple[Path, ...], home: Path, as_json: bool, force_progress: bool) -> None:
    """Verify and run one bundle file (or the parts of one split bundle) now.

    The file is processed exactly as if it had been dropped into the inbox: it is moved to
    archive/ or quarantine/, and a signed result is written to the outbox. Exit code 0 if
    the bundle succeeded, 1 otherwise.
    """
    setup_logging(False, False)
    try:
        item = apply_item(files, time.time())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    home_lock = _lock(_config(home).home, "agent apply")
    ag = _open(home)
    try:
        ag.recover()
        with progress_bar(force=force_progress) as ag.progress:
            out = ag.process(item)
    except JournalError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        ag.close()
        home_lock.release()
    _print_outcome(out.name, out, as_json)
    sys.exit(0 if out.status in ("succeeded", "waiting", "on-hold") else 1)


@agent.command("retry")
@click.argument("bundle_id")
@click.option("--from-step", type=click.IntRange(min=1), required=True,
              help="Re-run from this step (1-based); earlier steps keep their results.")
@_home_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON for scripts.")
def retry_cmd(bundle_id: str, from_step: int, home: Path, as_json: bool) -> None:
    """Deliberately re-run an accepted bundle from a step (after a failure or interruption).

    The retry is recorded in the journal and in the new signed result.
    """
    setup_logging(False, False)
    home_lock = _lock(_config(home).home, "agent retry")
    ag = _open(home)
    try:
        out = ag.retry(bundle_id, from_step)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    except JournalError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        ag.close()
        home_lock.release()
    _print_outcome(bundle_id, out, as_json)
    sys.exit(0 if out.status == "succeeded" else 1)


MAX_REASON_CHARS = 4096  # characters of a run-now reason


def _bundle_id_of(ag: Agent, bundle: str) -> str:
    """BUNDLE as given to run-now: a bundle id, or a bundle file the agent accepted (found by
    its envelope digest in the journal; the file itself is not trusted)."""
    path = Path(bundle)
    if ag.journal.bundle(bundle) is not None or not path.is_file():
        return bundle
    from bundle.errors import BundleError
    from bundle.inspect import inspect as inspect_file

    try:
        digest = inspect_file(path).envelope_sha256
    except (BundleError, OSError) as exc:
        raise click.ClickException(f"{bundle}: cannot be read as a bundle file: {exc}") from exc
    rec = ag.journal.find_by_envelope(digest) if digest else None
    if rec is None:
        raise click.ClickException(f"{bundle}: this agent has not accepted that bundle file "
                                   "(see 'tiangong agent status')")
    return rec.bundle_id


def _os_user() -> str:
    """The operator's account name, from the process's real user id (not $USER)."""
    import os
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


@agent.command("run-now")
@click.argument("bundle")
@click.option("--reason", required=True,
              help="Why the bundle must run outside its maintenance windows or in a freeze "
                   "(recorded in the journal and in the bundle's signed result).")
@_home_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON for scripts.")
def run_now_cmd(bundle: str, reason: str, home: Path, as_json: bool) -> None:
    """Run one HELD bundle now, overriding its maintenance windows and freezes.

    BUNDLE is the bundle id (see 'tiangong agent status') or the bundle file. The override
    — the reason, your OS user and the time — is journaled and appears in the bundle's
    signed result. If 'agent run' is running, it runs the bundle on its next pass; otherwise
    this command runs it now and writes its result. Bundles still apply in order: a bundle
    held behind an earlier held bundle is refused (run that one first).
    """
    text = reason.strip()
    if not text or len(reason) > MAX_REASON_CHARS or any(
            ord(c) < 0x20 and c not in "\n\t" for c in reason):
        raise click.UsageError(f"--reason must be 1 to {MAX_REASON_CHARS} printable "
                               "characters (it goes into the signed result)")
    setup_logging(False, False)
    ag = _open(home)
    ran = None
    try:
        bundle_id = _bundle_id_of(ag, bundle)
        try:
            override = ag.run_now(bundle_id, reason, _os_user())
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'\"")) from exc
        try:
            home_lock = lock_home(ag.config.home, "agent run-now")
        except HomeError:
            home_lock = None  # 'agent run' holds the home: it runs the bundle on its next pass
        if home_lock is not None:
            try:
                ran = ag.run_accepted(bundle_id)
            finally:
                home_lock.release()
    except JournalError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        ag.close()
    if as_json:
        click.echo(json.dumps({
            "bundle_id": bundle_id, "override": override,
            "ran": ran is not None,
            "status": ran.status if ran else "released",
            "summary": ran.summary if ran else "the running agent runs it on its next pass",
            "result": str(ran.result) if ran and ran.result else None,
        }, indent=2, sort_keys=True))
    else:
        click.echo(f"override recorded for bundle {bundle_id} by {override['by']}: "
                   f"{override['reason']}")
        if ran is None:
            click.echo("the running agent runs it on its next pass (see 'tiangong agent "
                       "status')")
        else:
            _print_outcome(bundle_id, ran, False)
    if ran is not None:
        sys.exit(0 if ran.status == "succeeded" else 1)


@agent.command("status")
@_home_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(home: Path, as_json: bool) -> None:
    """Show what the agent applied, what is waiting, what was refused, and recent results."""
    ag = _open(home)
    try:
        ag.survey()
        st = ag.status()
    finally:
        ag.close()
    st["upgrade"] = upgrade.status(home)
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    click.echo(f"agent {st['agent_id']} (environment {st['environment'] or '-'}) trusts hub "
               f"{st['hub_id']}: root v{st['root_version']}, last sequence {st['sequence']}")
    if st.get("approvals_required"):
        click.echo(f"approvals required here: {st['approvals_required']} (root delegation)")
    click.echo(upgrade.describe(st["upgrade"]))
    click.echo("bundles:")
    for b in st["bundles"] or []:
        wait = ""
        if b["state"] == "waiting" and b["not_before"]:
            wait = f" until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(b['not_before']))}"
        if b["hold"] is not None:
            wait = f": {b['hold']['reason']}"
        elif b["state"] == "held":
            wait = " (nothing holds it any more: the agent's next pass runs it)"
        click.echo(f"  seq {b['sequence']:<5} {b['product'] or '-'} {b['version'] or ''}  "
                   f"{b['state']}{wait}  ({b['bundle_id']})")
        if b["hold"] is not None and b["hold"]["kind"] != "chain":
            click.echo(f"      run it anyway: tiangong agent run-now {b['bundle_id']} "
                       "--reason TEXT")
        for s in b["steps"]:
            click.echo(f"      {s['index']:>3}. {s['name']:<30} {s['state']:<12} "
                       f"{(s['summary'] or '')[:80]}")
    if not st["bundles"]:
        click.echo("  none yet")
    held = [b for b in st["bundles"] if b["hold"] is not None]
    if held:
        click.echo("held (accepted; waiting for a maintenance window, the end of a freeze or "
                   "an earlier bundle):")
        for b in held:
            click.echo(f"  held: {b['bundle_id']} ({b['product'] or '-'} {b['version'] or ''}, "
                       f"sequence {b['sequence']}) — {b['hold']['reason']}")
    if st["inbox_waiting"]:
        click.echo("inbox, not ready yet:")
        for w in st["inbox_waiting"]:
            click.echo(f"  {printable(w['name'])}: {w['reason']}")
    if st["inbox_held"]:
        click.echo("inbox, held (nothing refused; each waits for what its line names):")
        for h in st["inbox_held"]:
            click.echo(f"  {printable(h['name'])}: {h['reason']}")
    if st["quarantined"]:
        click.echo("quarantined:")
        for r in st["quarantined"]:
            click.echo(f"  {r['file_name']} [{r['check_name']}]: {r['reason'][:120]}")
    if st["results"]:
        click.echo("recent results (outbox):")
        for r in st["results"][:10]:
            pending = ("  (not written yet: the outbox refused it; retried)"
                       if r.get("state") == "pending" else "")
            click.echo(f"  #{r['result_seq']:<4} {r['status']:<12} {r['file_name']}{pending}")


@agent.group("journal")
def journal_group() -> None:
    """Repair the agent's journal (see docs/agent.md, "Damaged journal")."""


@journal_group.command("recover")
@_home_option
@click.option("--result-floor", type=click.IntRange(min=0), default=0, show_default=True,
              help="Number new results after at least this result sequence (when result files "
                   "were already taken off the outbox; the hub shows the last one it has).")
@click.option("--json", "as_json", is_flag=True, help="Print what was rebuilt as JSON.")
def journal_recover_cmd(home: Path, result_floor: int, as_json: bool) -> None:
    """Rebuild a damaged, emptied or deleted journal.sqlite from archive/ and outbox/.

    The damaged files are kept (journal.sqlite.damaged-<time>). Results in the outbox are
    recorded as written; archived bundles as accepted (the sequence floor becomes the highest
    archived sequence), with the state of their result, or interrupted with a new signed
    result when none is found. Nothing is ever run again.
    """
    from agent.home import load_keys
    from agent.recovery import RecoveryError, recover_journal

    setup_logging(False, False)
    config = _config(home)
    home_lock = _lock(config.home, "agent journal recover")
    try:
        report = recover_journal(config, load_keys(config), result_floor=result_floor)
    except (RecoveryError, HomeError, JournalError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        home_lock.release()
    if as_json:
        click.echo(json.dumps({
            "kept": [str(k) for k in report.kept], "results": report.results,
            "bundles": [{"bundle_id": b, "sequence": q, "state": st}
                        for b, q, st in report.bundles],
            "sequence": report.sequence, "result_floor": report.result_floor,
            "skipped": [printable(x) for x in report.skipped],
            "new_results": [str(x) for x in report.new_results],
        }, indent=2))
        return
    for kept in report.kept:
        click.echo(f"kept the damaged file as {kept}")
    click.echo(f"journal rebuilt: {report.results} result(s) found in the outbox, "
               f"{len(report.bundles)} bundle(s) in the archive; sequence floor "
               f"{report.sequence}, next result after #{report.result_floor}")
    for bundle_id, seq, state in report.bundles:
        click.echo(f"  seq {seq:<5} {bundle_id}: {state}")
    for skipped in report.skipped:
        click.echo(f"  not used (does not verify): {printable(skipped)}")
    for path in report.new_results:
        click.echo(f"  new result: {path}")


@agent.group("sql")
def sql_group() -> None:
    """Operator commands for SQL connections."""


@sql_group.command("unlock")
@click.argument("connection")
@_home_option
@click.option("--force", is_flag=True,
              help="Clear a live lock even though its holder may still be running.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def sql_unlock_cmd(connection: str, home: Path, force: bool, as_json: bool) -> None:
    """Clear the schema lock (tiangong_schema_lock) that a killed SQL step left on the
    database of site connection CONNECTION.

    Names the holder; a holder that may still be running (another host, or a live process)
    needs --force. Recorded in the journal and reported in the agent's next signed result.
    Works while `agent run` is running.
    """
    from agent.executors.sqlunlock import UnlockError, unlock

    setup_logging(False, False)
    ag = _open(home)
    try:
        report = unlock(ag.config, ag.journal, connection, force=force)
    except (UnlockError, JournalError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        ag.close()
    if as_json:
        holder = report.holder
        click.echo(json.dumps({
            "connection": connection, "cleared": report.cleared,
            "holder": None if holder is None else {"holder": holder.holder,
                                                   "until": holder.until(),
                                                   "expired": holder.expired},
        }, indent=2))
        return
    if report.holder is None:
        click.echo(f"the schema lock of connection {connection!r} is not held; nothing to do")
    else:
        click.echo(f"cleared the schema lock of connection {connection!r}, held by "
                   f"{report.holder.holder} until {report.holder.until()}; this is reported "
                   "in the agent's next result")


agent.add_command(upgrade.supervise_cmd)
