"""bundle.printable: the one escape for file names printed on one line."""

from __future__ import annotations

import os

import pytest

from bundle.printable import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"hello-\xff\xfe.tgb", "hello-\\xff\\xfe.tgb"),  # not UTF-8
        (b"x.tgb\nreason: verified OK", "x.tgb\\x0areason: verified OK"),  # a fake line
        (b"\x1b[31mred.tgb", "\\x1b[31mred.tgb"),  # a terminal escape
        ("evil\u202egpj.tgb".encode(), "evil\\u202egpj.tgb"),  # a bidi override
        (b"back\\slash.tgb", "back\\\\slash.tgb"),  # a backslash cannot fake an escape
        ("caf\u00e9.tgb".encode(), "caf\u00e9.tgb"),  # printable text is kept
    ],
)
def test_printable_escapes_what_could_fake_or_hide(raw: bytes, shown: str) -> None:
    assert printable(os.fsdecode(raw)) == shown
