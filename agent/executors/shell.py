"""The shell step executor: run one staged script under bash, sh or the agent's own Python.

A shell step names a staged payload (``script``) and an ``interpreter``; the executor runs
``[interpreter, staged_script_path, *args]`` with ``cwd`` set to the step's private workdir,
streams stdout and stderr line by line into the step log, and turns the exit status, a timeout
or a cancel into a :class:`~agent.executors.base.StepOutcome`.

The child's environment is built from nothing: ``PATH`` (a fixed default, or the step's own),
``HOME`` and ``TIANGONG_WORKDIR`` (the workdir), ``LANG=C.UTF-8``, ``TIANGONG_BUNDLE_ID``,
``TIANGONG_STEP_NAME``, ``TIANGONG_STEP_INDEX``, then the step's ``env``, then (with
``secrets_via: env``) one ``TIANGONG_SECRET_<NAME>`` per secret. The agent's own environment is
*not* inherited: it may hold the agent's credentials (key passphrases, proxy passwords, cloud
tokens) that no release script should see, and a script that works on one site only because
of what happened to be in that agent's environment is a script that fails on the next site.
With ``secrets_via: stdin`` the secrets arrive instead as one JSON object ``{name: value}`` on
stdin followed by EOF, and nothing else in the environment differs; otherwise stdin is
``/dev/null``. Secrets are never put in argv, and every line logged is redacted by the step log.
Environment variables are readable by every descendant of the script and by same-user
processes through ``/proc/<pid>/environ``; steps that care should use ``stdin``.

The child leads a new session (and so a new process group). On timeout or cancel the whole
group gets SIGTERM and, after a bounded grace period, SIGKILL — grandchildren included. When
the script exits by itself, processes it left running in its group are ended the same way: a
step's processes do not outlive the step.

Deliberately not done here:

* no sandbox: no user switch, namespaces, cgroups, seccomp or resource limits — the script runs
  as the agent's user, and the bundle's signature is what makes it trusted;
* processes that leave the process group (``setsid``, double-forking daemons) are not tracked
  or killed (that needs cgroups); if one keeps stdout or stderr open the executor stops waiting
  for the pipe after a bounded time without progress (``READER_JOIN_S``; at most
  ``READER_JOIN_MAX_S`` in all) and says so in the log — output still draining on a slow
  machine is waited for, not lost;
* the script is not copied, rewritten or made executable, and args are never passed through a
  shell;
* secrets that the script transforms (base64, JSON-escaped, split across lines) before printing
  them are not recognised by the log's redaction;
* no retries, and no interpretation of the output.
"""

from __future__ import annotations

import array
import codecs
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

from agent.executors.base import MAX_LINE_CHARS, StepContext, StepLog, StepOutcome, StepStatus
from agent.executors.errors import StepSpecError
from agent.executors.undodata import record_script_undo

__all__ = [
    "DEFAULT_PATH",
    "INTERPRETERS",
    "KILL_GRACE_S",
    "MAX_LINE_BYTES",
    "READER_JOIN_S",
    "LineSplitter",
    "ShellExecutor",
    "secret_env_name",
]

INTERPRETERS = ("bash", "sh", "python")
SECRETS_VIA = ("env", "stdin")
ON_FAILURE = ("stop", "continue")

#: ``PATH`` the script gets unless its step sets one; also where ``bash``/``sh`` are looked up.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Time between SIGTERM and SIGKILL when the step's process group is ended.
KILL_GRACE_S = 5.0  # seconds
#: How long to wait for stdout/stderr to reach EOF once the process group is gone, while
#: the readers make no progress (a slow machine still draining a full pipe does make progress).
READER_JOIN_S = 5.0  # seconds
#: The longest wait for stdout/stderr, progress or not (a daemon that keeps writing).
READER_JOIN_MAX_S = 60.0  # seconds
#: Bytes of one output line read into memory; the rest of a longer line is counted and dropped.
#: Four bytes per character, so the step log's own cut (in characters) still applies first.
MAX_LINE_BYTES = 4 * MAX_LINE_CHARS  # bytes
#: Size of one read from a pipe.
READ_CHUNK_BYTES = 64 * 1024  # bytes
#: How often the wait loop looks at the cancel flag and the deadline.
POLL_INTERVAL_S = 0.05  # seconds

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_ENV_PREFIX = "TIANGONG_"
_SECRET_ENV_PREFIX = "TIANGONG_SECRET_"  # noqa: S105 - a variable name prefix, not a value

#: Builds the error for one field: ``bad(field, rule)``.
_Complaint = Callable[[str, str], StepSpecError]


def secret_env_name(name: str) -> str:
    """The environment variable a secret is exported as with ``secrets_via: env``.

    ``db-password`` becomes ``TIANGONG_SECRET_DB_PASSWORD``: upper case, and every character
    that is not an ASCII letter or digit becomes ``_``.
    """
    return _SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


class LineSplitter:
    """Turns a byte stream into bounded lines (sans-I/O: feed it bytes, get lines back).

    Each line comes out as ``(text, cut_bytes)``: the text decoded as UTF-8 with invalid bytes
    replaced by U+FFFD, and the number of bytes of that line that were dropped because it was
    longer than ``max_line_bytes`` (0 for a whole line). Memory stays below ``max_line_bytes``
    plus one fed chunk, whatever the input. A last line without a newline comes out of
    :meth:`close`.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max(1, max_line_bytes)
        self._buf = bytearray()
        self._dropped = 0

    def feed(self, data: bytes) -> list[tuple[str, int]]:
        """Add bytes; return the lines they completed."""
        lines: list[tuple[str, int]] = []
        view = memoryview(data)
        start = 0
        while True:
            newline = data.find(b"\n", start)
            end = len(data) if newline == -1 else newline
            self._append(view[start:end])
            if newline == -1:
                return lines
            lines.append(self._take())
            start = newline + 1

    def close(self) -> list[tuple[str, int]]:
        """End of stream: return the unterminated last line, if there is one."""
        if self._buf or self._dropped:
            return [self._take()]
        return []

    def _append(self, piece: memoryview) -> None:
        room = self._max - len(self._buf)
        if room > 0:
            self._buf += piece[:room]
        self._dropped += max(0, len(piece) - max(room, 0))

    def _take(self) -> tuple[str, int]:
        data, dropped = bytes(self._buf), self._dropped
        self._buf.clear()
        self._dropped = 0
        if not dropped:
            return data.decode("utf-8", "replace"), 0
        # The line was cut: a character split by the cut is dropped too, not shown as U+FFFD.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(data, final=False)
        return text, dropped + len(decoder.getstate()[0])


class _Pump(threading.Thread):
    """Reads one pipe to EOF and writes its lines to the step log; closes the pipe at the end.

    After :meth:`abandon` it keeps draining (so a writer outside the step never blocks on a full
    pipe) but logs nothing more. An exception from the log is kept in :attr:`error` and ends
    logging, not reading.
    """

    def __init__(self, pipe: IO[bytes], stream: str, log: StepLog, max_line_bytes: int) -> None:
        super().__init__(name=f"shell-step-{stream}", daemon=True)
        self._pipe = pipe
        self._stream = stream
        self._log = log
        self._splitter = LineSplitter(max_line_bytes)
        self._abandoned = threading.Event()
        self.error: Exception | None = None
        #: Grows with every read and every line logged: the executor waits for a pump that
        #: is still getting somewhere.
        self.progress = 0
        #: True only while the pump is blocked reading an empty pipe (see :meth:`behind`).
        self._reading = False

    def abandon(self) -> None:
        self._abandoned.set()

    def behind(self) -> bool:
        """Whether the pump still has work in hand: it is not waiting in ``read`` (it has not
        started, or it is logging what it read), or the pipe holds bytes it has not read yet.
        Only a pump blocked on an empty pipe is waiting for somebody else's writes."""
        if not self._reading:
            return True
        try:
            pending = array.array("i", [0])
            fcntl.ioctl(self._pipe.fileno(), termios.FIONREAD, pending)
        except (OSError, ValueError):  # the pipe was closed meanwhile: the pump is ending
            return False
        return pending[0] > 0

    def run(self) -> None:
        fd = self._pipe.fileno()
        try:
            while True:
                self._reading = True
                data = os.read(fd, READ_CHUNK_BYTES)
                self._reading = False
                if not data:
                    break
                self.progress += 1
                self._emit(self._splitter.feed(data))
            self._emit(self._splitter.close())
        except OSError as exc:
            self.error = self.error or exc
        finally:
            self._pipe.close()

    def _emit(self, lines: list[tuple[str, int]]) -> None:
        if self._abandoned.is_set() or self.error is not None:
            return
        for text, cut_bytes in lines:
            self.progress += 1
            try:
                self._log.write(text, self._stream, cut_bytes=cut_bytes)
            except Exception as exc:  # kept, and re-raised by ShellExecutor.run()
                self.error = exc
                return


def _feed_stdin(pipe: IO[bytes], data: bytes) -> None:
    """Write ``data`` to the child's stdin and close it (EOF); a child that exits unread is fine."""
    with contextlib.suppress(OSError):  # BrokenPipeError: it closed stdin without reading
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg also succeeds for zombies (orphans whose reaper does not reap); look closer.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_bytes()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." — comm may itself contain spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


@dataclass(frozen=True)
class _Plan:
    argv: list[str]
    env: dict[str, str]
    stdin: bytes | None
    interpreter: str


class ShellExecutor:
    """Runs ``kind: shell`` steps (see the module docstring for the environment and limits).

    The settings are for the agent's config and for tests; :func:`get_executor` uses defaults.
    """

    kind: ClassVar[str] = "shell"

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        kill_grace_s: float = KILL_GRACE_S,
        reader_join_s: float = READER_JOIN_S,
        reader_join_max_s: float = READER_JOIN_MAX_S,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.path = path
        self.kill_grace_s = kill_grace_s
        self.reader_join_s = reader_join_s
        self.reader_join_max_s = max(reader_join_max_s, reader_join_s)
        self.max_line_bytes = max_line_bytes

    # -- validation --------------------------------------------------------------------------

    def validate(self, step: Mapping[str, Any]) -> None:
        """Check a shell step's fields; called for every step before any step runs.

        Raises:
            StepSpecError: a field is missing or malformed; the message names the step and the
                field.
        """
        name = step.get("name")
        if not isinstance(name, str) or not name.strip():
            raise StepSpecError(
                f"shell step: field 'name' must be a non-empty string, got {_short(name)}"
            )

        def bad(field: str, rule: str) -> StepSpecError:
            return StepSpecError(
                f"step {name!r}: field {field!r} {rule}, got {_short(step.get(field))}"
            )

        if step.get("kind") != self.kind:
            raise bad("kind", f"must be {self.kind!r}")
        timeout = step.get("timeout_s")
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
            raise bad("timeout_s", "must be a positive integer (seconds)")
        if step.get("on_failure") not in ON_FAILURE:
            raise bad("on_failure", f"must be one of {', '.join(ON_FAILURE)}")
        script = step.get("script")
        if not isinstance(script, str) or not script:
            raise bad("script", "must name a payload of the bundle")
        if step.get("interpreter", "bash") not in INTERPRETERS:
            raise bad("interpreter", f"must be one of {', '.join(INTERPRETERS)}")
        if step.get("secrets_via", "env") not in SECRETS_VIA:
            raise bad("secrets_via", f"must be one of {', '.join(SECRETS_VIA)}")
        if "args" in step and not _is_str_list(step["args"], allow_empty_items=True):
            raise bad("args", "must be a list of strings without NUL characters")
        self._validate_env(step, bad)
        self._validate_secrets(step, bad)

    @staticmethod
    def _validate_env(step: Mapping[str, Any], bad: _Complaint) -> None:
        if "env" not in step:
            return
        env = step["env"]
        if not isinstance(env, Mapping):
            raise bad("env", "must be a mapping of variable names to strings")
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise bad("env", f"has {_short(key)}, which is not a valid variable name")
            if key.startswith(_RESERVED_ENV_PREFIX):
                raise bad("env", f"sets {key}; names starting with TIANGONG_ are the agent's")
            if not isinstance(value, str) or "\0" in value:
                raise bad("env", f"value of {key} must be a string without NUL characters")

    @staticmethod
    def _validate_secrets(step: Mapping[str, Any], bad: _Complaint) -> None:
        if "secrets" not in step:
            return
        secrets = step["secrets"]
        if not _is_str_list(secrets, allow_empty_items=False):
            raise bad("secrets", "must be a list of secret names")
        seen: dict[str, str] = {}
        for secret in secrets:
            var = secret_env_name(secret)
            if var in seen:
                raise bad(
                    "secrets", f"names {seen[var]!r} and {secret!r} would both be exported as {var}"
                )
            seen[var] = secret

    # -- running -----------------------------------------------------------------------------

    def run(self, ctx: StepContext) -> StepOutcome:
        """Run the step's script; return how it ended. Call only with a validated step.

        Non-zero exit, death by signal, timeout, cancel, a missing interpreter or script are
        ``failed`` outcomes. When this returns, no process of the step's group is left.

        Raises:
            Exception: whatever the step log's sink raised while output was being logged (the
                step's processes are ended first); nothing else is expected.
        """
        started = time.monotonic()
        if ctx.cancel.is_set():
            return StepOutcome("failed", "cancelled before it started", details={"cancelled": True})
        refused = record_script_undo(ctx, "rollback")
        if refused is not None:
            return refused
        plan = self._plan(ctx)
        if isinstance(plan, StepOutcome):
            return plan

        ctx.log.write(f"running {shlex.join(plan.argv)} in {ctx.workdir}", "info")
        try:
            proc = subprocess.Popen(
                plan.argv,
                cwd=ctx.workdir,
                env=plan.env,
                stdin=subprocess.DEVNULL if plan.stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return self._failed(ctx, f"could not start {plan.interpreter}: {exc}", plan)

        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            _Pump(proc.stdout, "stdout", ctx.log, self.max_line_bytes),
            _Pump(proc.stderr, "stderr", ctx.log, self.max_line_bytes),
        ]
        feeder: threading.Thread | None = None
        if plan.stdin is not None:
            assert proc.stdin is not None
            feeder = threading.Thread(
                target=_feed_stdin,
                args=(proc.stdin, plan.stdin),
                name="shell-step-stdin",
                daemon=True,
            )
        timeout_s: int = ctx.step["timeout_s"]
        deadline = min(ctx.deadline, started + timeout_s)
        reason = "interrupted"
        try:
            for thread in [*pumps, *([feeder] if feeder else [])]:
                thread.start()
            reason = self._wait(proc, ctx, deadline)
            if reason == "timeout":
                ctx.log.write(
                    f"timeout reached after {time.monotonic() - started:.1f} s: "
                    "ending the step's process group",
                    "info",
                )
            elif reason == "cancelled":
                ctx.log.write("cancelled: ending the step's process group", "info")
            elif _group_alive(proc.pid):
                ctx.log.write(
                    "the script exited but left processes running in its process group: "
                    "ending them",
                    "info",
                )
        finally:
            # Also on KeyboardInterrupt or a bug above: nothing of the step outlives run().
            self._end_group(proc, ctx.log)
        self._join_readers(pumps, feeder, ctx.log)
        for pump in pumps:
            if pump.error is not None:
                raise pump.error

        return self._outcome(ctx, plan, proc.returncode, reason, timeout_s, started, deadline)

    def _plan(self, ctx: StepContext) -> _Plan | StepOutcome:
        """Resolve script, interpreter, environment and stdin, or say why the step cannot run."""
        step = ctx.step
        script_name: str = step["script"]
        interpreter: str = step.get("interpreter", "bash")
        script_path = ctx.files.get(script_name)
        if script_path is None:
            return self._failed(ctx, f"script {script_name!r} is not among the staged payloads")
        if not Path(script_path).is_file():
            return self._failed(ctx, f"script {script_name!r} is not staged at {script_path}")

        env = {
            "PATH": self.path,
            "HOME": str(ctx.workdir),
            "LANG": "C.UTF-8",
            "TIANGONG_BUNDLE_ID": ctx.bundle_id,
            "TIANGONG_STEP_NAME": str(step["name"]),
            "TIANGONG_STEP_INDEX": str(ctx.index),
            "TIANGONG_WORKDIR": str(ctx.workdir),
        }
        env.update(step.get("env", {}))

        names: Sequence[str] = step.get("secrets", ())
        missing = [n for n in names if n not in ctx.secrets]
        if missing:
            return self._failed(ctx, f"secrets not provided to this step: {', '.join(missing)}")
        stdin: bytes | None = None
        if step.get("secrets_via", "env") == "stdin":
            stdin = json.dumps({n: ctx.secrets[n] for n in names}).encode("utf-8")
        else:
            for n in names:
                if "\0" in ctx.secrets[n]:
                    return self._failed(
                        ctx,
                        f"secret {n!r} contains a NUL character and cannot be passed in the "
                        "environment; use secrets_via: stdin",
                    )
                env[secret_env_name(n)] = ctx.secrets[n]

        if interpreter == "python":
            program = sys.executable
            if not program:
                return self._failed(ctx, "interpreter 'python': the agent's Python is unknown")
        else:
            search = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if os.path.isabs(p))
            found = shutil.which(interpreter, path=search)
            if found is None:
                return self._failed(
                    ctx, f"interpreter {interpreter!r} not found on PATH {env['PATH']}"
                )
            program = found
        argv = [program, str(script_path), *step.get("args", ())]
        return _Plan(argv=argv, env=env, stdin=stdin, interpreter=interpreter)

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], ctx: StepContext, deadline: float) -> str:
        """Wait until the child exits (``"exited"``), the deadline passes or cancel is set."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "exited" if proc.poll() is not None else "timeout"
            try:
                proc.wait(timeout=min(POLL_INTERVAL_S, remaining))
            except subprocess.TimeoutExpired:
                pass
            else:
                return "exited"
            if ctx.cancel.is_set():
                return "exited" if proc.poll() is not None else "cancelled"

    def _end_group(self, proc: subprocess.Popen[bytes], log: StepLog) -> None:
        """End every process of the child's group: SIGTERM, a grace period, SIGKILL.

        Reaps the child. Takes at most about three times :attr:`kill_grace_s`.

        The group id is the child's PID, which the kernel does not hand out again while any
        member of the group is alive; between the last member dying and our next signal it
        could, in theory, be reused — that window is one poll interval.
        """
        pgid = proc.pid  # start_new_session: the child leads its own group
        proc.poll()
        if not _group_alive(pgid):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            # PermissionError: only members we may not signal are left (a setuid program)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            if self._group_gone_within_grace(proc, pgid):
                break
            if sig == signal.SIGTERM:
                log.write(
                    f"processes still running {self.kill_grace_s:g} s after SIGTERM: "
                    "sending SIGKILL",
                    "info",
                )
        else:
            log.write("processes of the step survived SIGKILL (stuck in the kernel?)", "info")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.kill_grace_s)

    def _group_gone_within_grace(self, proc: subprocess.Popen[bytes], pgid: int) -> bool:
        until = time.monotonic() + self.kill_grace_s
        while True:
            proc.poll()  # reap the leader as soon as it exits
            if not _group_alive(pgid):
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(0.02)

    def _join_readers(
        self, pumps: list[_Pump], feeder: threading.Thread | None, log: StepLog
    ) -> None:
        """Wait, boundedly, for stdout/stderr to reach EOF and for stdin to be written: up to
        ``reader_join_s`` without progress, and never longer than ``reader_join_max_s``. A
        pump that has bytes in hand or in its pipe counts as progressing even when a loaded
        machine has not let its thread run for ``reader_join_s``."""
        start = time.monotonic()
        until = start + self.reader_join_s
        last = sum(p.progress for p in pumps)
        threads = [*pumps, *([feeder] if feeder else [])]
        while True:
            for thread in threads:
                thread.join(timeout=max(0.0, until - time.monotonic()))
            if not any(t.is_alive() for t in threads):
                break
            now, progress = time.monotonic(), sum(p.progress for p in pumps)
            behind = any(p.behind() for p in pumps if p.is_alive())
            if (progress == last and not behind) or now - start >= self.reader_join_max_s:
                break
            last, until = progress, min(now + self.reader_join_s, start + self.reader_join_max_s)
        stuck = [pump for pump in pumps if pump.is_alive()]
        for pump in stuck:
            pump.abandon()
        if stuck:
            waited = time.monotonic() - start
            log.write(
                f"stopped waiting for the script's output after {waited:.1f} s: a "
                "process outside its process group (setsid? a daemon?) still holds "
                f"{' and '.join(p.name.removeprefix('shell-step-') for p in stuck)} open",
                "info",
            )

    @staticmethod
    def _outcome(
        ctx: StepContext,
        plan: _Plan,
        returncode: int | None,
        reason: str,
        timeout_s: int,
        started: float,
        deadline: float,
    ) -> StepOutcome:
        exit_code = returncode if returncode is not None and returncode >= 0 else None
        details: dict[str, Any] = {
            "interpreter": plan.interpreter,
            "exit_code": exit_code,
            "duration_s": round(time.monotonic() - started, 3),
            "log_truncated": ctx.log.truncated,
        }
        if returncode is not None and returncode < 0:
            details["signal"] = _signal_name(-returncode)
        if reason == "timeout":
            details["timed_out"] = True
            if deadline < started + timeout_s:
                summary = f"killed at the run's deadline, {deadline - started:.0f} s after start"
            else:
                summary = f"killed after timeout of {timeout_s} s"
        elif reason == "cancelled":
            details["cancelled"] = True
            summary = "cancelled"
        elif returncode is None:
            summary = "the script's process could not be reaped"
        elif returncode < 0:
            summary = f"killed by signal {details['signal']}"
        else:
            summary = f"exit code {returncode}"
        status: StepStatus = "succeeded" if reason == "exited" and returncode == 0 else "failed"
        return StepOutcome(
            status,
            ctx.log.redact(summary),
            exit_code=exit_code,
            details={k: ctx.log.redact(v) if isinstance(v, str) else v for k, v in details.items()},
        )

    @staticmethod
    def _failed(ctx: StepContext, summary: str, plan: _Plan | None = None) -> StepOutcome:
        """A step that could not start: logged and returned as a ``failed`` outcome."""
        summary = ctx.log.redact(summary)
        ctx.log.write(summary, "info")
        details: dict[str, Any] = {"exit_code": None}
        if plan is not None:
            details["interpreter"] = plan.interpreter
        return StepOutcome("failed", summary, details=details)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _is_str_list(value: object, *, allow_empty_items: bool) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(item, str) and "\0" not in item and (allow_empty_items or item) for item in value
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
