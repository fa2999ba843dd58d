"""Run the hub's Alembic migrations programmatically (no ``alembic.ini``).

``hub init`` and :func:`hub.app.create_app` call :func:`upgrade` to bring the database to
head, and every console command calls :func:`ensure_current` (a newer hub installed over an
older database migrates it before the first query, instead of failing on a missing column);
tests call it on empty SQLite and PostgreSQL databases. This module does not create
databases themselves (the operator or the fixture does).

Alembic is imported only to migrate or to explain a refusal: a console command on a database
already at head (the usual case) costs one small query and reading the revision lines of
``migrations/versions/*.py`` (:func:`head_revision`), not Alembic's import and the import of
every migration script.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

import tiangong
from hub.db import make_engine
from hub.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["MIGRATIONS_DIR", "alembic_config", "ensure_current", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps

_REVISION = re.compile(r'^revision = "([^"\n]+)"$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision = (?:"([^"\n]+)"|None)$', re.MULTILINE)


def alembic_config(engine: Engine) -> Config:
    """An Alembic config for ``engine``, built in code."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


@functools.cache
def head_revision() -> str | None:
    """The head revision of ``migrations/versions``, read from each script's ``revision =``
    and ``down_revision =`` lines without importing Alembic or the scripts; None when the
    scripts are not one plain chain with one head (then only Alembic can say: callers fall
    back to it). tests/hub/test_migrations.py checks it against Alembic's own head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        revision, down = _REVISION.findall(source), _DOWN_REVISION.findall(source)
        if len(revision) != 1 or len(down) != 1:
            return None
        revisions.add(revision[0])
        if down[0]:
            parents.add(down[0])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def _database_revisions(conn: Connection) -> tuple[str, ...]:
    """The revisions in the database's version table (none when it has no such table)."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return ()
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))  # noqa: S608
    return tuple(str(row[0]) for row in rows)


def _at_head(engine: Engine, *, check_references: bool) -> bool:
    """Whether the database is at :func:`head_revision` (one small query, no Alembic).
    ``check_references``: on SQLite also run the foreign-key check that a migration run ends
    with (``migrations/env.py``), and answer False when it finds broken references, so that
    the caller's migration run reports them as it always did."""
    head = head_revision()
    if head is None:
        return False
    with engine.connect() as conn:
        if _database_revisions(conn) != (head,):
            return False
        if check_references and conn.dialect.name == "sqlite":
            return conn.exec_driver_sql("PRAGMA foreign_key_check").first() is None
    return True


def _refuse_newer(cfg: Config, engine: Engine, current: str | None) -> None:
    """Raise when the database is at a revision this hub does not know: a newer hub
    migrated it (this one was installed over it, e.g. an upgrade rolled back).

    Raises:
        ConfigError: names the revision, this hub's head and what to do.
    """
    from alembic import util
    from alembic.script import ScriptDirectory

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
    """Upgrade the database behind ``target`` (an engine or URL) to ``revision``; a database
    already at head costs a query or two (``hub serve`` and every web app start call this).

    Raises:
        ConfigError: the database is at a revision this hub does not know (newer).
    """
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        if revision == "head" and _at_head(engine, check_references=True):
            return
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        cfg = alembic_config(engine)
        with engine.connect() as conn:
            _refuse_newer(cfg, engine, MigrationContext.configure(conn).get_current_revision())
        command.upgrade(cfg, revision)
    finally:
        if isinstance(target, str):
            engine.dispose()


def ensure_current(engine: Engine) -> tuple[str | None, str] | None:
    """Bring the database behind ``engine`` to head when it is behind: (the revision it was
    at, head) when it migrated, None when it was current already (one small query, and no
    Alembic import).

    Raises:
        ConfigError: the database is at a revision this hub does not know (newer).
    """
    if _at_head(engine, check_references=False):
        return None
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = alembic_config(engine)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if head is None or current == head:
        return None
    _refuse_newer(cfg, engine, current)
    command.upgrade(cfg, "head")
    return current, head
