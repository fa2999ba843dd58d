"""Strict JSON: the only JSON Tiangong parses from outside (docs/bundle-format.md §3).

Rules: UTF-8 without BOM; a size cap checked before parsing; no duplicate object keys; no
floats, NaN or Infinity (integers only); nesting depth capped; integers within ±2**63; strings
(keys included) must be valid Unicode, so an escaped lone surrogate such as ``"\\ud800"`` is
refused (it could never be written back as UTF-8).
``dumps_canonical`` writes the one canonical form: sorted keys, no whitespace, UTF-8.

This module does not validate schemas; callers check fields after parsing.
"""

from __future__ import annotations

import json
from typing import Any

from signing.errors import StrictJSONError

__all__ = ["MAX_DEPTH", "dumps_canonical", "loads_strict"]

MAX_DEPTH = 32  # nesting levels
_INT_LIMIT = 2**63


def _reject_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not allowed")


def _reject_float(text: str) -> Any:
    raise StrictJSONError(f"non-integer number {text[:40]!r} is not allowed")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _check_str(text: str) -> None:
    try:
        text.encode("utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        # The message never quotes the string: it may be a secret (signing.sealed).
        raise StrictJSONError(
            f"string holds a lone surrogate at character {exc.start}"
        ) from None


def _check(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise StrictJSONError(f"nesting deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, str):
        _check_str(value)
        return
    if isinstance(value, int):
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise StrictJSONError("integer out of 64-bit range")
        return
    if isinstance(value, list):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise StrictJSONError(f"object key of type {type(key).__name__} is not a string")
            _check_str(key)
            _check(item, depth + 1)
        return
    raise StrictJSONError(f"unexpected JSON value of type {type(value).__name__}")


def loads_strict(data: bytes, max_bytes: int) -> Any:
    """Parse ``data`` as strict JSON.

    Raises:
        StrictJSONError: larger than ``max_bytes``, not UTF-8, has a BOM, or breaks a rule.
    """
    if len(data) > max_bytes:
        raise StrictJSONError(f"{len(data)} bytes is over the limit of {max_bytes} bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        raise StrictJSONError("UTF-8 byte order mark is not allowed")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not valid UTF-8 at byte {exc.start}") from exc
    # Bound nesting before the recursive parser sees it: count brackets outside strings.
    depth = 0
    deepest = 0
    in_str = False
    escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH + 1:
                raise StrictJSONError(f"nesting deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError(f"not valid JSON: {exc}") from exc
    _check(value, 0)
    return value


def dumps_canonical(value: Any) -> bytes:
    """Serialise ``value`` canonically (sorted keys, no whitespace, UTF-8, integers only).

    Raises:
        StrictJSONError: ``value`` holds a float or another type strict JSON forbids.
    """
    _check(value, 0)
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise StrictJSONError(f"cannot serialise: {exc}") from exc
    return text.encode("utf-8")  # cannot fail: _check refused lone surrogates
