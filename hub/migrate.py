"""Run the hub's Alembic migrations programmatically (no ``alembic.ini``).

``hub init`` and :func:`hub.app.create_app` call :func:`upgrade` to bring the database to
head, and every console command calls :func:`ensure_current` (a newer hub installed over an
older database migrates it before the first query, instead of failing on a missing column);
tests call it on empty SQLite and PostgreSQL databases. This module does not create
databases themselves (the operator or the fixture does).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from hub.db import make_engine

__all__ = ["MIGRATIONS_DIR", "alembic_config", "ensure_current", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    """An Alembic config for ``engine``, built in code."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(target: Engine | str, revision: str = "head") -> None:
    """Upgrade the database behind ``target`` (an engine or URL) to ``revision``."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        command.upgrade(alembic_config(engine), revision)
    finally:
        if isinstance(target, str):
            engine.dispose()


def ensure_current(engine: Engine) -> tuple[str | None, str] | None:
    """Bring the database behind ``engine`` to head when it is behind: (the revision it was
    at, head) when it migrated, None when it was current already (one small query)."""
    cfg = alembic_config(engine)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if head is None or current == head:
        return None
    command.upgrade(cfg, "head")
    return current, head
