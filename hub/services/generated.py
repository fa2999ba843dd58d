"""Releases the hub writes itself (rollback releases, ad-hoc runs): one ``release.toml``
writer and one path into :func:`hub.services.releases.create_release`, so a generated
release is loaded, validated and audited exactly like one an author uploaded."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hub.db import Release
from hub.errors import ValidationError
from hub.services.context import ServiceContext
from hub.services.releases import create_release

__all__ = ["create_generated_release", "release_toml"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def release_toml(product: str, version: str, description: str,
                 steps: Sequence[Mapping[str, Any]]) -> str:
    """The text of a ``release.toml`` (docs/release-format.md §2) with these steps."""
    text = (f"format = 1\n\n[release]\nproduct = {_toml_value(product)}\n"
            f"version = {_toml_value(version)}\ndescription = {_toml_value(description)}\n")
    for step in steps:
        text += "\n[[steps]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in step.items())
    return text


def create_generated_release(ctx: ServiceContext, product: str, version: str,
                             description: str, steps: Sequence[Mapping[str, Any]],
                             files: Mapping[str, Path], *, source: str) -> Release:
    """Create (not submit) a release from generated steps and ``files`` (release name ->
    file to copy) in a private temporary directory, removed afterwards. A refusal names
    ``source`` (what the operator asked for) instead of the temporary directory."""
    work = Path(tempfile.mkdtemp(prefix=".generated-"))
    try:
        (work / "release.toml").write_text(release_toml(product, version, description, steps),
                                           encoding="utf-8")
        for name, path in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, work / name)
        try:
            return create_release(ctx, work, generated=True)
        except ValidationError as exc:
            raise ValidationError(str(exc).replace(str(work / "release.toml"), source)
                                  .replace(str(work), source)) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
