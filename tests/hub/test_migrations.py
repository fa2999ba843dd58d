"""Migrations from empty on SQLite and PostgreSQL give exactly the models' schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from hub.db import Base, make_engine
from hub.migrate import alembic_config, head_revision, upgrade


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


def test_head_revision_read_from_the_scripts_is_alembics_head() -> None:
    """:func:`hub.migrate.head_revision` reads the scripts' revision lines instead of
    importing Alembic (every console command checks the head): the same answer."""
    from alembic.script import ScriptDirectory

    engine = make_engine("sqlite://")
    try:
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()
    assert head is not None
    assert head_revision() == head


def test_a_database_at_head_is_checked_without_importing_alembic(tmp_path: Path) -> None:
    """What every console command does first costs one query: Alembic (and each migration
    script) is imported only when there is something to migrate or to refuse."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    code = ("import sys\n"
            "from hub.db import make_engine\n"
            "from hub.migrate import ensure_current\n"
            f"engine = make_engine({url!r})\n"
            "assert ensure_current(engine) is None\n"
            "engine.dispose()\n"
            "assert 'alembic' not in sys.modules, 'alembic was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_an_upgrade_at_head_still_reports_broken_references_on_sqlite(tmp_path: Path) -> None:
    """A database at head is not migrated again (a query, no Alembic), but on SQLite the
    foreign-key check that ends every migration run still runs: broken references refuse
    the start as before, and the database is left as it was."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    upgrade(url)  # at head: nothing to do
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.exec_driver_sql("INSERT INTO role_grants (user_id, role, granted_at, "
                                 "granted_by) VALUES (99, 'admin', '2026-01-01', 'x')")
            conn.commit()
        with pytest.raises(RuntimeError, match="broken reference"):
            upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT user_id FROM role_grants")).all() == [(99,)]
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
                (head_revision(),)]
    finally:
        engine.dispose()
