"""The agent-upgrade executor's refusals, each with nothing changed in the agent home (the
successful upgrade, rollback and power cuts run with real processes in
tests/e2e/test_agent_upgrade.py)."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import pytest

import tiangong
from agent import upgrade
from agent.executors import get_executor
from agent.executors.base import StepContext, StepLog
from agent.executors.errors import StepSpecError
from agent.executors.upgrade import wheel_name_version

STEP = {"name": "upgrade", "kind": "agent-upgrade", "timeout_s": 60, "on_failure": "stop",
        "secrets": [], "wheel": "tiangong-9.9.9-py3-none-any.whl", "confirm_timeout_s": 30}


def make_wheel(path: Path, name: str, version: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return path


def context(tmp: Path, wheel: Path, step: dict[str, object] | None = None) -> StepContext:
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    spec = step or STEP
    return StepContext(bundle_id="b-1", release={}, index=0, step=spec,
                       files={str(spec["wheel"]): wheel}, workdir=work, connection=None,
                       secrets={}, log=StepLog(), deadline=time.monotonic() + 60,
                       cancel=threading.Event())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv(upgrade.SUPERVISED_ENV, str(home))
    return home


def test_without_the_supervisor_the_step_fails_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(upgrade.SUPERVISED_ENV, raising=False)
    wheel = make_wheel(tmp_path / "staged-1", "tiangong", "9.9.9")

    out = get_executor("agent-upgrade").run(context(tmp_path, wheel))

    assert out.status == "failed"
    assert "does not run under `tiangong agent supervise`" in out.summary
    assert "nothing was changed" in out.summary
    assert not upgrade.restart_requested()
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: make_wheel(p, "requests", "9.9.9"), "is a wheel of 'requests', not of 'tiangong'"),
    (lambda p: p.write_bytes(b"not a zip") and p, "is not a wheel: it is not a zip archive"),
    (lambda p: make_wheel(p, "tiangong", ""), "names no Name or no Version"),
])
def test_a_wheel_that_is_not_tiangong_is_refused_and_nothing_changes(
    tmp_path: Path, home: Path, make: object, words: str
) -> None:
    wheel = make(tmp_path / "staged-1")  # type: ignore[operator]

    out = get_executor("agent-upgrade").run(context(tmp_path, wheel))

    assert out.status == "failed"
    assert words in out.summary and "nothing was changed" in out.summary
    assert list(home.iterdir()) == []  # no versions/, no record
    assert not upgrade.restart_requested()


def _wheel_declaring(path: Path, version: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tiangong-1.0.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: tiangong\nVersion: {version}\n")
    return path


@pytest.mark.parametrize("version", ["../../../outside", "current", "previous", ".hidden",
                                     "1.0 beta", "upgrade.json"])
def test_a_version_that_is_not_a_version_is_refused_and_nothing_changes(
    tmp_path: Path, home: Path, version: str
) -> None:
    """The version a wheel's METADATA declares names the directory it is installed in
    (versions/<V>) and the link the supervisor follows: a path, one of the layout's own
    names or text that is no version would install outside the agent's home or over the
    layout. Refused before anything is written."""
    wheel = _wheel_declaring(tmp_path / "staged-1", version)

    out = get_executor("agent-upgrade").run(context(tmp_path, wheel))

    assert out.status == "failed", out.summary
    assert "is not a version" in out.summary and "nothing was changed" in out.summary
    assert list(home.iterdir()) == []
    assert not (tmp_path / "outside").exists()
    assert not upgrade.restart_requested()


def test_the_running_version_is_not_installed_again(tmp_path: Path, home: Path) -> None:
    wheel = make_wheel(tmp_path / "staged-1", "tiangong", tiangong.__version__)
    step = {**STEP, "wheel": f"tiangong-{tiangong.__version__}-py3-none-any.whl"}

    out = get_executor("agent-upgrade").run(context(tmp_path, wheel, step))

    assert out.status == "succeeded"
    assert out.details["state"] == "unchanged"
    assert list(home.iterdir()) == []
    assert not upgrade.restart_requested()


def test_a_wheel_whose_code_does_not_import_is_not_switched_to(
    tmp_path: Path, home: Path
) -> None:
    wheel = make_wheel(tmp_path / "tiangong-9.9.9-py3-none-any.whl", "tiangong", "9.9.9")
    with zipfile.ZipFile(wheel, "a") as zf:  # a wheel pip installs, whose package is broken
        zf.writestr("tiangong/__init__.py", "raise ImportError('broken build')\n")
        zf.writestr("tiangong-9.9.9.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr("tiangong-9.9.9.dist-info/RECORD", "")

    ctx = context(tmp_path, wheel)
    out = get_executor("agent-upgrade").run(ctx)

    assert out.status == "failed"
    assert "the import check of tiangong 9.9.9 failed" in out.summary
    assert "nothing was switched" in out.summary
    assert "broken build" in ctx.log.text()
    assert upgrade.current_version(home) is None
    assert upgrade.read_state(home) is None
    assert sorted(p.name for p in (home / "versions").iterdir()) == []  # staging removed
    assert not upgrade.restart_requested()


def test_a_malformed_step_is_refused_before_anything_runs() -> None:
    with pytest.raises(StepSpecError, match="field confirm_timeout_s"):
        get_executor("agent-upgrade").validate({**STEP, "confirm_timeout_s": "soon"})


def test_wheel_name_version_reads_the_metadata(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w.whl", "Tian_Gong", "1.2.3")
    assert wheel_name_version(wheel) == ("tian-gong", "1.2.3")


def test_a_child_that_dies_of_the_stop_signal_after_a_stop_request_is_a_clean_stop() -> None:
    """systemctl stop signals the whole group: the agent may get the supervisor's SIGTERM
    again after its own clean stop, while its interpreter shuts down. That is status 0; the
    same death with no stop requested, or any other status, is passed on."""
    import signal

    assert upgrade.stop_status(-signal.SIGTERM, asked_to_stop=True) == 0
    assert upgrade.stop_status(-signal.SIGINT, asked_to_stop=True) == 0
    assert upgrade.stop_status(-signal.SIGTERM, asked_to_stop=False) == -signal.SIGTERM
    assert upgrade.stop_status(-signal.SIGKILL, asked_to_stop=True) == -signal.SIGKILL
    assert upgrade.stop_status(3, asked_to_stop=True) == 3
    assert upgrade.stop_status(0, asked_to_stop=False) == 0
