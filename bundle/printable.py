"""File names made safe for one line of output: a log, a reason file, a verdict.

A file name may be any byte sequence but ``/`` and NUL, so one that is printed as it is can
write lines of its own ("REFUSED x.tgb" followed by a forged "VERIFIED x.tgb: ..."), hide
itself behind a bidi override or fail to encode. :func:`printable` is the one escape the
agent's inbox, the hub's import and ``tiangong bundle`` use for names they print.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(name: str, *, double_backslash: bool = True) -> str:
    """*name* made safe for one line of a log or reason file. Pure.

    A file name may be any byte sequence but ``/`` and NUL: bytes that are not UTF-8 (held by
    Python as lone surrogates) become ``\\xNN``, control, format and separator characters
    (newline, ESC, U+2028, bidi overrides …) become ``\\xNN`` / ``\\uNNNN``, and a backslash
    is doubled, so the text cannot fake a line, hide itself or be mistaken for another name.
    ``double_backslash=False`` is for text that already holds names escaped this way (an
    agent message): its escapes are kept as they are, so a name is escaped once.
    """
    out: list[str] = []
    for ch in name:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's surrogateescape for an undecodable byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\" and double_backslash:
            out.append("\\\\")
        elif unicodedata.category(ch) in _UNPRINTABLE:
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)
