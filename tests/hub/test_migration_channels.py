"""Migration 0007 on a hub that has products already: each gets RELEASE → CANARY → STABLE,
and its approved releases (only those) are in RELEASE; on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from hub.db import make_engine
from hub.migrate import upgrade

_ROWS = """
INSERT INTO users (id, username, display_name, email, is_active, source, created_at)
  VALUES (1, 'alice', 'alice', '', TRUE, 'local', '2026-11-01 10:00:00');
INSERT INTO products (id, name, description, created_at) VALUES
  (1, 'billing', '', '2026-11-01 10:00:00'), (2, 'ledger', '', '2026-11-01 10:00:00');
INSERT INTO releases (id, product_id, version, description, author_id, state, content_hash,
                      steps, files, stored_path, created_at) VALUES
  (1, 1, '1.0.0', '', 1, 'approved', :h, '[]', '[]', '', '2026-11-01 10:00:00'),
  (2, 1, '1.1.0', '', 1, 'submitted', :h, '[]', '[]', '', '2026-11-01 10:00:00'),
  (3, 2, '2.0.0', '', 1, 'rejected', :h, '[]', '[]', '', '2026-11-01 10:00:00'),
  (4, 1, '0.9.0', '', 1, 'approved', :h, '[]', '[]', '', '2026-11-01 10:00:00')
"""


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return str(request.getfixturevalue("pg_db" if request.param == "postgresql" else "mysql_db"))


def test_existing_products_get_default_channels_with_their_approved_releases(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine, "0006")
        with engine.begin() as conn:
            for statement in _ROWS.strip().split(";"):
                conn.execute(text(statement), {"h": "a" * 64})
        upgrade(engine)
        with engine.connect() as conn:
            channels = conn.execute(text(
                "SELECT p.name, c.name, c.position, c.required_approvals, c.min_successes, "
                "c.soak_seconds FROM channels c JOIN products p ON p.id = c.product_id "
                "ORDER BY p.name, c.position")).all()
            entries = conn.execute(text(
                "SELECT c.name, r.version, e.entered_by, e.recalled_at FROM channel_entries e "
                "JOIN channels c ON c.id = e.channel_id JOIN releases r ON r.id = e.release_id "
                "ORDER BY r.version")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in channels] == [
        ("billing", "RELEASE", 0, 0, 0, 0), ("billing", "CANARY", 1, 0, 0, 0),
        ("billing", "STABLE", 2, 0, 0, 0),
        ("ledger", "RELEASE", 0, 0, 0, 0), ("ledger", "CANARY", 1, 0, 0, 0),
        ("ledger", "STABLE", 2, 0, 0, 0)]
    assert [tuple(r) for r in entries] == [("RELEASE", "0.9.0", "migration", None),
                                           ("RELEASE", "1.0.0", "migration", None)]
