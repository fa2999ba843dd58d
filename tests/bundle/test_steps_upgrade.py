"""The agent-upgrade step kind in release.toml: its fields, defaults and refusals."""

from __future__ import annotations

from typing import Any

import pytest

from bundle.errors import ReleaseFormatError
from bundle.steps import (
    DEFAULT_CONFIRM_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    normalize_step,
    referenced_files,
    validate_step,
)

FILES = {"tiangong-0.2.0-py3-none-any.whl", "scripts/x.sh"}
RAW = {"name": "upgrade", "kind": "agent-upgrade", "wheel": "tiangong-0.2.0-py3-none-any.whl"}


def test_an_upgrade_step_normalizes_with_its_defaults() -> None:
    step = normalize_step(RAW, 0, FILES)

    assert step == {"name": "upgrade", "kind": "agent-upgrade", "timeout_s": DEFAULT_TIMEOUT_S,
                    "on_failure": "stop", "secrets": [],
                    "wheel": "tiangong-0.2.0-py3-none-any.whl",
                    "confirm_timeout_s": DEFAULT_CONFIRM_TIMEOUT_S}
    validate_step(step, 0)
    assert referenced_files(step) == ["tiangong-0.2.0-py3-none-any.whl"]
    assert normalize_step({**RAW, "confirm_timeout": "5m"}, 0, FILES)["confirm_timeout_s"] == 300


@pytest.mark.parametrize(("changes", "words"), [
    ({"wheel": None}, ["step 1 ('upgrade')", "field wheel", "is missing"]),
    ({"wheel": "tiangong-9.whl"}, ["field wheel", "tiangong-9.whl"]),
    ({"confirm_timeout": "soon"}, ["field confirm_timeout"]),
    ({"script": "scripts/x.sh"}, ["'script' is a field of sql, shell and undo steps"]),
])
def test_a_bad_upgrade_step_is_refused_naming_the_field(changes: dict[str, Any],
                                                       words: list[str]) -> None:
    raw = {k: v for k, v in {**RAW, **changes}.items() if v is not None}

    with pytest.raises(ReleaseFormatError) as info:
        normalize_step(raw, 0, FILES)

    for word in words:
        assert word in str(info.value)


def test_a_normalized_upgrade_step_needs_seconds() -> None:
    step = {**normalize_step(RAW, 0, FILES), "confirm_timeout_s": "2m"}

    with pytest.raises(ReleaseFormatError, match="field confirm_timeout_s"):
        validate_step(step, 0)
