"""The ``agent-upgrade`` step: install the tiangong wheel a bundle carries beside the running
version, check that it imports, switch ``versions/current`` to it and ask the agent to restart
into it after this bundle (``agent.upgrade``; docs/agent.md, "Upgrading the agent").

The step needs the agent to run under ``tiangong agent supervise`` (which starts the new
version and rolls it back if it is not up within ``confirm_timeout``); without it the step
fails and changes nothing. Its result says which version ran the step, which one it switched
to, and that the confirmation follows; ``agent status`` says which version runs now.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import tiangong
from agent import upgrade
from agent.executors.base import StepContext, StepOutcome
from agent.executors.errors import StepSpecError
from agent.faults import crash_point
from bundle.errors import ReleaseFormatError
from bundle.steps import validate_step

__all__ = ["AgentUpgradeExecutor", "wheel_name_version"]

MAX_METADATA_BYTES = 1024 * 1024  # bytes of a wheel's METADATA read at most
#: What a version may look like (PEP 440 versions begin with a digit): it names
#: ``versions/<V>`` in the agent home, so never a path, a hidden name or the layout's own.
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+!_-]{0,63}")
_CHECK = "import tiangong, agent.cli, agent.service, bundle.reader; print(tiangong.__version__)"


def wheel_name_version(path: Path) -> tuple[str, str]:
    """The distribution name (lower case) and version a wheel's METADATA declares.

    Raises:
        ValueError: not a readable wheel (the message says why).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist()
                     if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise ValueError(f"it holds {len(names)} .dist-info/METADATA files, not one")
            info = zf.getinfo(names[0])
            if info.file_size > MAX_METADATA_BYTES:
                raise ValueError(f"its METADATA is {info.file_size} bytes")
            text = zf.read(info).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"it is not a zip archive ({exc})") from exc
    meta = email.parser.HeaderParser().parsestr(text)
    name, version = meta.get("Name"), meta.get("Version")
    if not name or not version:
        raise ValueError("its METADATA names no Name or no Version")
    return name.strip().lower().replace("_", "-"), version.strip()


class AgentUpgradeExecutor:
    kind: ClassVar[str] = "agent-upgrade"

    def validate(self, step: Mapping[str, Any]) -> None:
        """Raises StepSpecError naming the field (bundle.steps' rules)."""
        try:
            validate_step(step)
        except ReleaseFormatError as exc:
            raise StepSpecError(str(exc)) from exc

    def run(self, ctx: StepContext) -> StepOutcome:
        home_text = os.environ.get(upgrade.SUPERVISED_ENV)
        if not home_text:
            return StepOutcome("failed", "this agent does not run under `tiangong agent "
                               "supervise`, which an agent-upgrade step needs (to start the "
                               "new version and roll it back); nothing was changed")
        home = Path(home_text)
        wheel_name = str(ctx.step["wheel"])
        wheel = ctx.files[wheel_name]
        try:
            name, version = wheel_name_version(wheel)
        except ValueError as exc:
            return StepOutcome("failed", f"{wheel_name} is not a wheel: {exc}; nothing was "
                               "changed")
        if not wheel_name.endswith(".whl"):
            return StepOutcome("failed", f"{wheel_name} is not named like a wheel (*.whl); "
                               "nothing was changed")
        if name != "tiangong":
            return StepOutcome("failed", f"{wheel_name} is a wheel of {name!r}, not of "
                               "'tiangong'; nothing was changed")
        if not _VERSION.fullmatch(version) or ".." in version:
            return StepOutcome("failed", f"{wheel_name} declares version {version[:80]!r}, "
                               "which is not a version (a digit, then at most 63 letters, "
                               "digits and . + ! _ -); it would name the directory it is "
                               "installed in; nothing was changed")
        running = tiangong.__version__
        details = {"from": running, "to": version, "running": running}
        if version == running:
            ctx.log.write(f"tiangong {version} already runs here; nothing to do", "tiangong")
            return StepOutcome("succeeded", f"tiangong {version} already runs; nothing changed",
                               details={**details, "state": "unchanged"})
        versions = upgrade.versions_dir(home)
        target = versions / version
        if upgrade.current_version(home) == version:
            return StepOutcome("failed", f"tiangong {version} is already switched to and waits "
                               "for a restart; nothing was changed")
        staging = versions / f".{version}.installing"
        try:
            # pip takes a wheel by its file name (the staged copy is named by its index).
            named = ctx.workdir / Path(wheel_name).name
            shutil.copyfile(wheel, named)
            versions.mkdir(mode=0o700, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            problem = self._install(ctx, named, staging, version)
            if problem is not None:
                shutil.rmtree(staging, ignore_errors=True)
                return StepOutcome("failed", f"{problem}; tiangong {running} keeps running, "
                                   "nothing was switched", details={**details,
                                                                    "state": "not installed"})
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
            crash_point("upgrade-installed")
            upgrade.switch(home, version, running=running,
                           confirm_timeout_s=int(ctx.step["confirm_timeout_s"]),
                           bundle_id=ctx.bundle_id)
        except (OSError, upgrade.UpgradeError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            return StepOutcome("failed", f"cannot install tiangong {version} in {versions}: "
                               f"{exc}; tiangong {running} keeps running",
                               details={**details, "state": "not installed"})
        upgrade.request_restart()
        timeout = int(ctx.step["confirm_timeout_s"])
        summary = (f"tiangong {version} installed beside {running} and switched to; tiangong "
                   f"{running} ran this step, the agent restarts into {version} after this "
                   f"bundle and goes back to {running} if {version} is not up within "
                   f"{timeout} s (agent status shows which runs)")
        ctx.log.write(summary, "tiangong")
        return StepOutcome("succeeded", summary, details={**details, "state": "switched"})

    def _install(self, ctx: StepContext, wheel: Path, staging: Path,
                 version: str) -> str | None:
        """Install the wheel into staging/lib and import it there; None if it works."""
        lib = staging / "lib"
        pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-input",
               "--disable-pip-version-check", "--no-cache-dir", "--target", str(lib), str(wheel)]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PIP_") and k != "PYTHONPATH"}
        for argv, what in ((pip, "pip install"),
                           ([sys.executable, "-P", "-c", _CHECK], "the import check")):
            run_env = env if argv is pip else {**env, "PYTHONPATH": str(lib)}
            try:
                proc = subprocess.run(argv, env=run_env, capture_output=True, text=True,
                                      timeout=max(1.0, ctx.remaining()), check=False,
                                      stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return f"{what} of tiangong {version} did not finish before the step's deadline"
            for line in (proc.stdout + proc.stderr).splitlines()[-40:]:
                ctx.log.write(line, "stdout")
            if proc.returncode != 0:
                return f"{what} of tiangong {version} failed (exit {proc.returncode})"
            if argv is not pip and proc.stdout.strip() != version:
                return (f"the installed tiangong reports version {proc.stdout.strip()!r}, "
                        f"not {version}")
        return None
