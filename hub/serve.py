"""``tiangong hub serve``: the hub app under gunicorn (never the Flask dev server), and the
live WebSocket server beside it when one is configured.

Uses gunicorn's documented ``BaseApplication`` embedding: options are set in code, the app
object is built in the master and forked into workers. The app is the hub with its web UI
(:func:`web.app.create_web_app`: ``[web]``/``[saml]`` from the same hub.toml); without a
``secret_key`` (which ``hub init`` writes) the UI cannot keep sessions, so the hub serves its
API and ``/healthz`` only and says so in the log.

The live server is **not** a gunicorn worker: gunicorn's workers are synchronous WSGI
processes (one request at a time each), while the live server is one asyncio process holding
every agent's WebSocket open for hours. So ``hub serve`` starts it as a child process
(``tiangong hub live``, which operators may also run on its own), on a port of its own, and
stops it when gunicorn stops (SIGTERM/SIGINT); a child that exits on its own is started again
with a back-off (:class:`ChildProcess`). See docs/live.md.

The scheduler (:mod:`hub.scheduler`: windows opening, freezes ending) runs the same way, in
exactly one child process (``tiangong hub scheduler``), never in a gunicorn worker.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from hub.config import HubConfig

__all__ = ["ChildProcess", "HubServer", "build_app", "gunicorn_options", "live_child_command",
           "scheduler_child_command", "serve"]

log = logging.getLogger("tiangong.hub.serve")

LIVE_STOP_TIMEOUT_S = 15.0  # seconds the live child gets to close its connections
RESTART_FIRST_S = 1.0  # a child that exited unasked is started again after this …
RESTART_MAX_S = 30.0  # … doubling up to this, while it keeps exiting
RESTART_STABLE_S = 60.0  # a child that ran this long starts the back-off again
CONTROL_SOCKET = "gunicorn.ctl"  # gunicorn's control socket, in the data directory
MAX_SOCKET_PATH_BYTES = 107  # a Unix socket path (sun_path is 108 bytes with the NUL)
class HubServer(BaseApplication):  # type: ignore[misc]
    """A gunicorn application serving one prepared Flask app."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key.lower(), value)

    def load(self) -> Flask:
        return self._app


def live_child_command(config: HubConfig, *, bind: str,
                       allow_insecure_loopback: bool) -> list[str]:
    """The ``tiangong hub live`` command line ``hub serve`` runs as its child.

    ``-P``: the working directory is not put on the child's import path, so a directory
    named ``hub/`` (or ``web/``, ``bundle/`` …) where ``hub serve`` was started — the demo's
    data directory is ``demo-out/hub`` — cannot shadow the installed packages."""
    command = [sys.executable, "-P", "-m", "tiangong.cli", "hub", "--data-dir",
               str(config.data_dir.absolute()),
               "live", "--bind", bind, "--parent-pid", str(os.getpid())]
    if allow_insecure_loopback:
        command.append("--insecure-loopback")
    return command


def scheduler_child_command(config: HubConfig) -> list[str]:
    """The ``tiangong hub scheduler`` command line ``hub serve`` runs as its child (``-P``
    as for the live child)."""
    return [sys.executable, "-P", "-m", "tiangong.cli", "hub", "--data-dir",
            str(config.data_dir.absolute()), "scheduler", "--parent-pid", str(os.getpid())]


class ChildProcess:
    """A child ``hub serve`` keeps running (the live server, the scheduler): started with
    :meth:`start`, restarted when it exits on its own, stopped with :meth:`stop`.

    A child that exits unasked (a crash, a port another process holds, an operator's
    ``kill``) is logged with its exit code and started again after a back-off that doubles
    from :data:`RESTART_FIRST_S` up to :data:`RESTART_MAX_S`, and starts again from the
    first delay once a child has run :data:`RESTART_STABLE_S`. Meanwhile the web side keeps
    serving and ``/healthz`` reports the live server down, so a monitor sees it and the
    hub heals on its own when the cause goes away (docs/live.md, "Processes and ports").
    """

    def __init__(self, command: Sequence[str], what: str = "live server",
                 lost: str = "agents cannot connect") -> None:
        self.command = list(command)
        self.what = what
        self.lost = lost
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc else None

    def _spawn(self) -> subprocess.Popen[bytes]:
        from hub.metrics import MULTIPROC_ENV

        # A child serves its own metrics (the live server: on its port), never into the web
        # workers' multiprocess files.
        env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
        proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, env=env)
        log.info("%s started as process %d", self.what, proc.pid)
        return proc

    def start(self) -> None:
        with self._lock:
            self._proc = self._spawn()
        threading.Thread(target=self._watch, name=f"tiangong-watch-{self.what}",
                         daemon=True).start()

    def _watch(self) -> None:
        delay = RESTART_FIRST_S
        with self._lock:
            proc = self._proc
        while True:
            if proc is not None:  # None: the last start failed (logged)
                started = time.monotonic()
                code = proc.wait()
                if self._stopping.is_set():
                    return
                if time.monotonic() - started >= RESTART_STABLE_S:
                    delay = RESTART_FIRST_S
                # Told to stop (exit 0, SIGTERM, SIGINT): most often hub serve is stopping
                # too (systemd signals the whole group) and stop() comes within the delay;
                # said only if it does not. Anything else is said at once.
                told = code in (0, -signal.SIGTERM, -signal.SIGINT)
                if not told:
                    log.error("the %s (process %d) exited with code %s; %s; starting it "
                              "again in %g s", self.what, proc.pid, code, self.lost, delay)
            else:
                told = False
            if self._stopping.wait(delay):
                return
            if told:
                assert proc is not None
                log.error("the %s (process %d) exited with code %s; %s; starting it again "
                          "(%g s after it exited)", self.what, proc.pid, proc.returncode,
                          self.lost, delay)
            delay = min(delay * 2, RESTART_MAX_S)
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    proc = self._proc = self._spawn()
                except OSError as exc:  # no memory to fork, the interpreter moved …
                    proc = None
                    log.error("the %s could not be started again (%s); %s; trying again in "
                              "%g s", self.what, exc, self.lost, delay)

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after :data:`LIVE_STOP_TIMEOUT_S`) and
        never start it again."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(LIVE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("the %s (process %d) did not stop in %s s; killing it", self.what,
                      proc.pid, LIVE_STOP_TIMEOUT_S)
            proc.kill()
            proc.wait()


def build_app(config: HubConfig) -> Flask:
    """The WSGI app ``hub serve`` runs: the hub with its web UI when it has a secret key.

    Raises:
        ConfigError: invalid hub, web or SAML settings (e.g. unusable IdP metadata).
    """
    from hub.app import create_app

    if not config.secret_key:
        log.warning("hub serve: no secret_key in hub.toml (or TIANGONG_HUB_SECRET_KEY): "
                    "the web UI is off; the API and /healthz are served")
        return create_app(config)
    from web.app import create_web_app

    return create_web_app(config)


def _worker_exited(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: a dead worker's gauges leave the metrics."""
    from hub.metrics import worker_exited

    worker_exited(worker.pid)


def gunicorn_options(config: HubConfig) -> dict[str, Any]:
    """gunicorn's settings for ``hub serve``.

    gunicorn (25.1 and later) opens a control socket for ``gunicornc``; its default,
    ``$XDG_RUNTIME_DIR/gunicorn.ctl`` or ``~/.gunicorn/gunicorn.ctl``, is one per user for
    the whole machine, so two hubs would fight over it. Here it is ``<data_dir>/gunicorn.ctl``
    (mode 0600): one per hub. A data directory whose path is too long for a Unix socket
    (:data:`MAX_SOCKET_PATH_BYTES`) gets none, and the log says so.
    """
    options: dict[str, Any] = {
        "bind": config.bind,
        "workers": config.workers,
        "accesslog": "-",
        "errorlog": "-",
        "timeout": 60,
        "child_exit": _worker_exited,
    }
    control = Path(config.data_dir).absolute() / CONTROL_SOCKET
    if len(os.fsencode(control)) <= MAX_SOCKET_PATH_BYTES:
        options["control_socket"] = str(control)
        options["control_socket_mode"] = 0o600
    else:
        log.warning("hub serve: no gunicorn control socket: %s is longer than %d bytes, the "
                    "limit of a Unix socket path", control, MAX_SOCKET_PATH_BYTES)
        options["control_socket_disable"] = True
    return options


def serve(config: HubConfig, *, live_command: Sequence[str] | None = None,
          scheduler_command: Sequence[str] | None = None) -> None:
    """Run until interrupted. Migrations run once, in the master, before forking.

    ``live_command`` (from :func:`live_child_command`): also run the live server as a child
    process, stopped when gunicorn's master stops; ``scheduler_command``
    (:func:`scheduler_child_command`) the same for the scheduler.
    """
    from hub.db import db
    from hub.metrics import clear_multiprocess, enable_multiprocess, sweep_multiprocess

    # gunicorn's workers are separate processes behind one port: their metrics go to files
    # that any worker's /metrics adds up (hub.metrics, multiprocess mode). One directory per
    # `hub serve`: several may share a data directory (docs/scale.md).
    run_dir = Path(config.data_dir).absolute() / "run"
    sweep_multiprocess(run_dir, "metrics-web-")
    metrics_dir = run_dir / f"metrics-web-{os.getpid()}"
    enable_multiprocess(metrics_dir)
    app = build_app(config)
    with app.app_context():
        db.engine.dispose()  # no pooled connection may cross the fork into workers
    master = os.getpid()
    children = []
    if live_command:
        children.append(ChildProcess(live_command))
    if scheduler_command:
        children.append(ChildProcess(scheduler_command, "scheduler",
                                     "windows and freezes are not acted on"))
    for each in children:
        each.start()
    try:
        HubServer(app, gunicorn_options(config)).run()
    finally:
        # gunicorn's workers are forked from here and leave through this frame too: only
        # the master owns the children.
        if os.getpid() == master:
            for each in children:
                each.stop()
            clear_multiprocess(metrics_dir)
