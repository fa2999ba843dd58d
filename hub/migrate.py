"""Run the hub's Alembic migrations programmatically (no ``alembic.ini``).

``hub init`` and :func:`hub.app.create_app` call :func:`upgrade` to bring the database to
head; tests call it on empty SQLite and PostgreSQL databases. This module does not create
databases themselves (the operator or the fixture does).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from hub.db import make_engine

__all__ = ["MIGRATIONS_DIR", "alembic_config", "upgrade"]

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
