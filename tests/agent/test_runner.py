"""Runner: steps in order, journal first, stop on failure, secrets resolved before running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.journal import Journal
from agent.runner import Runner


def _config(home: Path, **kw: Any) -> AgentConfig:
    return AgentConfig(home=home, agent_id="a1", environment="env", hub_id="hub", labels={},
                       **kw)


def _setup(tmp_path: Path, steps: list[dict[str, Any]], scripts: dict[str, str],
           **kw: Any) -> tuple[Runner, Journal, dict[str, Path]]:
    files: dict[str, Path] = {}
    for name, body in scripts.items():
        p = tmp_path / "staged" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
        files[name] = p
    journal = Journal(tmp_path / "journal.sqlite")
    journal.accept_bundle(
        issuer="hub", root_envelope=b"r", root_version=1, sequence=1, time_floor=0,
        bundle_id="b1", envelope_sha256="e1", source="b1.tgb",
        manifest={"steps": steps}, staged_dir=str(tmp_path / "staged"), not_before=None,
        steps=[(s["name"], s["kind"]) for s in steps],
    )
    return Runner(_config(tmp_path / "home", **kw), journal), journal, files


def _shell(name: str, script: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "shell", "timeout_s": 30, "on_failure": "stop",
            "secrets": [], "script": script, "interpreter": "bash", "env": {},
            "secrets_via": "env", "args": [], **kw}


def test_steps_run_in_order_and_succeed(tmp_path: Path) -> None:
    steps = [_shell("one", "a.sh"), _shell("two", "b.sh")]
    runner, journal, files = _setup(tmp_path, steps, {"a.sh": "echo first > ../order\n",
                                                      "b.sh": "echo second\n"})
    out = runner.run("b1", {"steps": steps, "release": {}}, files)
    assert out.status == "succeeded", out.summary
    assert [r.state for r in out.steps] == ["succeeded", "succeeded"]
    assert "second" in out.steps[1].log
    assert [s.state for s in journal.steps("b1")] == ["succeeded", "succeeded"]
    assert journal.bundle("b1").state == "succeeded"  # type: ignore[union-attr]
    # The live log file holds the output too.
    assert "second" in Path(journal.steps("b1")[1].log_path or "").read_text()


def test_failure_stops_and_skips_the_rest(tmp_path: Path) -> None:
    steps = [_shell("bad", "a.sh"), _shell("never", "b.sh")]
    runner, _, files = _setup(tmp_path, steps, {"a.sh": "exit 3\n",
                                                      "b.sh": "touch ran\n"})
    out = runner.run("b1", {"steps": steps}, files)
    assert out.status == "failed"
    assert "step 1 (bad) failed" in out.summary
    assert [r.state for r in out.steps] == ["failed", "skipped"]
    assert out.steps[0].exit_code == 3
    assert not list((tmp_path / "home").rglob("ran"))


def test_continue_on_failure(tmp_path: Path) -> None:
    steps = [_shell("bad", "a.sh", on_failure="continue"), _shell("next", "b.sh")]
    runner, _, files = _setup(tmp_path, steps, {"a.sh": "exit 1\n", "b.sh": "true\n"})
    out = runner.run("b1", {"steps": steps}, files)
    assert [r.state for r in out.steps] == ["failed", "succeeded"]
    assert out.status == "failed"


def test_missing_secret_fails_before_running(tmp_path: Path) -> None:
    steps = [_shell("needs", "a.sh", secrets=["token"])]
    runner, _, files = _setup(tmp_path, steps, {"a.sh": "touch ran\n"})
    out = runner.run("b1", {"steps": steps}, files)
    assert out.status == "failed"
    assert "secret 'token' is not defined" in out.steps[0].summary
    assert not list((tmp_path / "home").rglob("ran"))


def test_secret_from_config_is_redacted(tmp_path: Path) -> None:
    steps = [_shell("s", "a.sh", secrets=["token"])]
    runner, _, files = _setup(tmp_path, steps, {"a.sh": 'echo "t=$TIANGONG_SECRET_TOKEN"\n'},
                              secrets={"token": "hunter2-very-secret"})
    out = runner.run("b1", {"steps": steps}, files)
    assert out.status == "succeeded", out.summary
    assert "hunter2-very-secret" not in out.steps[0].log
    assert "[REDACTED]" in out.steps[0].log
    log_file = next((tmp_path / "home" / "logs").rglob("*.log"))
    assert "hunter2-very-secret" not in log_file.read_text()


@pytest.mark.parametrize("bad", [{"kind": "nope"}, {"interpreter": "zsh"}])
def test_invalid_step_fails_bundle_before_anything_runs(tmp_path: Path,
                                                        bad: dict[str, Any]) -> None:
    steps = [_shell("first", "a.sh"), _shell("broken", "a.sh", **bad)]
    runner, _, files = _setup(tmp_path, steps, {"a.sh": "touch ran\n"})
    out = runner.run("b1", {"steps": steps}, files)
    assert out.status == "failed"
    assert [r.state for r in out.steps] == ["skipped", "skipped"]
    assert not list((tmp_path / "home").rglob("ran"))
