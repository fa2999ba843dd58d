"""Fixtures of the bundle container tests (helpers live in tests/bundle/kit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundle.kit import new_staging
from tests.fixtures.trust import TrustKit, make_trust


@pytest.fixture
def trust() -> TrustKit:
    return make_trust()


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return new_staging(tmp_path)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path
