"""Typed template parameters (hub.services.template_params): definitions refused with the
parameter named, values checked and typed, and values substituted as literals — a
PostgreSQL dollar-quoted string its value cannot close, a MySQL hex literal — and for shell
as environment variables; the SQL literals are checked on real PostgreSQL and MariaDB."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from hub.errors import ValidationError
from hub.services.template_params import (
    check_values,
    parse_params,
    placeholders,
    render_sql,
    secret_not_allowed,
    shell_env,
)
from tests.fixtures.dbservers import MariaDBServer

SPECS = parse_params([
    {"name": "days", "type": "int", "min": 1, "max": 365, "default": 30},
    {"name": "mode", "type": "enum", "choices": ["fast", "slow"]},
    {"name": "dry_run", "type": "bool", "default": False},
    {"name": "note", "type": "string", "max_length": 10, "default": ""},
    {"name": "token", "type": "secret-ref", "default": "api-token",
     "choices": ["api-token", "backup-token"]},
], "t.toml")


@pytest.mark.parametrize(("raw", "message"), [
    ([{"name": "Days", "type": "int"}], "parameter 1 \\(Days\\): name must be"),
    ([{"name": "days", "type": "float"}], "parameter 1 \\(days\\): type must be one of"),
    ([{"name": "m", "type": "enum"}], "parameter 1 \\(m\\): an enum needs 'choices'"),
    ([{"name": "m", "type": "enum", "choices": ["a", "a"]}], "an enum needs 'choices'"),
    ([{"name": "s", "type": "string", "min": 1}], "'min' is an integer, for an int"),
    ([{"name": "d", "type": "int", "min": 5, "max": 1}], "min 5 is above max 1"),
    ([{"name": "d", "type": "int", "max": 9, "default": 10}],
     "parameter 1 \\(d\\): default: 10 is above the maximum 9"),
    ([{"name": "d", "type": "int", "colour": 1}], "unknown key\\(s\\) colour"),
    ([{"name": "d", "type": "int"}, {"name": "d", "type": "bool"}], "d is declared twice"),
    ([{"name": "s", "type": "string", "choices": ["a"]}],
     "only an enum or a secret-ref takes 'choices'"),
    ([{"name": "t", "type": "secret-ref", "choices": []}],
     "parameter 1 \\(t\\): a secret-ref's 'choices' are the secrets a run may name"),
    ([{"name": "t", "type": "secret-ref", "choices": ["a b"]}], "1-64 distinct secret names"),
    ([{"name": "t", "type": "secret-ref", "choices": ["a", "a"]}], "1-64 distinct secret names"),
    ([{"name": "t", "type": "secret-ref", "choices": ["a"], "default": "b"}],
     "parameter 1 \\(t\\): default: secret 'b' is not one of its choices \\(a\\)"),
])
def test_bad_definitions_name_the_parameter(raw: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=f"^t.toml: .*{message}"):
        parse_params(raw, "t.toml")


@pytest.mark.parametrize(("given", "message"), [
    ({}, "parameter mode is required \\(mode \\(enum: fast\\|slow, required\\)\\)"),
    ({"mode": "quick"}, "parameter mode: 'quick' is not one of fast, slow"),
    ({"mode": "fast", "days": "thirty"}, "parameter days: 'thirty' is not an integer"),
    ({"mode": "fast", "days": "0"}, "parameter days: 0 is below the minimum 1"),
    ({"mode": "fast", "days": "366"}, "parameter days: 366 is above the maximum 365"),
    ({"mode": "fast", "dry_run": "maybe"}, "parameter dry_run: 'maybe' is not true or false"),
    ({"mode": "fast", "note": "x" * 11}, "parameter note: 11 characters, more than 10"),
    ({"mode": "fast", "token": "a b"}, "parameter token: 'a b' is not a secret name"),
    ({"mode": "fast", "note": "a\x00b"}, "parameter note: contains a NUL character"),
    ({"mode": "fast", "colour": "red"},
     "unknown parameter colour \\(it takes days, mode, dry_run, note, token\\)"),
])
def test_bad_values_name_the_parameter(given: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=f"^template t v1: {message}"):
        check_values(SPECS, given, "template t v1")


def test_a_secret_ref_allows_only_its_choices() -> None:
    where = "template t v1"
    values = check_values(SPECS, {"mode": "fast", "token": "backup-token"}, where)
    assert secret_not_allowed(SPECS, values, where) is None
    values = check_values(SPECS, {"mode": "fast", "token": "db-root"}, where)
    refused = secret_not_allowed(SPECS, values, where)
    assert refused is not None and (refused[0].name, refused[1]) == ("token", "db-root")
    assert refused[2] == ("template t v1: parameter token: secret 'db-root' is not one the "
                          "template allows (api-token, backup-token)")
    # a parameter stored before 'choices' were required allows no secret at all
    old = parse_params([{"name": "token", "type": "secret-ref", "default": "api-token"}], "t")
    refused = secret_not_allowed(old, {"token": "api-token"}, where)
    assert refused is not None and "lists no secrets a run may name" in refused[2]


def test_values_are_typed_and_defaults_filled() -> None:
    assert check_values(SPECS, {"mode": "slow", "days": "7", "dry_run": "yes"},
                        "t") == {"days": 7, "mode": "slow", "dry_run": True, "note": "",
                                 "token": "api-token"}
    assert shell_env({"days": 7, "dry_run": False, "note": "a b;$(x)"}) == {
        "PARAM_DAYS": "7", "PARAM_DRY_RUN": "false", "PARAM_NOTE": "a b;$(x)"}


HOSTILE = ["it's", "a\\'; DROP TABLE t; --", "$tg$ x $tg$", "ends with $tg", "\\", "ü€😀",
           "line\nbreak", ""]


def test_sql_literals_round_trip_on_postgresql(pg_db: str) -> None:
    text = "SELECT {{v}}::text, {{n}}, {{b}}"
    assert placeholders(text) == ["v", "n", "b"]
    with psycopg.connect(pg_db, autocommit=True) as conn:
        for value in HOSTILE:
            sql = render_sql(text, {"v": value, "n": -5, "b": True}, "postgres")
            assert conn.execute(sql).fetchone() == (value, -5, True), sql


def test_sql_literals_round_trip_on_mariadb(mariadb_server: MariaDBServer,
                                            mysql_db: str) -> None:
    conn = mariadb_server.connect(mysql_db.rsplit("/", 1)[1])
    try:
        with conn.cursor() as cur:
            for mode in ("", "NO_BACKSLASH_ESCAPES,ANSI_QUOTES"):
                cur.execute(f"SET SESSION sql_mode = '{mode}'")
                for value in HOSTILE:
                    sql = render_sql("SELECT {{v}}, {{n}}", {"v": value, "n": 12}, "mysql")
                    cur.execute(sql)
                    assert cur.fetchone() == (value, 12), sql
    finally:
        conn.close()


# Where a value's literal may stand: only in SQL code, as a whole token. Each of these, as a
# template, let a value run as SQL on PostgreSQL (a quote or a new line ends the context the
# placeholder sits in; after a word, PostgreSQL reads $tg$ as part of the name).
MISPLACED = [
    ("DELETE FROM s WHERE owner = '{{v}}'", "'; DROP TABLE s; --", "inside quoted text"),
    ("SELECT 1; -- for {{v}}\n", "x\nDROP TABLE s; --", "inside quoted text, a comment"),
    ("SELECT 1 /* {{v}} */", "*/ DROP TABLE s; /*", "inside quoted text, a comment"),
    ("DO $$ BEGIN PERFORM {{v}}; END $$", "1; END $$; DROP TABLE s; --",
     "inside quoted text, a comment or a dollar-quoted body"),
    ('SELECT "{{v}}"', '"; DROP TABLE s; --', "inside quoted text"),
    ("SELECT tbl_{{v}}", "x; DROP TABLE s; --", "joined to a word"),
    ("SELECT {{v}}x", "y", "joined to a word"),
]


@pytest.mark.parametrize(("text", "value", "message"), MISPLACED)
def test_a_placeholder_outside_sql_code_is_refused(text: str, value: str, message: str) -> None:
    assert placeholders(text) == ["v"]
    with pytest.raises(ValidationError, match=f"line 1: placeholder {{{{v}}}} is {message}"):
        render_sql(text, {"v": value}, "postgres")
    if "$$" not in text:  # MySQL has no dollar quoting: there {{v}} is in code (a hex literal)
        with pytest.raises(ValidationError, match="placeholder"):
            render_sql(text, {"v": value}, "mysql")


def test_a_negative_int_after_a_minus_stays_arithmetic(pg_db: str,
                                                       mariadb_server: MariaDBServer,
                                                       mysql_db: str) -> None:
    # "10 -{{n}}" with n = -5 was "10 --5": a comment to the end of the line.
    text = "SELECT 10 -{{n}}, 2"
    with psycopg.connect(pg_db, autocommit=True) as conn:
        assert conn.execute(render_sql(text, {"n": -5}, "postgres")).fetchone() == (15, 2)
    conn2 = mariadb_server.connect(mysql_db.rsplit("/", 1)[1])
    try:
        with conn2.cursor() as cur:
            cur.execute(render_sql(text, {"n": -5}, "mysql"))
            assert cur.fetchone() == (15, 2)
    finally:
        conn2.close()


@pytest.mark.parametrize("value", [".", ".."])
def test_a_url_value_that_is_a_dot_segment_is_refused(value: str) -> None:
    """Percent-encoding leaves nothing that ends a path segment, but "." and ".." are whole
    segments of their own: `customers/{{id}}/refund` with id ".." was `customers/../refund`,
    which a server reads as `/api/refund` — another resource than the template names."""
    from hub.services.template_params import render, url_text

    words = f"may not be '{re.escape(value)}': .* the parent or this"
    with pytest.raises(ValidationError, match=words):
        render("https://pay.example/api/customers/{{id}}/refund", {"id": value}, url_text)
    assert render("https://pay.example/c/{{id}}", {"id": "..x"}, url_text) == \
        "https://pay.example/c/..x"
