"""Fixtures of the signing tests (helpers: tests/signing/helpers.py and clitools.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import signing.cli
from signing.keyfile import KDF_PROFILES
from signing.roots import TrustedRoot
from tests.signing.clitools import KeyDir, check, init_args, run
from tests.signing.helpers import FAST_KDF, NOW, Ring, root_doc, signed_root


@pytest.fixture
def ring() -> Ring:
    return Ring()


@pytest.fixture
def trusted_v1(ring: Ring) -> TrustedRoot:
    doc = root_doc(ring, root=("root1", "root2"), thresholds=(2, 1, 1),
                   release=("release1", "release2"), audit=("audit1",))
    return TrustedRoot.pin(signed_root(doc, ring, ["root1", "root2"]), NOW)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --- CLI fixtures ------------------------------------------------------------------------


@pytest.fixture
def fast_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every --kdf-profile costs the minimum (one test keeps the real ``interactive``)."""
    monkeypatch.setattr(signing.cli, "KDF_PROFILES", dict.fromkeys(KDF_PROFILES, FAST_KDF))


@pytest.fixture(scope="module")
def key_template(tmp_path_factory: pytest.TempPathFactory) -> KeyDir:
    """Made once per module (each write fsyncs the file and its directory)."""
    kd = KeyDir(tmp_path_factory.mktemp("keys"))
    for name, role in [("root1", "root"), ("root2", "root"), ("root3", "root"),
                       ("release1", "release"), ("release2", "release"), ("audit1", "audit")]:
        kd.make(name, role)
    return kd


@pytest.fixture
def kd(tmp_path: Path, key_template: KeyDir) -> KeyDir:
    """A private copy of the template key files, for tests that change or add files."""
    for src in key_template.path.iterdir():
        shutil.copy2(src, tmp_path / src.name)
    kd = KeyDir(tmp_path)
    kd.ids = dict(key_template.ids)
    return kd


@pytest.fixture
def root_v1(kd: KeyDir) -> Path:
    check(run(init_args(kd)), 0)
    return kd.path / "root.json"
