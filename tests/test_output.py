"""Table cells (tiangong.output.cell): one line whatever the value, and unambiguous — a
control character is an escape, and a backslash is doubled, so a name that holds the four
characters ``\\x0a`` is never read as a name holding a new line."""

from __future__ import annotations

import pytest

from tiangong.output import cell


@pytest.mark.parametrize(("value", "shown"), [
    ("a\nb", "a\\x0ab"),                      # a real new line: an escape
    ("a\\x0ab", "a\\\\x0ab"),                 # the four characters \x0a: backslash doubled
    ("C:\\dir\\", "C:\\\\dir\\\\"),
    ("\x1b[2J\u202e", "\\x1b[2J\\u202e"),
    ("ok.tgr", "ok.tgr"),
    (["a\\b", "c\td"], "a\\\\b,c\\x09d"),
])
def test_a_cell_is_one_unambiguous_line(value: object, shown: str) -> None:
    assert cell(value) == shown
    assert "\n" not in cell(value)


def test_a_real_and_a_literal_escape_never_look_alike() -> None:
    assert cell("x\ny") != cell("x\\x0ay")
