"""The agent upgrading itself from a bundle: versions side by side, the ``current`` switch, and
``tiangong agent supervise``, which restarts the agent into the new version and goes back to
the old one if the new one does not come up in time (docs/agent.md, "Upgrading the agent").

Layout, in the agent home::

    versions/<V>/lib/          tiangong <V>, installed from the wheel a bundle carried
                               (``pip install --no-deps --target``)
    versions/current -> <V>    the version the supervisor starts; absent: the installed
                               environment's own version
    versions/previous -> <V>   what ``current`` was before the last switch (absent: the
                               installed one); the rollback target
    versions/upgrade.json      the last upgrade: from, to, state, times, reason

States of ``upgrade.json``: ``switched`` (an ``agent-upgrade`` step installed <V> and pointed
``current`` at it; the agent restarts into it), ``confirmed`` (<V> came up under the
supervisor and recorded itself), ``rolled-back`` (it did not come up within the step's
``confirm_timeout``: ``current`` points where it did before and the old version runs).

The supervisor runs ``agent run`` as its child with ``PYTHONPATH`` set to ``current/lib`` (the
child's code is that version's; the supervisor's own code is the installed environment's) and
``TIANGONG_AGENT_SUPERVISED`` set to the home. A child that exits with :data:`RESTART_EXIT`
(after an upgrade step) is started again at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import tiangong
from agent.faults import crash_point
from tiangong.stopsignals import stop_signals

__all__ = [
    "RESTART_EXIT",
    "SUPERVISED_ENV",
    "UpgradeError",
    "confirm_started",
    "current_version",
    "describe",
    "on_restart",
    "read_state",
    "request_restart",
    "restart_requested",
    "status",
    "supervise",
    "supervise_cmd",
    "switch",
]

log = logging.getLogger("tiangong.agent.upgrade")

#: Exit status of `agent run` asking its supervisor to start it again (EX_TEMPFAIL).
RESTART_EXIT = 75
#: Set by the supervisor for its child: the agent home it supervises.
SUPERVISED_ENV = "TIANGONG_AGENT_SUPERVISED"
STOP_WAIT_S = 30  # seconds a child gets to exit after SIGTERM before SIGKILL
POLL_S = 0.2  # seconds between looks at a starting child and at upgrade.json
#: How the supervisor starts `tiangong` with the Python it runs on, ignoring the working
#: directory (-P): the code comes from PYTHONPATH (current/lib) or the environment.
_MAIN = "from tiangong.cli import main; main()"


class UpgradeError(Exception):
    """The upgrade layout cannot be read or written (the message names the path)."""


def versions_dir(home: Path) -> Path:
    return home / "versions"


def _state_path(home: Path) -> Path:
    return versions_dir(home) / "upgrade.json"


def read_state(home: Path) -> dict[str, Any] | None:
    """The last upgrade's record, or None when the agent was never upgraded.

    Raises:
        UpgradeError: the file exists but cannot be read as a JSON object.
    """
    path = _state_path(home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UpgradeError(f"cannot read the upgrade record {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UpgradeError(f"the upgrade record {path} is not a JSON object")
    return data


def _write_state(home: Path, state: dict[str, Any]) -> None:
    _write_json(_state_path(home), state)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UpgradeError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _link(home: Path, name: str) -> str | None:
    """The version a link in versions/ names, or None when it does not exist."""
    try:
        return os.readlink(versions_dir(home) / name)
    except FileNotFoundError:
        return None


def current_version(home: Path) -> str | None:
    """The version ``versions/current`` names (None: the installed environment's own)."""
    return _link(home, "current")


def _set_link(home: Path, name: str, version: str | None) -> None:
    """Point versions/<name> at ``version`` atomically (None: remove it)."""
    link = versions_dir(home) / name
    if version is None:
        link.unlink(missing_ok=True)
        return
    tmp = link.with_name(f".{name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(version, tmp)
    os.replace(tmp, link)


def switch(home: Path, version: str, *, running: str, confirm_timeout_s: int,
           bundle_id: str) -> None:
    """Point ``current`` at the installed ``versions/<version>`` (``previous`` at what it was)
    and record the switch; the supervisor confirms or rolls it back.

    Raises:
        UpgradeError: the record or a link cannot be written.
    """
    was = _link(home, "current")
    _write_state(home, {
        "state": "switched", "from": running, "to": version, "previous": was,
        "confirm_timeout_s": confirm_timeout_s, "bundle_id": bundle_id,
        "switched_at": int(time.time()),
    })
    crash_point("upgrade-recorded")
    try:
        _set_link(home, "previous", was)
        _set_link(home, "current", version)
    except OSError as exc:
        raise UpgradeError(f"cannot switch {versions_dir(home)}/current to {version}: "
                           f"{exc.strerror or exc}") from exc


def confirm_started(home: Path) -> None:
    """Called by `agent run` once the agent is up (home, journal, keys and inbox opened). Under
    the supervisor: records this process's version and pid in ``versions/running.json``, and
    confirms a switched upgrade to this very version."""
    if os.environ.get(SUPERVISED_ENV) != str(home):
        return
    version = tiangong.__version__
    try:
        versions_dir(home).mkdir(mode=0o700, exist_ok=True)
        _write_json(versions_dir(home) / "running.json",
                    {"version": version, "pid": os.getpid(), "started_at": int(time.time())})
        state = read_state(home)
        if state is None or state.get("state") != "switched" or state.get("to") != version:
            return
        state.update(state="confirmed", confirmed_at=int(time.time()), pid=os.getpid())
        _write_state(home, state)
    except UpgradeError as exc:
        log.error("%s; the supervisor will roll the upgrade back", exc)
        return
    log.info("upgrade to tiangong %s confirmed (was %s)", state["to"], state.get("from"))


def status(home: Path) -> dict[str, Any]:
    """For `agent status`: the version the supervised agent runs (``running``: version, pid,
    and whether that process is alive; None when it never ran under the supervisor), what
    ``current`` names, and the last upgrade's record (None if none)."""
    try:
        last = read_state(home)
    except UpgradeError as exc:
        last = {"state": "unreadable", "reason": str(exc)}
    running: dict[str, Any] | None
    try:
        running = json.loads((versions_dir(home) / "running.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        running = None
    if isinstance(running, dict) and isinstance(running.get("pid"), int):
        running["alive"] = _alive(running["pid"])
    return {"running": running, "current": _link(home, "current"), "last_upgrade": last}


def describe(st: dict[str, Any]) -> str:
    """One line for `agent status`: which version the supervised agent runs, and the last
    upgrade."""
    running = st.get("running")
    if isinstance(running, dict):
        alive = "" if running.get("alive") else ", not running now"
        text = f"agent version: tiangong {running.get('version')} (pid {running.get('pid')}{alive})"
    else:
        text = f"agent version: tiangong {tiangong.__version__} (installed; not supervised yet)"
    last = st.get("last_upgrade")
    if isinstance(last, dict):
        text += (f"; last upgrade {last.get('from')} -> {last.get('to')}: "
                 f"{last.get('state')}")
        if last.get("reason"):
            text += f" ({last['reason']})"
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- restart requests (the step asks, `agent run` exits with RESTART_EXIT) ---

_restart = threading.Event()
_restart_hooks: list[Callable[[], None]] = []


def on_restart(hook: Callable[[], None]) -> None:
    """Register what stops this process's agent loop when a restart is requested."""
    _restart_hooks.append(hook)


def request_restart() -> None:
    """Ask this agent process to finish its current bundle and exit with RESTART_EXIT."""
    _restart.set()
    for hook in _restart_hooks:
        hook()


def restart_requested() -> bool:
    return _restart.is_set()


# --- the supervisor ---

def _child_env(home: Path) -> tuple[dict[str, str], str | None]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env[SUPERVISED_ENV] = str(home)
    version = _link(home, "current")
    if version is not None:
        env["PYTHONPATH"] = str(versions_dir(home) / version / "lib")
    return env, version


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _roll_back(home: Path, state: dict[str, Any], why: str) -> None:
    previous = state.get("previous")
    _set_link(home, "current", previous if isinstance(previous, str) else None)
    _set_link(home, "previous", None)
    state.update(state="rolled-back", rolled_back_at=int(time.time()), reason=why)
    _write_state(home, state)
    log.error("upgrade to tiangong %s rolled back to %s: %s", state.get("to"),
              state.get("from"), why)


def _await_confirmation(home: Path, proc: subprocess.Popen[bytes], state: dict[str, Any],
                        stopping: threading.Event) -> str | None:
    """None once the child confirmed the switched version; else why it did not."""
    timeout = float(state.get("confirm_timeout_s") or 120)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping.is_set():
        try:
            now = read_state(home)
        except UpgradeError:
            now = None
        if now is not None and now.get("state") == "confirmed":
            return None
        if proc.poll() is not None:
            return f"tiangong {state.get('to')} exited with status {proc.returncode} " \
                   "before it was up"
        stopping.wait(POLL_S)
    if stopping.is_set():
        return None  # asked to stop: decide at the next start
    return f"tiangong {state.get('to')} was not up within {timeout:g} s"


def supervise(home: Path, run_args: list[str], stopping: threading.Event) -> int:
    """Run `agent run` for ``home`` as a child until ``stopping`` is set or it exits for
    good; start it again when it asks (RESTART_EXIT), and roll a switched upgrade back when
    the new version does not come up within its confirm timeout. Returns the exit status.
    """
    while True:
        state = read_state(home)
        env, version = _child_env(home)
        argv = [sys.executable, "-P", "-c", _MAIN, "agent", "run", "--home", str(home),
                *run_args]
        log.info("supervisor: starting the agent (%s)",
                 f"tiangong {version}" if version else "the installed tiangong")
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        watcher = threading.Thread(target=_stop_on, args=(stopping, proc), daemon=True)
        watcher.start()
        if state is not None and state.get("state") == "switched":
            if version != state.get("to"):  # killed between the record and the link
                why: str | None = (f"the switch to tiangong {state.get('to')} did not finish "
                                   f"(current names {version or 'the installed version'})")
            else:
                why = _await_confirmation(home, proc, state, stopping)
            if why is not None:
                _stop(proc)
                _roll_back(home, state, why)
                continue
        proc.wait()
        if proc.returncode == RESTART_EXIT and not stopping.is_set():
            continue
        return stop_status(proc.returncode, stopping.is_set())


def stop_status(returncode: int, asked_to_stop: bool) -> int:
    """The supervisor's exit status for a child that exited with ``returncode``. A stop of
    the whole process group (systemctl stop, killpg) signals the child twice: once directly
    and once from the supervisor. If the second arrives while the child's interpreter is
    already shutting down (its handlers reset), the child dies of that SIGTERM after a clean
    stop; that is a clean stop too, not a failure."""
    if asked_to_stop and returncode in (-signal.SIGTERM, -signal.SIGINT):
        return 0
    return returncode


def _stop_on(stopping: threading.Event, proc: subprocess.Popen[bytes]) -> None:
    while proc.poll() is None:
        if stopping.wait(POLL_S):
            _stop(proc)
            return


@click.command("supervise")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              envvar="TIANGONG_AGENT_HOME", default="agent-home", show_default=True,
              help="The agent home directory.")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
def supervise_cmd(home: Path, run_args: tuple[str, ...]) -> None:
    """Run the agent (`agent run`) under a supervisor that can upgrade it: an agent-upgrade
    step switches versions and the agent restarts into the new one; if that one is not up
    within the step's confirm timeout, the old one runs again. Use it as the service's
    command (docs/agent.md). Extra arguments go to `agent run` (e.g. -- --json-logs)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    home = home.absolute()
    if not (home / "agent.toml").is_file():
        raise click.ClickException(f"{home} is not an agent home (no agent.toml): run "
                                   "`tiangong agent init` first")
    stopping = threading.Event()

    def stop(signum: int) -> None:  # in a helper thread (tiangong.stopsignals)
        log.info("supervisor: signal %d: stopping the agent", signum)
        stopping.set()

    with stop_signals(stop, restore=False):
        try:
            code = supervise(home, list(run_args), stopping)
        except (UpgradeError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc
    sys.exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell says


def remove_version(home: Path, version: str) -> None:
    """Delete an installed version that is neither current nor previous (best effort)."""
    if version in (_link(home, "current"), _link(home, "previous")):
        return
    shutil.rmtree(versions_dir(home) / version, ignore_errors=True)
