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
import re
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
    out = dict(pairs)
    if len(out) != len(pairs):  # the common case costs one C call; name the key otherwise
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"duplicate key {key[:80]!r}")
            seen.add(key)
    return out


def _parse_int(text: str) -> int:
    value = int(text)  # over Python's digit limit: ValueError, "not valid JSON"
    if len(text) > 18 and not -_INT_LIMIT <= value < _INT_LIMIT:
        raise StrictJSONError("integer out of 64-bit range")
    return value


#: What the nesting pre-scan looks at: a backslash escape (with the character it escapes),
#: a quote, a bracket. Everything else is skipped in C.
_SCAN_TOKEN = re.compile(r'\\.|["\[\]{}]', re.DOTALL)
#: json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
#: allow_nan=False), its encoder made once (json.dumps makes one a call for such arguments;
#: encode keeps no state between calls)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
#: json.loads(text, object_pairs_hook=_pairs, parse_float=_reject_float, parse_int=_parse_int,
#: parse_constant=_reject_constant), its decoder made once: json.loads makes a JSONDecoder
#: (and its scanner) a call for such arguments — 2.7 of a small header's 4.4 µs, five
#: times per agent in a live burst (docs/benchmarks.md, "Session 12: live burst"); decode
#: keeps no state between calls, the hooks keep none either
_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_float=_reject_float,
                            parse_int=_parse_int, parse_constant=_reject_constant)
#: An escape that decodes to a UTF-16 surrogate (the only way a JSON string can hold one
#: once the text decoded as strict UTF-8).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _nesting(text: str) -> int:
    """How deep brackets outside strings nest (at most ``MAX_DEPTH + 2``: then it stops).
    Linear: one pass of a regular expression, a Python step per quote, escape or bracket."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return MAX_DEPTH  # cannot nest deeper than there are brackets
    depth = deepest = 0
    in_str = False
    for found in _SCAN_TOKEN.findall(text):
        if found == '"':
            in_str = not in_str
        elif in_str or len(found) == 2:  # an escape: inside a string, or invalid JSON
            continue
        elif found in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH + 1:
                    break
        else:
            depth -= 1
    return deepest


def _check_str(text: str) -> None:
    try:
        text.encode("utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        # The message never quotes the string: it may be a secret (signing.sealed).
        raise StrictJSONError(
            f"string holds a lone surrogate at character {exc.start}"
        ) from None


def _check(value: Any, depth: int, strings: bool = True) -> None:
    """Refuse what strict JSON forbids in ``value``; ``strings=False`` leaves lone
    surrogates to the caller (dumps_canonical finds them when encoding the whole text)."""
    if depth > MAX_DEPTH:
        raise StrictJSONError(f"nesting deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind is dict or kind is list:
        # The common leaves (exactly str, int, bool, None) are checked here, not by a call
        # each; anything else, and anything at the depth limit, by the general case.
        leaves_ok = depth < MAX_DEPTH
        items = value.items() if kind is dict else enumerate(value)
        for key, item in items:
            if kind is dict:
                if type(key) is not str and not isinstance(key, str):
                    raise StrictJSONError(
                        f"object key of type {type(key).__name__} is not a string"
                    )
                if strings:
                    _check_str(key)
            leaf = type(item)
            if leaves_ok and (leaf is bool or item is None):
                continue
            if leaves_ok and leaf is str:
                if strings:
                    _check_str(item)
                continue
            if leaves_ok and leaf is int and -_INT_LIMIT <= item < _INT_LIMIT:
                continue
            _check(item, depth + 1, strings)
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, str):
        if strings:
            _check_str(value)
        return
    if isinstance(value, int):
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise StrictJSONError("integer out of 64-bit range")
        return
    if isinstance(value, list | dict):  # subclasses of list and dict
        _check(list(value) if isinstance(value, list) else dict(value), depth, strings)
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
    deepest = _nesting(text)
    if deepest > MAX_DEPTH + 1:
        raise StrictJSONError(f"nesting deeper than {MAX_DEPTH} levels")
    try:
        # json.loads's own BOM check is moot: the bytes' BOM was refused above.
        value = _DECODER.decode(text)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError(f"not valid JSON: {exc}") from exc
    # Integers were range-checked as parsed; what is left to check is a value nested one
    # level too deep and strings holding a lone surrogate. Text that has neither (the
    # common case) needs no walk over the parsed value.
    if deepest > MAX_DEPTH or ("\\u" in text and _SURROGATE_ESCAPE.search(text)):
        _check(value, 0)
    return value


def dumps_canonical(value: Any) -> bytes:
    """Serialise ``value`` canonically (sorted keys, no whitespace, UTF-8, integers only).

    Raises:
        StrictJSONError: ``value`` holds a float or another type strict JSON forbids.
    """
    _check(value, 0, strings=False)
    try:
        text = _CANONICAL.encode(value)
    except (TypeError, ValueError) as exc:
        raise StrictJSONError(f"cannot serialise: {exc}") from exc
    try:
        return text.encode("utf-8")  # ensure_ascii=False: a lone surrogate is written as is
    except UnicodeEncodeError as exc:
        # The message never quotes the text: it may hold a secret (signing.sealed).
        raise StrictJSONError(
            f"a string holds a lone surrogate (character {exc.start} of the output)"
        ) from None
