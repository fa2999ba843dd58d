"""Migrations from empty on SQLite and PostgreSQL give exactly the models' schema."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from hub.db import Base, make_engine
from hub.migrate import upgrade


def _assert_matches_models(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent: already at head
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
            head = conn.execute(text("SELECT id, seq, hash FROM audit_head")).all()
            assert head == [(1, 0, "0" * 64)]
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) | {"alembic_version"} == tables
    finally:
        engine.dispose()


def test_upgrade_sqlite_from_empty(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    _assert_matches_models(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_upgrade_postgresql_from_empty(pg_db: str) -> None:
    _assert_matches_models(pg_db)


def test_upgrade_mariadb_from_empty(mysql_db: str) -> None:
    _assert_matches_models(mysql_db)
