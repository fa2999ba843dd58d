"""Guards for the generic import names (`hub`, `agent`, `web`, `bundle`, `signing`,
`tiangong`; docs/install.md, "Package names"): a folder of the same name in the working
directory cannot shadow them when an operator runs the `tiangong` console script, and no other
distribution installed beside Tiangong provides one of them."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

NAMES = ("agent", "bundle", "hub", "signing", "tiangong", "web")
TIANGONG = Path(sys.executable).parent / "tiangong"
CALL_MAIN = ("import sys; sys.argv = ['tiangong', '--version']; "
             "from tiangong.cli import main; main()")


@pytest.fixture
def shadowing_cwd(tmp_path: Path) -> Path:
    """A working directory holding a package named like each of ours; importing any of them
    writes a marker file and fails."""
    for name in NAMES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"open({str(tmp_path / 'SHADOWED')!r}, 'a').write({name!r} + '\\n')\n"
            f"raise ImportError('the {name} folder in the working directory was imported')\n")
    return tmp_path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONSAFEPATH") and not k.startswith("TIANGONG_")}


@pytest.mark.parametrize("argv", [["--version"], ["hub", "--help"], ["agent", "--help"],
                                  ["agent", "status", "--help"]])
def test_the_console_script_ignores_same_named_folders_in_the_working_directory(
    shadowing_cwd: Path, argv: list[str]
) -> None:
    proc = subprocess.run([str(TIANGONG), *argv], cwd=shadowing_cwd, env=_env(),
                          capture_output=True, text=True, timeout=60, check=False)

    assert proc.returncode == 0, proc.stderr
    assert not (shadowing_cwd / "SHADOWED").exists()


def test_python_dash_c_is_shadowed_unless_run_with_safe_path(shadowing_cwd: Path) -> None:
    """What docs/install.md says: `python -m ...` and `python -c ...` put the working directory
    first on sys.path; with `-P` (Python 3.11+) they do not."""
    shadowed = subprocess.run([sys.executable, "-c", CALL_MAIN], cwd=shadowing_cwd,
                              env=_env(), capture_output=True, text=True, timeout=60,
                              check=False)
    assert shadowed.returncode != 0
    assert "the tiangong folder in the working directory was imported" in shadowed.stderr
    (shadowing_cwd / "SHADOWED").unlink()

    safe = subprocess.run([sys.executable, "-P", "-c", CALL_MAIN],
                          cwd=shadowing_cwd, env=_env(), capture_output=True, text=True,
                          timeout=60, check=False)

    assert safe.returncode == 0, safe.stderr
    assert not (shadowing_cwd / "SHADOWED").exists()


def test_no_other_installed_distribution_provides_our_import_names() -> None:
    owners: dict[str, set[str]] = {name: set() for name in NAMES}
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        tops = set((dist.read_text("top_level.txt") or "").split())
        for entry in dist.files or ():
            parts = Path(str(entry)).parts
            if len(parts) > 1 and parts[1] == "__init__.py":
                tops.add(parts[0])
        for name in NAMES:
            if name in tops:
                owners[name].add(dist_name.lower())
    assert {name: sorted(found) for name, found in owners.items() if found - {"tiangong"}} == {}
