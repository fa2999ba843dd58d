"""Tests for agent.executors.sqlconn: DSNs, connecting, and keeping the password out of
everything an operator sees (real servers where a server is needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.executors.base import Connection
from agent.executors.sql import SqlExecutor
from agent.executors.sqlconn import DsnError, Target, parse_target
from tests.agent.executors.sqlcase import *  # noqa: F403  (fixtures db, pg, my, run, run_pg, run_my)
from tests.agent.executors.sqlcase import CONNECTION, Db, Runner
from tests.fixtures.databases import free_port

# --- connecting, secrets ------------------------------------------------------------------

PASSWORD = "s3cret-Pa55word-xyz"


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_unreachable_database_fails_clearly_without_leaking_the_password(
    tmp_path: Path, engine: str
) -> None:
    port = free_port()  # nothing listens there
    scheme = "postgresql" if engine == "postgres" else "mysql"
    dsn = f"{scheme}://deploy:{PASSWORD}@127.0.0.1:{port}/billing"
    runner = Runner(tmp_path, Db(engine, dsn, None))  # type: ignore[arg-type]
    ctx = runner.ctx("CREATE TABLE t (a INT);")

    outcome = SqlExecutor().run(ctx)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"cannot connect to {engine} connection '{CONNECTION}' at 127.0.0.1:{port}: "
    )
    assert "refused" in outcome.summary.lower()
    everything = outcome.summary + repr(outcome.details) + ctx.log.text()
    assert PASSWORD not in everything
    assert "deploy:" not in everything


def test_wrong_password_override_fails_without_leaking_it(run: Runner, db: Db) -> None:
    outcome = run.run("CREATE TABLE t (a INT);", params={"password": PASSWORD})
    assert outcome.status == "failed"
    assert outcome.summary.startswith(f"cannot connect to {db.engine} connection")
    assert any(w in outcome.summary for w in ("password authentication failed", "Access denied"))
    assert PASSWORD not in outcome.summary + repr(outcome.details) + run.log
    assert "t" not in db.tables()


def test_dsn_password_never_reaches_the_log(run: Runner, db: Db) -> None:
    server_password = db.server.password
    outcome = run.run(f"SELECT '{server_password}' AS echoed;")
    assert outcome.status == "succeeded", outcome.summary
    assert server_password not in run.log
    assert "[REDACTED]" in run.log
    assert server_password not in outcome.summary + repr(outcome.details)


def test_unix_socket_connections(run: Runner, db: Db) -> None:
    if db.engine == "postgres":
        dsn = (
            f"postgresql://{db.server.user}@:{db.server.port}/{db.name}?host={db.server.socket_dir}"
        )
        where = f"socket {db.server.socket_dir}"
    else:
        sock = db.server.socket_dir / "mysqld.sock"
        dsn = f"mysql://{db.server.user}@localhost/{db.name}?unix_socket={sock}"
        where = f"socket {sock}"
    password = {} if db.engine == "postgres" else {"password": db.server.password}
    outcome = run.run("CREATE TABLE via_socket (a INT);", params={"dsn": dsn, **password})
    assert outcome.status == "succeeded", outcome.summary
    assert f"at {where}" in run.log
    assert "via_socket" in db.tables()


@pytest.mark.parametrize(
    ("engine", "dsn"),
    [
        ("mysql", "mysql://deploy:pw@localhost/billing?unix_socket=/nonexistent/mysqld.sock"),
        ("postgres", "postgresql://deploy:pw@/billing?host=/nonexistent"),
    ],
)
def test_missing_socket_fails_clearly(tmp_path: Path, engine: str, dsn: str) -> None:
    outcome = Runner(tmp_path, Db(engine, dsn, None)).run("SELECT 1;")  # type: ignore[arg-type]
    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"cannot connect to {engine} connection '{CONNECTION}' at socket /nonexistent"
    )


# --- parsing DSNs (no server) -------------------------------------------------------------


def conn(dsn: str, **params: object) -> Connection:
    return Connection(CONNECTION, "x", {"dsn": dsn, **params})


@pytest.mark.parametrize(
    ("engine", "dsn", "params", "expected"),
    [
        (
            "postgres",
            "postgresql://deploy:p%40ss%2Fw@db.example:6432/billing?sslmode=require",
            {},
            Target("postgres", CONNECTION, "db.example", 6432, None, "deploy", "p@ss/w",
                   "billing", {"sslmode": "require"}),
        ),
        (
            "postgres",
            "postgres://deploy@/billing?host=/run/postgresql&connect_timeout=99",
            {"password": "override"},
            Target("postgres", CONNECTION, None, 5432, "/run/postgresql", "deploy", "override",
                   "billing", {}),
        ),
        (
            "mysql",
            "mysql://root:dsnpw@127.0.0.1/shop?unix_socket=/run/mysqld/mysqld.sock",
            {"password": "override"},
            Target("mysql", CONNECTION, None, 3306, "/run/mysqld/mysqld.sock", "root", "override",
                   "shop", {}),
        ),
        (
            "mysql",
            "mariadb://app@db:3307/shop?ssl_ca=/etc/ca.pem",
            {},
            Target("mysql", CONNECTION, "db", 3307, None, "app", None, "shop",
                   {"ssl_ca": "/etc/ca.pem"}),
        ),
    ],
)  # fmt: skip
def test_parse_target(engine: str, dsn: str, params: dict[str, object], expected: Target) -> None:
    assert parse_target(conn(dsn, **params), engine) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("engine", "dsn", "message"),
    [
        ("mysql", "", "has no 'dsn' parameter"),
        ("mysql", "postgresql://u:secretpw@h/db", "has a postgresql:// DSN; a mysql step needs"),
        ("mysql", "mysql://u:secretpw@h/db?charset=latin1", "unsupported DSN option(s) charset"),
        ("postgres", "postgresql://u:secretpw@h:notaport/db", "malformed DSN"),
        ("postgres", "postgresql://u:secretpw@h/", "without a database name"),
    ],
)
def test_unusable_dsn(engine: str, dsn: str, message: str) -> None:
    with pytest.raises(DsnError) as info:
        parse_target(conn(dsn), engine)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "secretpw" not in str(info.value)


def test_redaction_covers_raw_and_url_quoted_password() -> None:
    target = parse_target(conn("postgresql://u:p%40ss%2Fw@h/db"), "postgres")
    assert (
        target.redact("raw p@ss/w and quoted p%40ss%2Fw") == "raw [REDACTED] and quoted [REDACTED]"
    )
    assert "p@ss" not in repr(target)
    assert target.where() == "h:5432"


def test_step_secrets_are_redacted_from_summary_details_and_log(run: Runner, db: Db) -> None:
    token = "tok-9f8e7d6c5b4a"
    outcome = run.run(f"SELECT * FROM missing_{token};", secrets={"api-token": token})
    assert outcome.status == "failed"
    assert "missing_[REDACTED]" in outcome.summary
    assert token not in outcome.summary + repr(outcome.details) + run.log
