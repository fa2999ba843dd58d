"""Run the hub's Alembic migrations programmatically (no ``alembic.ini``).

``hub init`` and :func:`hub.app.create_app` call :func:`upgrade` to bring the database to
head, and every console command calls :func:`ensure_current` (a newer hub installed over an
older database migrates it before the first query, instead of failing on a missing column);
tests call it on empty SQLite and PostgreSQL databases. This module does not create
databases themselves (the operator or the fixture does).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command, util
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import tiangong
from hub.db import make_engine
from hub.errors import ConfigError

__all__ = ["MIGRATIONS_DIR", "alembic_config", "ensure_current", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    """An Alembic config for ``engine``, built in code."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def _refuse_newer(cfg: Config, engine: Engine, current: str | None) -> None:
    """Raise when the database is at a revision this hub does not know: a newer hub
    migrated it (this one was installed over it, e.g. an upgrade rolled back).

    Raises:
        ConfigError: names the revision, this hub's head and what to do.
    """
    if current is None:
        return
    script = ScriptDirectory.from_config(cfg)
    try:
        script.get_revision(current)
    except util.CommandError:
        raise ConfigError(
            f"the hub database {engine.url.render_as_string(hide_password=True)} is at "
            f"schema revision {current}, which this hub ({tiangong.__version__}, newest "
            f"revision {script.get_current_head()}) does not know: a newer hub migrated it. "
            "Install that hub again, or restore the backup taken before the upgrade; "
            "nothing was changed") from None


def upgrade(target: Engine | str, revision: str = "head") -> None:
    """Upgrade the database behind ``target`` (an engine or URL) to ``revision``.

    Raises:
        ConfigError: the database is at a revision this hub does not know (newer).
    """
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        cfg = alembic_config(engine)
        with engine.connect() as conn:
            _refuse_newer(cfg, engine, MigrationContext.configure(conn).get_current_revision())
        command.upgrade(cfg, revision)
    finally:
        if isinstance(target, str):
            engine.dispose()


def ensure_current(engine: Engine) -> tuple[str | None, str] | None:
    """Bring the database behind ``engine`` to head when it is behind: (the revision it was
    at, head) when it migrated, None when it was current already (one small query).

    Raises:
        ConfigError: the database is at a revision this hub does not know (newer).
    """
    cfg = alembic_config(engine)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if head is None or current == head:
        return None
    _refuse_newer(cfg, engine, current)
    command.upgrade(cfg, "head")
    return current, head
