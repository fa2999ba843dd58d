"""Printing command results: aligned tables for people, ``--json`` for scripts (shared by
``tiangong hub`` and ``tiangong remote``). Only click, the standard library and
:mod:`bundle.printable` (the one escape for text from elsewhere)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from bundle.printable import printable

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


#: What stays as it is in a block of text shown as lines: its new lines and tabs.
_LINE_BREAKS = re.compile("([\n\t])")


def cell(value: Any) -> str:
    """One table cell on one line: ``-`` for nothing, UTC times, comma-joined lists; what
    could break the line or drive a terminal (names from a stick, texts people typed) is
    escaped (``\\x0a``, ``\\x1b``, ``\\u202e``, ``\\u2028``) and a backslash doubled
    (``\\\\``): :func:`bundle.printable.printable`, the escape the inbox, the import and
    ``tiangong bundle`` print names with."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, (list, tuple)):
        return printable(",".join(str(v) for v in value)) or "-"
    return printable(str(value))


def text_lines(value: str) -> str:
    """Text somebody else wrote (a template's file, its description) for a terminal: its
    lines and tabs kept, every other control character, bidi control and non-UTF-8 byte
    escaped as :func:`cell` does (a carriage return or an escape sequence could otherwise
    hide a line from the person reading it before they run it)."""
    return "".join(part if part in ("\n", "\t") else printable(part, double_backslash=False)
                   for part in _LINE_BREAKS.split(value))
