"""Printing command results: aligned tables for people, ``--json`` for scripts (shared by
``tiangong hub`` and ``tiangong remote``). Only click and the standard library."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

__all__ = ["cell", "done", "emit"]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit(
    rows: Sequence[dict[str, Any]] | dict[str, Any],
    as_json: bool,
    columns: Sequence[str] | None = None,
) -> None:
    """Print ``rows`` (a table, or one record as aligned ``key  value`` lines), or JSON."""
    if as_json:
        click.echo(json.dumps(rows, default=_json_default, indent=2, sort_keys=True))
        return
    if isinstance(rows, dict):
        width = max((len(k) for k in rows), default=0)
        for key, value in rows.items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value, default=_json_default)
            click.echo(f"{key.ljust(width)}  {cell(value)}")
        return
    if not rows:
        click.echo("(none)")
        return
    cols = list(columns or rows[0].keys())
    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def done(as_json: bool, text: str, data: dict[str, Any]) -> None:
    """Report one command's result: ``text`` for people, ``data`` as JSON with --json."""
    if as_json:
        emit(data, True)
    else:
        click.echo(text)


#: What a cell never prints raw: control characters (a new line, an escape sequence), bidi
#: controls, the lone surrogates a file name that is not UTF-8 decodes to — and the
#: backslash, doubled, so that a name holding the four characters ``\x0a`` never reads as an
#: escaped new line (as ``bundle.printable.printable`` does).
_UNPRINTABLE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                          "\udc80-\udcff]")


#: The same in a block of text shown as lines (a template's file): new lines and tabs stay.
_UNPRINTABLE_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f"
                                   "\u202a-\u202e\u2066-\u2069\udc80-\udcff]")


def _escaped(match: re.Match[str]) -> str:
    if match.group(0) == "\\":
        return "\\\\"
    code = ord(match.group(0))
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the byte a non-UTF-8 name held
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def cell(value: Any) -> str:
    """One table cell on one line: ``-`` for nothing, UTC times, comma-joined lists; what
    could break the line or drive a terminal (names from a stick, texts people typed) is
    escaped (``\\x0a``, ``\\x1b``, ``\\u202e``) and a backslash doubled (``\\\\``)."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, (list, tuple)):
        return _UNPRINTABLE.sub(_escaped, ",".join(str(v) for v in value)) or "-"
    return _UNPRINTABLE.sub(_escaped, str(value))


def text_lines(value: str) -> str:
    """Text somebody else wrote (a template's file, its description) for a terminal: its
    lines and tabs kept, every other control character, bidi control and non-UTF-8 byte
    escaped as :func:`cell` does (a carriage return or an escape sequence could otherwise
    hide a line from the person reading it before they run it)."""
    return _UNPRINTABLE_IN_LINES.sub(_escaped, value)
