"""tests/kube/build.sh keys the binaries by their sources, and the fixture names the fix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import kubeserver
from tests.fixtures.kubeserver import BUILD_SCRIPT, KubeBinariesMissingError, kube_binaries

SOURCES = ("go.mod", "go.sum", "main.go")


@pytest.fixture
def kube_copy(tmp_path: Path) -> Path:
    """A copy of tests/kube (script and sources) sharing the real, already built bin/."""
    built = kube_binaries()[0].parent  # fails, telling to run make kube, if not built
    copy = tmp_path / "kube"
    (copy / "apiserver").mkdir(parents=True)
    shutil.copy(BUILD_SCRIPT, copy / "build.sh")
    for name in SOURCES:
        shutil.copy(BUILD_SCRIPT.parent / "apiserver" / name, copy / "apiserver" / name)
    (copy / "bin").symlink_to(built.parent)
    return copy


def path_of(copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(copy / "build.sh"), "--path"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_same_sources_find_the_built_binaries(kube_copy: Path) -> None:
    found = path_of(kube_copy)

    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == kube_binaries()[0].parent.resolve()


@pytest.mark.parametrize("changed", SOURCES)
def test_a_changed_source_needs_a_new_build(
    kube_copy: Path, changed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (kube_copy / "apiserver" / changed).open("a") as fh:
        fh.write("\n// changed\n" if changed != "go.sum" else "\n")

    found = path_of(kube_copy)

    assert found.returncode == 3
    assert "run 'make kube' (or 'make test', which builds them first)" in found.stderr
    built = sorted(p.name for p in kube_binaries()[0].parent.iterdir())
    assert built == ["apiserver", "kubectl"]  # asking removed nothing
    monkeypatch.setattr(kubeserver, "BUILD_SCRIPT", kube_copy / "build.sh")
    with pytest.raises(KubeBinariesMissingError, match=r"not built .*run 'make kube'"):
        kubeserver.kube_binaries()
