"""The SAML replay store in the hub database, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from hub.db import make_engine
from hub.migrate import upgrade
from web.replay import ReplayCache, ReplayCacheFullError, ReplayedError

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    elif request.param == "postgresql":
        url = request.getfixturevalue("pg_db")
    else:
        url = request.getfixturevalue("mysql_db")
    eng = make_engine(url)
    upgrade(eng)
    yield eng
    eng.dispose()


def test_an_id_is_claimed_once_until_it_expires(engine: Engine) -> None:
    cache = ReplayCache(engine)
    cache.claim(["resp-1", "assert-1"], LATER, NOW)
    assert "resp-1" in cache and "assert-1" in cache and "resp-2" not in cache
    with pytest.raises(ReplayedError):
        cache.claim(["resp-2", "assert-1"], LATER, NOW)
    assert "resp-2" not in cache  # all or none
    # after its NotOnOrAfter the ID is forgotten (and may be claimed again)
    cache.claim(["assert-1"], LATER + timedelta(minutes=5), LATER)
    with pytest.raises(ReplayedError):
        cache.claim(["assert-1"], LATER + timedelta(minutes=5), LATER)


def test_a_full_store_refuses_new_logins_instead_of_forgetting(engine: Engine) -> None:
    cache = ReplayCache(engine, max_entries=2)
    cache.claim(["a", "b"], LATER, NOW)
    with pytest.raises(ReplayCacheFullError, match="saml_replay"):
        cache.claim(["c"], LATER, NOW)
    assert "c" not in cache
    cache.claim(["c"], LATER + timedelta(minutes=5), LATER)  # a and b expired meanwhile


def test_two_workers_racing_with_one_response_cannot_both_win(engine: Engine) -> None:
    caches = [ReplayCache(engine) for _ in range(4)]
    barrier = threading.Barrier(len(caches))
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(cache: ReplayCache) -> None:
        barrier.wait(timeout=30)
        try:
            cache.claim(["same-response"], LATER, NOW)
            result = "won"
        except ReplayedError:
            result = "replayed"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["replayed"] * 3 + ["won"]
