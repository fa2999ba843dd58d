"""tests/helm/build.sh keys the built helm by go.mod and go.sum, and names the fix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helm.chart import BUILD_SCRIPT, HelmMissingError, helm_path


@pytest.fixture
def helm_copy(tmp_path: Path) -> Path:
    """A copy of tests/helm (script and pins) sharing the real, already built bin/."""
    try:
        built = helm_path()
    except HelmMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    copy = tmp_path / "helm"
    (copy / "cli").mkdir(parents=True)
    shutil.copy(BUILD_SCRIPT, copy / "build.sh")
    for name in ("go.mod", "go.sum"):
        shutil.copy(BUILD_SCRIPT.parent / "cli" / name, copy / "cli" / name)
    (copy / "bin").symlink_to(built.parent.parent)
    return copy


def path_of(copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(copy / "build.sh"), "--path"], capture_output=True,
                          text=True, timeout=30, check=False)


def test_the_same_pins_find_the_built_helm(helm_copy: Path) -> None:
    found = path_of(helm_copy)

    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == helm_path().resolve()
    version = subprocess.run([found.stdout.strip(), "version", "--short"], capture_output=True,
                             text=True, timeout=30, check=True)
    pinned = (BUILD_SCRIPT.parent / "cli" / "go.mod").read_text()
    assert f"helm.sh/helm/v4 {version.stdout.strip()} " in pinned


@pytest.mark.parametrize("changed", ["go.mod", "go.sum"])
def test_a_changed_pin_needs_a_new_build(helm_copy: Path, changed: str) -> None:
    with (helm_copy / "cli" / changed).open("a") as fh:
        fh.write("\n")

    found = path_of(helm_copy)

    assert found.returncode == 3
    assert "run 'make helm' (or 'make test', which builds it first)" in found.stderr
    assert helm_path().is_file()  # asking removed nothing
