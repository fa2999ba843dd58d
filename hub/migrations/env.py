"""Alembic environment for the hub: online migrations only, engine passed in by
``hub.migrate`` (``config.attributes["engine"]``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from hub.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    owned = engine is None
    if engine is None:
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # A batch migration rebuilds a table (create, copy, drop, rename); with
                # foreign keys enforced, dropping a table other rows refer to fails. SQLite's
                # own recipe: switch enforcement off outside the transaction, check every
                # reference before committing, switch it back on.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                compare_type=True,
            )
            try:
                with context.begin_transaction():
                    context.run_migrations()
                    if sqlite:
                        _check_references(connection)
            finally:
                if sqlite:
                    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                    connection.commit()
    finally:
        if owned:
            engine.dispose()


def _check_references(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        first = ", ".join(f"{row[0]} row {row[1]} -> {row[2]}" for row in broken[:5])
        raise RuntimeError(f"the migration left {len(broken)} broken reference(s): {first}")


if context.is_offline_mode():
    raise RuntimeError("the hub's migrations run online only (hub.migrate.upgrade)")
run_migrations_online()
