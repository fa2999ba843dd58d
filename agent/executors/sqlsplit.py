"""Split a SQL script into statements, the way the ``mysql`` and ``psql`` clients would.

:func:`split_statements` takes the text of a script and a dialect (``"mysql"`` or
``"postgres"``) and returns :class:`Statement` values: the statement text (leading comments and
the terminating delimiter removed, inner comments kept) and the 1-based line of the script on
which the statement starts, so an error can point the operator at the right line.

What it understands:

* comments: ``-- …`` (MySQL: only when followed by whitespace, as the server does), ``# …``
  (MySQL), ``/* … */`` (nested on PostgreSQL). MySQL's executable comments and optimizer
  hints (``/*! … */``, ``/*M! … */``, ``/*+ … */``) are statement text, not comments;
* quoted text: ``'…'`` and ``"…"`` with doubled quotes; MySQL backslash escapes in both;
  PostgreSQL ``E'…'`` backslash escapes, standard (``standard_conforming_strings = on``)
  ``'…'`` without; MySQL ```…``` identifiers; PostgreSQL dollar quoting (``$$…$$``,
  ``$tag$…$tag$``);
* MySQL's ``DELIMITER`` client directive (at the start of a line, between statements), for
  procedures and triggers whose bodies contain ``;``;
* PostgreSQL: a ``;`` inside parentheses (``CREATE RULE … DO (…; …)``) or inside the
  ``BEGIN ATOMIC … END`` body of ``CREATE [OR REPLACE] FUNCTION|PROCEDURE`` does not end the
  statement, following psql's rules.

It is sans-I/O (text in, values out) and deliberately does *not*: run psql meta-commands
(``\\connect``, ``\\copy``, a line starting with ``\\`` is refused) or psql variables
(``:name``); parse ``COPY … FROM stdin`` inline data; honour ``\\g``/``\\G`` terminators or
MySQL's ``NO_BACKSLASH_ESCAPES``/``ANSI_QUOTES`` SQL modes or PostgreSQL's
``standard_conforming_strings = off``; validate SQL beyond finding where statements end.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["Dialect", "SqlSplitError", "Statement", "code_starts", "split_statements"]

Dialect = Literal["mysql", "postgres"]

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_DELIMITER_LINE = re.compile(r"delimiter(?=[ \t\r\n]|$)[ \t]*([^\r\n]*)", re.IGNORECASE)
_FUNCTION_HEADS = (("create", "function"), ("create", "procedure"))
_OR_REPLACE_HEADS = (
    ("create", "or", "replace", "function"),
    ("create", "or", "replace", "procedure"),
)


class SqlSplitError(ValueError):
    """The script cannot be split: an unterminated quote or comment, a bad directive.

    ``line`` is the 1-based line where the offending construct starts.
    """

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its text (no delimiter) and its 1-based starting line."""

    text: str
    line: int


def split_statements(script: str, dialect: Dialect) -> list[Statement]:
    """Split ``script`` into its statements, in order, dropping empty and comment-only ones.

    Raises:
        SqlSplitError: a quote, comment or dollar-quoted string is not terminated, a
            ``DELIMITER`` directive has no usable delimiter, or (PostgreSQL) a psql
            meta-command starts a statement.
        ValueError: ``dialect`` is neither ``"mysql"`` nor ``"postgres"``.
    """
    if dialect not in ("mysql", "postgres"):
        raise ValueError(f"unknown SQL dialect {dialect!r}; expected 'mysql' or 'postgres'")
    return _Splitter(script, dialect).run()


def code_starts(script: str, dialect: Dialect) -> frozenset[int]:
    """The indexes of ``script`` at which the splitter reads SQL code: where a token starts
    outside quoted text, comments and dollar-quoted bodies (on MySQL, every such character).
    A job template uses it to tell where a value may stand (hub.services.template_params).

    Raises:
        SqlSplitError, ValueError: as :func:`split_statements`.
    """
    if dialect not in ("mysql", "postgres"):
        raise ValueError(f"unknown SQL dialect {dialect!r}; expected 'mysql' or 'postgres'")
    splitter = _Splitter(script, dialect)
    splitter.code = []
    splitter.run()
    return frozenset(splitter.code)


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ch == "$" or ord(ch) > 127


class _Splitter:
    """One pass over the text. Quoted text and comments are skipped as whole tokens, so a
    delimiter is only ever recognised outside them."""

    def __init__(self, script: str, dialect: Dialect) -> None:
        self.s = script
        self.n = len(script)
        self.mysql = dialect == "mysql"
        self.delimiter = ";"
        self._newlines = [i for i, ch in enumerate(script) if ch == "\n"]
        self.out: list[Statement] = []
        self.code: list[int] | None = None  # token starts in code, when asked (code_starts)
        self._reset()

    def _reset(self) -> None:
        self.start: int | None = None  # index of the current statement's first character
        self.paren_depth = 0
        self.begin_depth = 0
        self.words: list[str] = []  # the first few words, lower case (PostgreSQL only)

    def line_of(self, index: int) -> int:
        return bisect.bisect_left(self._newlines, index) + 1

    def run(self) -> list[Statement]:
        i = 0
        s = self.s
        while i < self.n:
            ch = s[i]
            if self.start is None and self.mysql and ch in "dD" and self._at_line_start(i):
                end = self._delimiter_directive(i)
                if end is not None:
                    i = end
                    continue
            if s.startswith(self.delimiter, i) and self.paren_depth == 0 and self.begin_depth == 0:
                self._emit(i)
                i += len(self.delimiter)
                continue
            if ch.isspace():
                i += 1
                continue
            comment_end = self._comment_end(i)
            if comment_end is not None:
                i = comment_end
                continue
            if self.start is None:
                self.start = i
                if not self.mysql and ch == "\\":
                    raise SqlSplitError(
                        f"psql meta-command {s[i:].split(maxsplit=1)[0]!r} is not supported; "
                        "scripts must contain SQL only",
                        self.line_of(i),
                    )
            if self.code is not None:
                self.code.append(i)
            i = self._token_end(i)
        self._emit(self.n)
        return self.out

    def _emit(self, end: int) -> None:
        if self.start is not None:
            text = self.s[self.start : end].rstrip()
            if text:
                self.out.append(Statement(text, self.line_of(self.start)))
        self._reset()

    def _at_line_start(self, i: int) -> bool:
        line_start = self.s.rfind("\n", 0, i) + 1
        return not self.s[line_start:i].strip()

    def _delimiter_directive(self, i: int) -> int | None:
        """Handle ``DELIMITER x`` at ``i``; return the index after its line, or None."""
        match = _DELIMITER_LINE.match(self.s, i)
        if match is None:
            return None
        args = match.group(1).split()
        if not args:
            raise SqlSplitError("DELIMITER needs a delimiter, e.g. 'DELIMITER //'", self.line_of(i))
        new = args[0]
        if "\\" in new:
            raise SqlSplitError(
                f"DELIMITER {new!r}: a delimiter cannot contain a backslash", self.line_of(i)
            )
        self.delimiter = new
        return match.end()

    # --- comments -------------------------------------------------------------------------

    def _comment_end(self, i: int) -> int | None:
        """If a comment that is not statement text starts at ``i``, the index after it."""
        s = self.s
        if s.startswith("--", i) and (
            not self.mysql or i + 2 >= self.n or _mysql_dash_ok(s[i + 2])
        ):
            return self._line_end(i)
        if self.mysql and s[i] == "#":
            return self._line_end(i)
        if s.startswith("/*", i):
            if self.mysql and (s.startswith(("/*!", "/*+", "/*M!"), i)):
                return None  # executable comment / optimizer hint: it is SQL
            return self._block_comment_end(i)
        return None

    def _line_end(self, i: int) -> int:
        nl = self.s.find("\n", i)
        return self.n if nl < 0 else nl + 1

    def _block_comment_end(self, i: int) -> int:
        s = self.s
        depth = 1
        j = i + 2
        while depth:
            close = s.find("*/", j)
            if close < 0:
                raise SqlSplitError("unterminated /* comment", self.line_of(i))
            if not self.mysql:
                opened = s.find("/*", j, close)
                if opened >= 0:
                    depth += 1
                    j = opened + 2
                    continue
            depth -= 1
            j = close + 2
        return j

    # --- tokens inside a statement --------------------------------------------------------

    def _token_end(self, i: int) -> int:
        s = self.s
        ch = s[i]
        if ch in "'\"":
            return self._quoted_end(i, ch, backslash=self.mysql)
        if ch == "`" and self.mysql:
            return self._quoted_end(i, "`", backslash=False)
        if self.mysql:
            if s.startswith(("/*!", "/*+", "/*M!"), i):
                return self._block_comment_end(i)
            return i + 1  # MySQL: character by character, so `END$$` still ends at `$$`
        if ch == "$":
            match = _DOLLAR_TAG.match(s, i)
            if match is not None:
                return self._dollar_end(i, match.group(0))
            return i + 1
        if _is_word_char(ch):
            j = i + 1
            while j < self.n and _is_word_char(s[j]):
                j += 1
            word = s[i:j]
            if word in ("E", "e") and j < self.n and s[j] == "'":
                return self._quoted_end(j, "'", backslash=True)
            self._track_word(word.lower())
            return j
        if ch == "(":
            self.paren_depth += 1
        elif ch == ")" and self.paren_depth > 0:
            self.paren_depth -= 1
        return i + 1

    def _quoted_end(self, i: int, quote: str, *, backslash: bool) -> int:
        s = self.s
        j = i + 1
        while j < self.n:
            ch = s[j]
            if backslash and ch == "\\":
                j += 2
                continue
            if ch == quote:
                if j + 1 < self.n and s[j + 1] == quote:
                    j += 2
                    continue
                return j + 1
            j += 1
        kind = {"'": "string", '"': "double-quoted text", "`": "backtick identifier"}[quote]
        raise SqlSplitError(f"unterminated {kind} ({quote}…)", self.line_of(i))

    def _dollar_end(self, i: int, tag: str) -> int:
        close = self.s.find(tag, i + len(tag))
        if close < 0:
            raise SqlSplitError(f"unterminated dollar-quoted string {tag}", self.line_of(i))
        return close + len(tag)

    def _track_word(self, word: str) -> None:
        """PostgreSQL: follow ``BEGIN ATOMIC … END`` in SQL-standard function bodies."""
        if len(self.words) < 4:
            self.words.append(word)
        head = tuple(self.words)
        in_routine = head[:2] in _FUNCTION_HEADS or head[:4] in _OR_REPLACE_HEADS
        if not in_routine or self.paren_depth:
            return
        if word == "begin" or (word == "case" and self.begin_depth):
            self.begin_depth += 1  # CASE … END inside a body also ends with END
        elif word == "end" and self.begin_depth:
            self.begin_depth -= 1


def _mysql_dash_ok(ch: str) -> bool:
    """MySQL starts a ``--`` comment only when a space or control character follows."""
    return ch.isspace() or ord(ch) < 32
