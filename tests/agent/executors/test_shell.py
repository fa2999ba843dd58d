"""Tests for the shell step executor, with real processes (bash, sh, the agent's Python).

Nothing here mocks ``subprocess``: each test stages a real script, runs it through
:class:`ShellExecutor` and looks at what the process left behind (files in its workdir, PIDs in
``/proc``) and at what reached the step log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from agent.executors import get_executor
from agent.executors import shell as shell_module
from agent.executors.base import REDACTED, LogLine, StepContext, StepLog, StepOutcome
from agent.executors.errors import StepSpecError
from agent.executors.shell import (
    DEFAULT_PATH,
    LineSplitter,
    ShellExecutor,
    secret_env_name,
)

STEP_NAME = "deploy-step"
SCRIPT = "scripts/run.sh"


# -- helpers ---------------------------------------------------------------------------------


def shell_step(**fields: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "name": STEP_NAME,
        "kind": "shell",
        "timeout_s": 120,
        "on_failure": "stop",
        "script": SCRIPT,
    }
    step.update(fields)
    return step


class Run:
    """One staged step: its context, a record of everything the sink saw, and the outcome."""

    def __init__(
        self,
        tmp_path: Path,
        script: str,
        step: Mapping[str, Any] | None = None,
        *,
        secrets: Mapping[str, str] | None = None,
        cap_bytes: int = 1024 * 1024,
        on_line: Callable[[LogLine, Run], None] | None = None,
        deadline_s: float = 600.0,
    ) -> None:
        self.step = dict(step if step is not None else shell_step())
        staging = tmp_path / "staging"
        script_path = staging / self.step["script"]
        script_path.parent.mkdir(parents=True, exist_ok=True)
        script_path.write_text(dedent(script))
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        self.seen: list[LogLine] = []
        self.cancel = threading.Event()
        self._on_line = on_line
        self.secrets = dict(secrets or {})
        self.log = StepLog(
            cap_bytes=cap_bytes, secrets=list(self.secrets.values()), sink=self._sink
        )
        self.ctx = StepContext(
            bundle_id="bundle-0042",
            release={"product": "billing", "version": "2.4.0"},
            index=3,
            step=self.step,
            files={self.step["script"]: script_path},
            workdir=self.workdir,
            connection=None,
            secrets=self.secrets,
            log=self.log,
            deadline=time.monotonic() + deadline_s,
            cancel=self.cancel,
        )

    def _sink(self, line: LogLine) -> None:
        self.seen.append(line)
        if self._on_line is not None:
            self._on_line(line, self)

    def execute(self, executor: ShellExecutor) -> StepOutcome:
        executor.validate(self.step)
        return executor.run(self.ctx)

    def texts(self, stream: str) -> list[str]:
        return [ln.text for ln in self.log.lines() if ln.stream == stream]

    def read(self, name: str) -> str:
        return (self.workdir / name).read_text()

    def pids(self, *names: str) -> list[int]:
        return [int(self.read(name)) for name in names]


def pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead: nothing reaps orphans here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def wait_until(predicate: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; fail the test (naming ``what``) after ``limit_s``."""
    until = time.monotonic() + limit_s
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > until:
            pytest.fail(f"gave up waiting for {what} after {limit_s} s")
        pause.wait(0.02)


def kill_quietly(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def executor() -> ShellExecutor:
    # short grace and join bounds keep the kill paths quick; behaviour is the same
    return ShellExecutor(kill_grace_s=0.5, reader_join_s=1.0)


@pytest.fixture
def stray_pids() -> Iterator[list[int]]:
    """PIDs a test started indirectly; killed at teardown if the executor missed them."""
    pids: list[int] = []
    yield pids
    kill_quietly(pids)


# -- registry and spec -----------------------------------------------------------------------


def test_registered_as_shell_kind() -> None:
    executor = get_executor("shell")
    assert isinstance(executor, ShellExecutor)
    assert executor.kind == "shell"


@pytest.mark.parametrize(
    "step",
    [
        shell_step(),
        shell_step(
            interpreter="python",
            on_failure="continue",
            timeout_s=1,
            env={"FOO": "bar", "_X1": "", "PATH": "/opt/bin:/usr/bin"},
            secrets=["db-password", "api token"],
            secrets_via="stdin",
            args=["--dry-run", "", "a b"],
        ),
        shell_step(interpreter="sh", secrets=[], args=[], env={}),
    ],
)
def test_valid_steps_pass(executor: ShellExecutor, step: dict[str, Any]) -> None:
    executor.validate(step)


_MISSING = object()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "sql"),
        ("timeout_s", _MISSING),
        ("timeout_s", 0),
        ("timeout_s", -5),
        ("timeout_s", True),
        ("timeout_s", "10"),
        ("timeout_s", 1.5),
        ("on_failure", _MISSING),
        ("on_failure", "retry"),
        ("script", _MISSING),
        ("script", ""),
        ("script", 7),
        ("interpreter", "zsh"),
        ("interpreter", None),
        ("secrets_via", "argv"),
        ("args", "--all"),
        ("args", [1]),
        ("args", ["a\0b"]),
        ("env", ["FOO=bar"]),
        ("env", {"1FOO": "x"}),
        ("env", {"FOO-BAR": "x"}),
        ("env", {"FOO=": "x"}),
        ("env", {"TIANGONG_STEP_NAME": "spoofed"}),
        ("env", {"TIANGONG_SECRET_DB": "spoofed"}),
        ("env", {"FOO": 1}),
        ("env", {"FOO": "x\0y"}),
        ("secrets", "db-password"),
        ("secrets", [""]),
        ("secrets", [1]),
        ("secrets", ["db", "db"]),
        ("secrets", ["db-pass", "db_pass"]),  # both would be TIANGONG_SECRET_DB_PASS
    ],
)
def test_invalid_fields_are_rejected_naming_step_and_field(
    executor: ShellExecutor, field: str, value: object
) -> None:
    step = shell_step()
    if value is _MISSING:
        del step[field]
    else:
        step[field] = value
    with pytest.raises(StepSpecError) as info:
        executor.validate(step)
    message = str(info.value)
    assert f"step {STEP_NAME!r}" in message
    assert f"field {field!r}" in message


@pytest.mark.parametrize("name", [_MISSING, "", "   ", 5])
def test_step_without_a_name_is_rejected(executor: ShellExecutor, name: object) -> None:
    step = shell_step()
    if name is _MISSING:
        del step["name"]
    else:
        step["name"] = name
    with pytest.raises(StepSpecError, match="field 'name'"):
        executor.validate(step)


@pytest.mark.parametrize(
    ("name", "var"),
    [
        ("db", "TIANGONG_SECRET_DB"),
        ("db-password", "TIANGONG_SECRET_DB_PASSWORD"),
        ("api token.v2", "TIANGONG_SECRET_API_TOKEN_V2"),
        ("Grüße", "TIANGONG_SECRET_GR__E"),
    ],
)
def test_secret_env_name(name: str, var: str) -> None:
    assert secret_env_name(name) == var


# -- running: exit status and output ---------------------------------------------------------


def test_success_captures_output_in_order(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(
        tmp_path,
        """\
        for i in 1 2 3 4 5; do echo "line $i"; done
        echo "to stderr" >&2
        echo "after stderr"
        """,
    )
    outcome = run.execute(executor)

    assert outcome.status == "succeeded"
    assert outcome.summary == "exit code 0"
    assert outcome.exit_code == 0
    assert outcome.details["exit_code"] == 0
    assert run.texts("stdout") == [*(f"line {i}" for i in range(1, 6)), "after stderr"]
    assert run.texts("stderr") == ["to stderr"]
    # the sink saw the same lines, live, with increasing sequence numbers
    assert [ln.seq for ln in run.seen] == list(range(1, len(run.seen) + 1))
    assert [ln.text for ln in run.seen if ln.stream == "stdout"] == run.texts("stdout")


def test_nonzero_exit_is_reported(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, "echo failing; exit 3\n")
    outcome = run.execute(executor)
    assert outcome.status == "failed"
    assert outcome.summary == "exit code 3"
    assert outcome.exit_code == 3
    assert outcome.details["exit_code"] == 3
    assert run.texts("stdout") == ["failing"]


def test_death_by_signal_is_reported(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, "kill -KILL $$\n")
    outcome = run.execute(executor)
    assert outcome.status == "failed"
    assert outcome.summary == "killed by signal SIGKILL"
    assert outcome.exit_code is None
    assert outcome.details["signal"] == "SIGKILL"


def test_args_are_passed_verbatim_without_a_shell(tmp_path: Path, executor: ShellExecutor) -> None:
    args = ["a b", "$HOME", "*", "", "; rm -rf /", "é"]
    run = Run(
        tmp_path,
        """\
        import json, sys
        print(json.dumps(sys.argv[1:]))
        """,
        shell_step(interpreter="python", args=args),
    )
    outcome = run.execute(executor)
    assert outcome.status == "succeeded", run.log.text()
    assert json.loads(run.texts("stdout")[0]) == args


def test_invalid_utf8_is_replaced(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, r"printf 'ok \xff\xfe end\nnext é\n'" + "\n")
    outcome = run.execute(executor)
    assert outcome.status == "succeeded"
    assert run.texts("stdout") == ["ok \ufffd\ufffd end", "next é"]


def test_last_line_without_newline_is_kept(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, "printf 'first\\nlast'\nprintf 'err-last' >&2\n")
    outcome = run.execute(executor)
    assert outcome.status == "succeeded"
    assert run.texts("stdout") == ["first", "last"]
    assert run.texts("stderr") == ["err-last"]


def test_very_long_line_is_cut_and_the_next_line_survives(
    tmp_path: Path, executor: ShellExecutor
) -> None:
    run = Run(
        tmp_path,
        """\
        import sys
        sys.stdout.write("x" * 3_000_000 + "\\n" + "after\\n")
        """,
        shell_step(interpreter="python"),
    )
    outcome = run.execute(executor)
    assert outcome.status == "succeeded"
    long_line, after = run.texts("stdout")
    match = re.fullmatch(r"(x+) \[line cut: (\d+) bytes left out\]", long_line)
    assert match is not None
    assert len(match.group(1)) + int(match.group(2)) == 3_000_000
    assert after == "after"


def test_secret_straddling_the_read_cut_of_a_long_line_is_not_shown(tmp_path: Path) -> None:
    secret = "hunter2-very-secret"
    run = Run(
        tmp_path,
        """\
        import os
        print("x" * 1021 + os.environ["TIANGONG_SECRET_PW"] + "y" * 5000)
        """,
        shell_step(interpreter="python", secrets=["pw"]),
        secrets={"pw": secret},
    )
    outcome = run.execute(ShellExecutor(max_line_bytes=1024))
    assert outcome.status == "succeeded"
    (line,) = run.texts("stdout")
    assert line.startswith("x" * 1021 + " [line cut: ")
    assert "hun" not in line


def test_huge_output_is_capped_keeping_head_and_tail(
    tmp_path: Path, executor: ShellExecutor
) -> None:
    total = 200_000
    cap = 64 * 1024
    run = Run(tmp_path, f"seq 1 {total}\n", cap_bytes=cap)
    outcome = run.execute(executor)

    assert outcome.status == "succeeded"
    assert outcome.details["log_truncated"] is True
    kept = run.log.lines()
    assert sum(len(ln.text.encode()) + 1 for ln in kept) <= cap  # bounded, whatever the output
    numbers = [int(t) for t in run.texts("stdout")]
    assert numbers[0] == 1
    assert numbers[-1] == total
    # head: 1..k, tail: ..total, both contiguous
    split = next(i for i, n in enumerate(numbers) if n != i + 1)
    assert numbers[split:] == list(range(numbers[split], total + 1))

    match = re.search(r"log cut: (\d+) lines \((\d+) bytes\) left out", run.log.text())
    assert match is not None
    assert int(match.group(1)) == max(ln.seq for ln in kept) - len(kept)
    assert int(match.group(1)) == numbers[split] - numbers[split - 1] - 1
    # the sink still saw every line
    assert sum(1 for ln in run.seen if ln.stream == "stdout") == total


# -- interpreters and environment ------------------------------------------------------------


def test_environment_is_clean_and_the_agent_env_does_not_leak(
    tmp_path: Path, executor: ShellExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIANGONG_AGENT_ONLY", "agent-private-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-cloud-key")
    run = Run(
        tmp_path,
        """\
        import json, os, sys
        with open(os.path.join(os.environ["TIANGONG_WORKDIR"], "seen.json"), "w") as f:
            json.dump({"env": dict(os.environ), "cwd": os.getcwd()}, f)
        """,
        shell_step(interpreter="python", env={"FOO": "bar baz", "EMPTY": ""}, secrets=["db-pw"]),
        secrets={"db-pw": "pw-value-123"},
    )
    outcome = run.execute(executor)
    assert outcome.status == "succeeded", run.log.text()

    seen = json.loads(run.read("seen.json"))
    assert seen["cwd"] == str(run.workdir)
    assert seen["env"] == {
        "PATH": DEFAULT_PATH,
        "HOME": str(run.workdir),
        "LANG": "C.UTF-8",
        "TIANGONG_BUNDLE_ID": "bundle-0042",
        "TIANGONG_STEP_NAME": STEP_NAME,
        "TIANGONG_STEP_INDEX": "3",
        "TIANGONG_WORKDIR": str(run.workdir),
        "FOO": "bar baz",
        "EMPTY": "",
        "TIANGONG_SECRET_DB_PW": "pw-value-123",
    }


def test_step_env_may_set_path(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(
        tmp_path,
        'echo "$PATH"\n',
        shell_step(env={"PATH": "/usr/bin:/bin:/opt/tools/bin"}),
    )
    assert run.execute(executor).status == "succeeded"
    assert run.texts("stdout") == ["/usr/bin:/bin:/opt/tools/bin"]


@pytest.fixture
def agent_stdin_with_data() -> Iterator[None]:
    """Make this process's own fd 0 a pipe holding a line, as if the agent had a stdin."""
    saved = os.dup(0)
    read_end, write_end = os.pipe()
    os.write(write_end, b"agent-stdin-data\n")
    os.close(write_end)
    os.dup2(read_end, 0)
    os.close(read_end)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


@pytest.mark.usefixtures("agent_stdin_with_data")
def test_stdin_is_dev_null_by_default(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, "readlink /proc/self/fd/0\ncat\necho end\n")
    outcome = run.execute(executor)
    assert outcome.status == "succeeded"
    assert run.texts("stdout") == ["/dev/null", "end"]


def test_python_interpreter_is_the_agents_own(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(
        tmp_path,
        """\
        import sys
        print(sys.executable)
        print(sys.argv[1:])
        """,
        shell_step(interpreter="python", args=["one"]),
    )
    outcome = run.execute(executor)
    assert outcome.status == "succeeded", run.log.text()
    assert outcome.details["interpreter"] == "python"
    assert run.texts("stdout") == [sys.executable, "['one']"]


@pytest.mark.parametrize("interpreter", ["sh", "bash"])
def test_sh_and_bash_interpreters(
    tmp_path: Path, executor: ShellExecutor, interpreter: str
) -> None:
    run = Run(
        tmp_path,
        'readlink /proc/$$/exe\necho "arg=$1 script=$0"\n',
        shell_step(interpreter=interpreter, args=["x y"]),
    )
    outcome = run.execute(executor)
    assert outcome.status == "succeeded", run.log.text()
    expected = os.path.realpath(shutil.which(interpreter, path=DEFAULT_PATH) or "")
    exe, args_line = run.texts("stdout")
    assert exe == expected
    assert args_line == f"arg=x y script={run.ctx.files[SCRIPT]}"


def test_interpreter_is_the_default_bash(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, 'echo "$BASH_VERSION" | cut -c1\n')
    assert run.execute(executor).status == "succeeded"
    assert run.texts("stdout")[0].isdigit()


def test_missing_interpreter_fails_clearly_and_runs_nothing(
    tmp_path: Path, executor: ShellExecutor
) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    run = Run(
        tmp_path,
        "touch ran\n",
        shell_step(interpreter="bash", env={"PATH": str(empty_bin)}),
    )
    outcome = run.execute(executor)
    assert outcome.status == "failed"
    assert outcome.summary == f"interpreter 'bash' not found on PATH {empty_bin}"
    assert outcome.exit_code is None
    assert outcome.summary in run.log.text()
    assert not (run.workdir / "ran").exists()


def test_missing_script_payload_fails_clearly(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, "touch ran\n")
    step = shell_step(script="scripts/other.sh")
    executor.validate(step)
    ctx = dataclasses.replace(run.ctx, step=step)
    outcome = executor.run(ctx)
    assert outcome.status == "failed"
    assert "'scripts/other.sh' is not among the staged payloads" in outcome.summary
    assert not (run.workdir / "ran").exists()


# -- secrets ---------------------------------------------------------------------------------

SECRETS = {
    "db-password": "s3cr3t-db-pa55 $(touch pwned) 'quoted'",
    "api token": "tok-ABCDEF-123456",
    "tls-key": "-----BEGIN KEY-----\nline-one-AAAAAA\nline-two-BBBBBB\n-----END KEY-----",
}
SECRET_PIECES = [
    *SECRETS.values(),
    "s3cr3t-db-pa55",
    "tok-ABCDEF",
    "line-one-AAAAAA",
    "line-two-BBBBBB",
]


def assert_no_secret_anywhere(run: Run, outcome: StepOutcome) -> None:
    places = {
        "sink": "\n".join(ln.text for ln in run.seen),
        "log": run.log.text(),
        "summary": outcome.summary,
        "details": json.dumps(outcome.details),
        "outcome": repr(outcome),
    }
    for where, text in places.items():
        for piece in SECRET_PIECES:
            assert piece not in text, f"secret piece {piece!r} leaked into the {where}"


def test_secrets_via_env_are_delivered_and_never_logged(
    tmp_path: Path, executor: ShellExecutor
) -> None:
    run = Run(
        tmp_path,
        """\
        printf '%s' "$TIANGONG_SECRET_DB_PASSWORD" > got-db
        printf '%s' "$TIANGONG_SECRET_API_TOKEN" > got-api
        printf '%s' "$TIANGONG_SECRET_TLS_KEY" > got-tls
        tr '\\0' '\\n' < /proc/$$/cmdline > cmdline
        echo "db password is $TIANGONG_SECRET_DB_PASSWORD"
        echo "token: $TIANGONG_SECRET_API_TOKEN" >&2
        echo "key: $TIANGONG_SECRET_TLS_KEY"
        printf '%s' "$TIANGONG_SECRET_API_TOKEN"
        """,
        shell_step(secrets=list(SECRETS)),
        secrets=SECRETS,
    )
    outcome = run.execute(executor)

    assert outcome.status == "succeeded", run.log.text()
    assert run.read("got-db") == SECRETS["db-password"]
    assert run.read("got-api") == SECRETS["api token"]
    assert run.read("got-tls") == SECRETS["tls-key"]
    assert not (run.workdir / "pwned").exists()
    # argv is interpreter, script, args: no secret
    assert run.read("cmdline").split("\n")[:2] == [
        shutil.which("bash", path=DEFAULT_PATH),
        str(run.ctx.files[SCRIPT]),
    ]
    for piece in SECRET_PIECES:
        assert piece not in run.read("cmdline")
    assert f"db password is {REDACTED}" in run.texts("stdout")
    assert f"token: {REDACTED}" in run.texts("stderr")
    assert run.texts("stdout")[-1] == REDACTED  # the unterminated last line too
    assert_no_secret_anywhere(run, outcome)


def test_secrets_via_stdin_are_delivered_as_json_and_not_in_env(
    tmp_path: Path, executor: ShellExecutor
) -> None:
    run = Run(
        tmp_path,
        """\
        import json, os, sys
        data = json.load(sys.stdin)
        rest = sys.stdin.read()
        wd = os.environ["TIANGONG_WORKDIR"]
        with open(os.path.join(wd, "got.json"), "w") as f:
            json.dump({"data": data, "rest": rest, "env": sorted(os.environ)}, f)
        with open("/proc/self/cmdline", "rb") as src, open(os.path.join(wd, "cmdline"), "wb") as f:
            f.write(src.read())
        print("db is", data["db-password"])
        print("token is", data["api token"], file=sys.stderr)
        print(data["tls-key"])
        """,
        shell_step(interpreter="python", secrets=list(SECRETS), secrets_via="stdin"),
        secrets=SECRETS,
    )
    outcome = run.execute(executor)

    assert outcome.status == "succeeded", run.log.text()
    got = json.loads(run.read("got.json"))
    assert got["data"] == SECRETS
    assert got["rest"] == ""  # EOF after the JSON object
    assert not [name for name in got["env"] if name.startswith("TIANGONG_SECRET_")]
    cmdline = (run.workdir / "cmdline").read_bytes().decode()
    assert cmdline.split("\0")[:2] == [sys.executable, str(run.ctx.files[SCRIPT])]
    for piece in SECRET_PIECES:
        assert piece not in cmdline
    assert f"db is {REDACTED}" in run.texts("stdout")
    assert f"token is {REDACTED}" in run.texts("stderr")
    assert_no_secret_anywhere(run, outcome)


def test_stdin_secrets_larger_than_a_pipe_and_never_read(
    tmp_path: Path, executor: ShellExecutor
) -> None:
    big = "k" * (512 * 1024)
    run = Run(
        tmp_path,
        "echo not reading stdin\n",
        shell_step(secrets=["big"], secrets_via="stdin"),
        secrets={"big": big},
    )
    outcome = run.execute(executor)
    assert outcome.status == "succeeded"
    assert run.texts("stdout") == ["not reading stdin"]


def test_secrets_via_stdin_without_secrets_sends_an_empty_object(
    tmp_path: Path, executor: ShellExecutor
) -> None:
    run = Run(tmp_path, "cat; echo\n", shell_step(secrets_via="stdin"))
    assert run.execute(executor).status == "succeeded"
    assert run.texts("stdout") == ["{}"]


def test_secret_not_provided_fails_before_running(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, "touch ran\n", shell_step(secrets=["db-password"]), secrets={})
    outcome = run.execute(executor)
    assert outcome.status == "failed"
    assert outcome.summary == "secrets not provided to this step: db-password"
    assert not (run.workdir / "ran").exists()


# -- timeout, cancel and process groups ------------------------------------------------------

GROUP_SCRIPT = """\
cd "$TIANGONG_WORKDIR"
sleep 1000 & echo $! > child.pid
# a grandchild whose parent exits at once, so it is orphaned in our group; it ignores SIGTERM
bash -c 'trap "" TERM; sleep 1000 & echo $! > orphan.pid'
# a grandchild under a waiting child
bash -c 'sleep 1000 & echo $! > grandchild.pid; wait' & echo $! > waiter.pid
until [ -s grandchild.pid ]; do sleep 0.01; done
echo ready
wait
"""
GROUP_PIDS = ("child.pid", "orphan.pid", "waiter.pid", "grandchild.pid")


def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, executor: ShellExecutor, stray_pids: list[int]
) -> None:
    run = Run(tmp_path, GROUP_SCRIPT, shell_step(timeout_s=1))
    outcome = run.execute(executor)
    assert "ready" in run.texts("stdout"), "the script did not get going within its timeout"
    stray_pids.extend(run.pids(*GROUP_PIDS))

    assert outcome.status == "failed"
    assert outcome.summary == "killed after timeout of 1 s"
    assert outcome.details["timed_out"] is True
    wait_until(lambda: not any(map(pid_running, stray_pids)), "the step's processes to die")
    # the orphan ignored SIGTERM, so the executor had to escalate
    assert any("sending SIGKILL" in t for t in run.texts("info"))


def test_cancel_stops_the_run(
    tmp_path: Path, executor: ShellExecutor, stray_pids: list[int]
) -> None:
    def cancel_when_ready(line: LogLine, run: Run) -> None:
        if line.text == "ready":
            run.cancel.set()

    run = Run(tmp_path, GROUP_SCRIPT, shell_step(timeout_s=3600), on_line=cancel_when_ready)
    outcome = run.execute(executor)
    stray_pids.extend(run.pids(*GROUP_PIDS))

    assert outcome.status == "failed"
    assert outcome.summary == "cancelled"
    assert outcome.details["cancelled"] is True
    wait_until(lambda: not any(map(pid_running, stray_pids)), "the step's processes to die")


def test_cancel_before_start_runs_nothing(tmp_path: Path, executor: ShellExecutor) -> None:
    run = Run(tmp_path, "touch ran\n")
    run.cancel.set()
    outcome = run.execute(executor)
    assert outcome.status == "failed"
    assert outcome.summary.startswith("cancelled")
    assert not (run.workdir / "ran").exists()


def test_run_deadline_earlier_than_step_timeout(
    tmp_path: Path, executor: ShellExecutor, stray_pids: list[int]
) -> None:
    run = Run(
        tmp_path,
        'sleep 1000 & echo $! > "$TIANGONG_WORKDIR/child.pid"; wait\n',
        shell_step(timeout_s=3600),
        deadline_s=1.0,
    )
    outcome = run.execute(executor)
    stray_pids.extend(run.pids("child.pid"))
    assert outcome.status == "failed"
    assert outcome.summary.startswith("killed at the run's deadline")
    wait_until(lambda: not any(map(pid_running, stray_pids)), "the step's processes to die")


def test_processes_left_behind_by_a_finished_script_are_ended(
    tmp_path: Path, executor: ShellExecutor, stray_pids: list[int]
) -> None:
    run = Run(tmp_path, 'sleep 1000 & echo $! > "$TIANGONG_WORKDIR/child.pid"\necho done\n')
    outcome = run.execute(executor)
    stray_pids.extend(run.pids("child.pid"))

    assert outcome.status == "succeeded"
    assert run.texts("stdout") == ["done"]
    assert any("left processes running" in t for t in run.texts("info"))
    wait_until(lambda: not pid_running(stray_pids[0]), "the left-behind process to die")


def test_a_slow_log_still_gets_every_line_after_the_script_exits(tmp_path: Path) -> None:
    """A loaded machine drains the pipe slowly after the script has exited: the executor keeps
    waiting while the reader makes progress, so no line is lost (it gave up after
    ``reader_join_s`` before, and a busy CI machine lost the tail of the output)."""
    pause = threading.Event()

    def slow(line: LogLine, run: Run) -> None:
        pause.wait(0.002)  # a slow log sink: 500 lines take at least 1 s, the bound is 0.05 s

    run = Run(tmp_path, "seq 1 500\n", on_line=slow)
    outcome = run.execute(ShellExecutor(kill_grace_s=0.5, reader_join_s=0.05))

    assert outcome.status == "succeeded"
    assert [int(t) for t in run.texts("stdout")] == list(range(1, 501))
    assert not any("stopped waiting" in t for t in run.texts("info"))


def test_a_reader_the_machine_has_not_let_run_still_gets_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine at load 30 a reader thread may not run at all for longer than
    ``reader_join_s`` once the script has exited, so it shows no progress (CI kept none of
    500 lines). A reader with lines in hand or bytes in its pipe is waited for: here the log
    sink holds the first line until the executor has looked three times."""
    looked = threading.Semaphore(0)
    real_behind = shell_module._Pump.behind

    def counted(self: Any) -> bool:
        answer = real_behind(self)
        looked.release()
        return answer

    monkeypatch.setattr(shell_module._Pump, "behind", counted)
    held: list[str] = []

    def stalled(line: LogLine, run: Run) -> None:
        if line.stream == "stdout" and not held:
            held.append(line.text)
            for _ in range(3):
                assert looked.acquire(timeout=60), "the executor stopped waiting for the reader"

    run = Run(tmp_path, "seq 1 500\n", on_line=stalled)
    outcome = run.execute(ShellExecutor(kill_grace_s=0.5, reader_join_s=0.001))

    assert outcome.status == "succeeded"
    assert [int(t) for t in run.texts("stdout")] == list(range(1, 501))
    assert not any("stopped waiting" in t for t in run.texts("info"))


def test_process_escaping_the_group_does_not_hang_the_agent(
    tmp_path: Path, executor: ShellExecutor, stray_pids: list[int]
) -> None:
    run = Run(
        tmp_path,
        """\
        cd "$TIANGONG_WORKDIR"
        setsid bash -c 'echo $$ > escaped.pid; exec sleep 1000' &
        until [ -s escaped.pid ]; do sleep 0.01; done
        echo done
        """,
    )
    try:
        outcome = run.execute(executor)
    finally:
        if (run.workdir / "escaped.pid").exists():
            stray_pids.extend(run.pids("escaped.pid"))

    assert outcome.status == "succeeded"
    assert run.texts("stdout") == ["done"]
    assert any("stopped waiting for the script's output" in t for t in run.texts("info"))
    # output the escaped process writes later is not logged after the step ended
    count = len(run.seen)
    kill_quietly(stray_pids)
    wait_until(lambda: not pid_running(stray_pids[0]), "the escaped process to die")
    assert len(run.seen) == count


# -- LineSplitter (sans-I/O) -----------------------------------------------------------------


def test_splitter_joins_chunks_and_splits_lines() -> None:
    s = LineSplitter(64)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\nde") == [("abc", 0)]
    assert s.feed(b"f\n\n") == [("def", 0), ("", 0)]
    assert s.close() == []


def test_splitter_multibyte_character_split_across_chunks() -> None:
    data = "é€\n".encode()
    s = LineSplitter(64)
    lines = [line for i in range(len(data)) for line in s.feed(data[i : i + 1])]
    assert lines == [("é€", 0)]


def test_splitter_replaces_invalid_bytes() -> None:
    assert LineSplitter(64).feed(b"a\xffb\xc3\n") == [("a\ufffdb\ufffd", 0)]


def test_splitter_final_line_without_newline() -> None:
    s = LineSplitter(64)
    assert s.feed(b"one\ntwo") == [("one", 0)]
    assert s.close() == [("two", 0)]
    assert s.close() == []


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_splitter_cuts_long_lines_and_counts_the_rest(chunk: int) -> None:
    data = b"0123456789abc\nxy\n"
    s = LineSplitter(8)
    lines = [line for i in range(0, len(data), chunk) for line in s.feed(data[i : i + chunk])]
    assert lines == [("01234567", 5), ("xy", 0)]


def test_splitter_cut_inside_a_character_drops_the_whole_character() -> None:
    s = LineSplitter(5)
    assert s.feed("abcdézz\n".encode()) == [("abcd", 4)]


def test_splitter_holds_at_most_one_line_cap_of_a_huge_line() -> None:
    s = LineSplitter(1024)
    for _ in range(100):
        assert s.feed(b"z" * 100_000) == []
    assert s.close() == [("z" * 1024, 100 * 100_000 - 1024)]
