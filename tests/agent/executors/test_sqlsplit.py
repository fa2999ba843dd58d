"""Tests for agent.executors.sqlsplit: example tables per construct, then properties."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.executors.sqlsplit import Dialect, SqlSplitError, Statement, split_statements


def texts(script: str, dialect: Dialect) -> list[str]:
    return [s.text for s in split_statements(script, dialect)]


# --- examples -----------------------------------------------------------------------------

BOTH: list[Dialect] = ["mysql", "postgres"]


@pytest.mark.parametrize("dialect", BOTH)
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1;\nSELECT 2", ["SELECT 1", "SELECT 2"]),  # last one needs no delimiter
        ("  ;; ;\n", []),
        ("", []),
        ("-- only a comment\n/* and another */\n", []),
        ("SELECT 'a;b';", ["SELECT 'a;b'"]),
        ("SELECT 'it''s; fine';", ["SELECT 'it''s; fine'"]),
        ("SELECT 1 /* ; */ + 2;", ["SELECT 1 /* ; */ + 2"]),
        ("SELECT 1 -- ; not the end\n + 2;", ["SELECT 1 -- ; not the end\n + 2"]),
        ("-- header\n-- more\nCREATE TABLE t (a int);", ["CREATE TABLE t (a int)"]),
        ("/* lead */ SELECT 1;", ["SELECT 1"]),
        ("SELECT 1;\n-- trailing comment", ["SELECT 1"]),
        ("SELECT 1 ; /* between */ ; SELECT 2", ["SELECT 1", "SELECT 2"]),
    ],
)
def test_common_constructs(dialect: Dialect, script: str, expected: list[str]) -> None:
    assert texts(script, dialect) == expected


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # backslash escapes in both quote styles
        (r"SELECT 'a\';b';", [r"SELECT 'a\';b'"]),
        (r'SELECT "a\";b";', [r'SELECT "a\";b"']),
        (r"SELECT 'a\\'; SELECT 2;", [r"SELECT 'a\\'", "SELECT 2"]),
        ("SELECT `we;ird``name` FROM t;", ["SELECT `we;ird``name` FROM t"]),
        ("SELECT 1 # hash ; comment\n;", ["SELECT 1 # hash ; comment"]),
        # "--" without a following space is two minus signs in MySQL
        ("SELECT 5--1; SELECT 2;", ["SELECT 5--1", "SELECT 2"]),
        ("SELECT 1 --\n;", ["SELECT 1 --"]),
        # executable comments are SQL, even at the start of a statement
        ("/*!40101 SET NAMES utf8 */;", ["/*!40101 SET NAMES utf8 */"]),
        ("SELECT /*+ MAX_EXECUTION_TIME(5) */ 1;", ["SELECT /*+ MAX_EXECUTION_TIME(5) */ 1"]),
        ("/*M!100100 SET a=1; */;", ["/*M!100100 SET a=1; */"]),
        # no dollar quoting in MySQL
        ("SELECT '$$'; SELECT 2;", ["SELECT '$$'", "SELECT 2"]),
    ],
)
def test_mysql_constructs(script: str, expected: list[str]) -> None:
    assert texts(script, "mysql") == expected


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # standard strings: a backslash is an ordinary character
        (r"SELECT 'a\'; SELECT 2;", [r"SELECT 'a\'", "SELECT 2"]),
        (r"SELECT E'a\';b';", [r"SELECT E'a\';b'"]),
        (r"SELECT e'a\\'; SELECT 2;", [r"SELECT e'a\\'", "SELECT 2"]),
        ('SELECT 1 AS "we;ird""name";', ['SELECT 1 AS "we;ird""name"']),
        ("SELECT $$a;b$$;", ["SELECT $$a;b$$"]),
        ("SELECT $x$ $$;$$ $x$; SELECT 2;", ["SELECT $x$ $$;$$ $x$", "SELECT 2"]),
        ("SELECT $1; SELECT 2", ["SELECT $1", "SELECT 2"]),  # a parameter, not a quote
        ("SELECT a$b$ FROM t; SELECT 2", ["SELECT a$b$ FROM t", "SELECT 2"]),
        ("SELECT 1 /* outer /* inner; */ still; */;", ["SELECT 1 /* outer /* inner; */ still; */"]),
        ("SELECT 5--1;\n;", ["SELECT 5--1;"]),  # "--" always starts a comment here
        ("SELECT 1 # 2;", ["SELECT 1 # 2"]),  # "#" is an operator, not a comment
        (
            "CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2);",
            ["CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2)"],
        ),
    ],
)
def test_postgres_constructs(script: str, expected: list[str]) -> None:
    assert texts(script, "postgres") == expected


def test_postgres_begin_atomic_body_is_one_statement() -> None:
    script = (
        "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n"
        "  SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;\n"
        "  SELECT a + 1;\n"
        "END;\n"
        "BEGIN;\n"
        "SELECT f(1);\n"
    )
    assert split_statements(script, "postgres") == [
        Statement(script.split("\nBEGIN;")[0].rstrip(";"), 1),
        Statement("BEGIN", 6),
        Statement("SELECT f(1)", 7),
    ]


def test_plpgsql_dollar_quoted_function() -> None:
    script = (
        "CREATE FUNCTION bump(n int) RETURNS int AS $body$\n"
        "BEGIN\n"
        "  -- a comment with a ; and a 'quote\n"
        "  RETURN n + 1;\n"
        "END;\n"
        "$body$ LANGUAGE plpgsql;\n"
        "\n"
        "SELECT bump(1);"
    )
    statements = split_statements(script, "postgres")
    assert [s.line for s in statements] == [1, 8]
    assert statements[0].text.endswith("$body$ LANGUAGE plpgsql")


def test_mysql_delimiter_for_procedures_and_triggers() -> None:
    script = (
        "CREATE TABLE t (a INT);\n"  # line 1
        "DELIMITER //\n"
        "CREATE PROCEDURE p()\n"  # line 3
        "BEGIN\n"
        "  INSERT INTO t VALUES (1);\n"
        "  SELECT 'x;y' FROM t;\n"
        "END //\n"
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.a = NEW.a; END//\n"
        "delimiter $$\n"
        "CREATE PROCEDURE q() BEGIN SELECT 1; END$$\n"  # line 10: `$` is no word boundary
        "DELIMITER ;\n"
        "CALL p();\n"  # line 12
    )
    got = split_statements(script, "mysql")
    assert [s.line for s in got] == [1, 3, 8, 10, 12]
    assert got[1].text.startswith("CREATE PROCEDURE p()") and got[1].text.endswith("END")
    assert got[3].text == "CREATE PROCEDURE q() BEGIN SELECT 1; END"
    assert got[4].text == "CALL p()"


def test_delimiter_word_is_only_a_directive_at_statement_start() -> None:
    assert texts("SELECT 1 AS\ndelimiter;", "mysql") == ["SELECT 1 AS\ndelimiter"]
    assert texts("DELIMITER //\nSELECT 1;", "postgres") == ["DELIMITER //\nSELECT 1"]


def test_line_numbers_point_at_first_token_not_leading_comment() -> None:
    script = "\n\n-- about t\n/* more\nlines */\n  CREATE TABLE t (a int);\r\nSELECT\n1;"
    assert [(s.line, s.text) for s in split_statements(script, "postgres")] == [
        (6, "CREATE TABLE t (a int)"),
        (7, "SELECT\n1"),
    ]


@pytest.mark.parametrize(
    ("dialect", "script", "line", "words"),
    [
        ("mysql", "SELECT 1;\nSELECT 'abc;", 2, "unterminated string"),
        ("postgres", 'SELECT\n"abc;', 2, "unterminated double-quoted"),
        ("mysql", "SELECT `abc;", 1, "unterminated backtick"),
        ("postgres", "SELECT 1;\n\n/* never closed", 3, "unterminated /* comment"),
        ("postgres", "SELECT /* a /* b */ c;", 1, "unterminated /* comment"),
        ("postgres", "CREATE FUNCTION f() AS $fn$\nBEGIN\n$$;", 1, "dollar-quoted string $fn$"),
        ("postgres", r"SELECT E'abc\';", 1, "unterminated string"),
        ("mysql", "SELECT 1;\nDELIMITER\nSELECT 2;", 2, "DELIMITER needs a delimiter"),
        ("mysql", "DELIMITER \\\\\n", 1, "backslash"),
        ("postgres", "SELECT 1;\n\\connect other\nSELECT 2;", 2, "meta-command '\\\\connect'"),
    ],
)
def test_unsplittable_scripts_name_the_line(
    dialect: Dialect, script: str, line: int, words: str
) -> None:
    with pytest.raises(SqlSplitError) as info:
        split_statements(script, dialect)
    assert info.value.line == line
    assert words in str(info.value)


def test_unknown_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown SQL dialect 'oracle'"):
        split_statements("SELECT 1", "oracle")  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------

_PLAIN = st.text(alphabet="abcxyz019 _=+*<>.,\n\t", max_size=12)
# Characters that would confuse a naive splitter, for the inside of quotes and comments.
_NASTY = st.text(alphabet="ab;'\"`\\$#-/*\n ()", max_size=16)


def _mysql_string(body: str, quote: str, backslash_quote: bool) -> str:
    escaped = body.replace("\\", "\\\\")
    escaped = escaped.replace(quote, ("\\" if backslash_quote else quote) + quote)
    return f"{quote}{escaped}{quote}"


@st.composite
def _atom(draw: st.DrawFn, dialect: Dialect) -> str:
    """One token that belongs inside a statement (never a top-level delimiter)."""
    body = draw(_NASTY)
    backslash_quote = draw(st.booleans())
    kinds = ["word", "string", "dquote", "block", "line"]
    kinds += ["backtick"] if dialect == "mysql" else ["estring", "dollar", "parens", "nested"]
    kind = draw(st.sampled_from(kinds))
    if kind == "word":
        return draw(st.sampled_from(["SELECT", "a", "t1", "42", "=", "+", "x_y", "FROM"]))
    if kind == "string":
        if dialect == "mysql":
            return _mysql_string(body, "'", backslash_quote)
        return "'" + body.replace("'", "''") + "'"
    if kind == "dquote":
        if dialect == "mysql":
            return _mysql_string(body, '"', backslash_quote)
        return '"' + body.replace('"', '""') + '"'
    if kind == "backtick":
        return "`" + body.replace("`", "``") + "`"
    if kind == "estring":
        return "E'" + body.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if kind == "dollar":
        tag = draw(st.sampled_from(["$$", "$fn$", "$a1$"]))
        inner = body.replace("$", "")
        return f"{tag}{inner}{tag}"
    if kind == "block":
        inner = body.replace("*", "").replace("/", "").lstrip("!+M")
        return f"/* {inner} */"
    if kind == "nested":
        inner = body.replace("*", "").replace("/", "")
        return f"/* {inner} /* {inner} */ {inner} */"
    if kind == "parens":
        return "(x; " + "".join(ch for ch in body if ch in "ab ;\n") + " )"
    # a line comment must be followed by a newline or it would eat the delimiter
    return "-- " + body.replace("\n", " ") + "\n"


@dataclass(frozen=True)
class _Generated:
    script: str
    expected: list[Statement]


@st.composite
def _scripts(draw: st.DrawFn, dialect: Dialect) -> _Generated:
    """A script built from statements we know, with noise between them, and its split."""
    script = ""
    expected: list[Statement] = []
    for _ in range(draw(st.integers(0, 5))):
        script += draw(st.sampled_from(["", "\n", "  ", "\n\n", "-- note ; 'x\n", "/* ; */ "]))
        first = draw(st.sampled_from(["SELECT", "INSERT", "CREATE", "x"]))
        rest = draw(st.lists(_atom(dialect), max_size=6))
        seps = draw(
            st.lists(st.sampled_from([" ", "\n", "\t"]), min_size=len(rest), max_size=len(rest))
        )
        raw = first + "".join(sep + atom for sep, atom in zip(seps, rest, strict=True))
        expected.append(Statement(raw.rstrip(), script.count("\n") + 1))
        script += raw + draw(st.sampled_from([";", " ;", "\n;", ";;"]))
    script += draw(st.sampled_from(["", "\n", "-- end\n"]))
    return _Generated(script, expected)


@pytest.mark.parametrize("dialect", BOTH)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_joined_statements_split_back_exactly(dialect: Dialect, data: st.DataObject) -> None:
    generated = data.draw(_scripts(dialect))
    assert split_statements(generated.script, dialect) == generated.expected


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mysql_custom_delimiter_keeps_inner_semicolons(data: st.DataObject) -> None:
    bodies = data.draw(st.lists(st.lists(_atom("mysql"), min_size=1, max_size=4), max_size=4))
    script = "DELIMITER //\n"
    expected = []
    for atoms in bodies:
        text = "CREATE PROCEDURE p() BEGIN " + " ; ".join(atoms)
        text = text.rstrip()
        expected.append(Statement(text, script.count("\n") + 1))
        script += text + "\n//\n"
    script += "DELIMITER ;\nSELECT 1;"
    expected.append(Statement("SELECT 1", script.count("\n") + 1))
    assert split_statements(script, "mysql") == expected


@pytest.mark.parametrize("dialect", BOTH)
@settings(max_examples=300, deadline=None)
@given(script=st.lists(_PLAIN, max_size=8).map(";".join))
def test_plain_text_splits_like_str_split(dialect: Dialect, script: str) -> None:
    """Without quotes or comments, nothing is lost: the split is the naive one."""
    expected = [part.strip() for part in script.split(";") if part.strip()]
    assert texts(script, dialect) == expected


@pytest.mark.parametrize("dialect", BOTH)
@settings(max_examples=500, deadline=None)
@given(script=st.text(alphabet="ab ;'\"`\\$#-/*\n()E", max_size=60))
def test_any_text_splits_or_fails_cleanly(dialect: Dialect, script: str) -> None:
    """Arbitrary input never crashes; every statement is real text found at its line."""
    try:
        statements = split_statements(script, dialect)
    except SqlSplitError as exc:
        assert 1 <= exc.line <= script.count("\n") + 1
        return
    position = 0
    for statement in statements:
        assert statement.text and statement.text == statement.text.strip()
        # it is a piece of the script, after the previous one, starting on the line it names
        found = script.find(statement.text, position)
        while found >= 0 and script.count("\n", 0, found) + 1 != statement.line:
            found = script.find(statement.text, found + 1)
        assert found >= 0, statement
        position = found + len(statement.text)
