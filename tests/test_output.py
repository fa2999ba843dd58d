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


@pytest.mark.parametrize(("value", "shown"), [
    ("a\u2028b", "a\\u2028b"),               # a line separator: a new line in some viewers
    ("a\u200bb\ufeff", "a\\u200bb\\ufeff"),  # invisible format characters
    ("a\udcffb", "a\\xffb"),                 # a byte of a name that is not UTF-8
])
def test_a_cell_escapes_what_the_media_names_are_escaped_for(value: str, shown: str) -> None:
    """The same escape as bundle.printable: a name looks the same in a table as in a log."""
    from bundle.printable import printable

    assert cell(value) == shown == printable(value)


def test_text_lines_keeps_lines_and_tabs_and_escapes_the_rest() -> None:
    from tiangong.output import text_lines

    text = "SELECT 1;\n\techo 'a\\b'\r\x1b[2J\u2028done\n"
    assert text_lines(text) == "SELECT 1;\n\techo 'a\\b'\\x0d\\x1b[2J\\u2028done\n"
