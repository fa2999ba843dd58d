"""hub.live_wake: a commit that queues a deployment or changes an agent's status sends one
datagram to every live server of its SQLite database, after the commit and never instead of
it; nothing else does; nothing a sender meets (no server, a stale socket, a full queue, a
directory it cannot list, a path too long for a socket address) fails the commit. And the
live server's socket: bound beside any database path, it wakes the push loop.

Sending is synchronous (a Unix datagram is in the receiver's queue when ``sendto`` returns),
so every count below is read at once: no waiting, no timing."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub.db import Agent, Deployment, Environment, Release, make_engine, make_session_factory
from hub.live_wake import (
    DRAIN_DATAGRAMS,
    MAX_ADDRESS_BYTES,
    SUFFIX,
    WakeSocket,
    send_wakeups,
    wake_dir,
)
from hub.services.agents import revoke_agent
from hub.services.deployments import queue_deployment
from hub.services.environments import create_environment
from hub.services.export_claims import claim
from hub.services.releases import get_release
from hub.services.users import bootstrap_admin
from tests.hub.conftest import PEOPLE, FakeClock, Keys, World, migrated_template, seed_people
from tests.hub.services.test_exchange import _approved_release

DEADLINE = 30.0  # seconds for the event loop to read a datagram on a loaded machine


@dataclass
class Site:
    """A hub database on a SQLite file, its sessions made by the hub's session factory (the
    one under test), an approved release and an enrolled agent ``site-01`` in ``test``."""

    world: World
    wake: Path

    def session(self) -> Session:
        return self.world.session

    def queued(self) -> int:
        return len(self.session().scalars(
            select(Deployment).where(Deployment.state == "queued")).all())


def _site(db_file: Path, clock: FakeClock, keys: Keys) -> Iterator[Site]:
    db_file.parent.mkdir(parents=True, exist_ok=True)
    target = sqlite3.connect(db_file)
    try:
        migrated_template().backup(target)
    finally:
        target.close()
    engine = make_engine(f"sqlite:///{db_file}")
    try:
        with make_session_factory(engine)() as session:
            bootstrap_admin(session, clock, "admin")
            world = World(session, clock, keys, db_file.parent / "releases")
            seed_people(world.ctx("admin"), PEOPLE)
            env = session.scalars(select(Environment).where(Environment.name == "test")).one()
            session.add(Agent(agent_id="site-01", environment_id=env.id,
                              ed25519_public="a" * 64, x25519_public="b" * 64,
                              enrolled_at=clock()))
            session.commit()
            _approved_release(world)
            wake = wake_dir(f"sqlite:///{db_file}")
            assert wake is not None
            yield Site(world, wake)
    finally:
        engine.dispose()


@pytest.fixture
def site(tmp_path: Path, clock: FakeClock, keys: Keys) -> Iterator[Site]:
    yield from _site(tmp_path / "hub.db", clock, keys)


class Receiver:
    """A live server's socket as a plain non-blocking datagram socket in the wake-up
    directory (the live server's own, WakeSocket, is tested below)."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)

    def received(self) -> int:
        """Datagrams waiting now (read, so the next call counts from here)."""
        count = 0
        while True:
            try:
                self.sock.recv(1)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receivers(site: Site) -> Iterator[list[Receiver]]:
    pair = [Receiver(site.wake, "1-a.sock"), Receiver(site.wake, "2-b.sock")]
    yield pair
    for r in pair:
        r.close()


def _release(site: Site) -> Release:
    return get_release(site.session(), "hello", "1.0.0")


def _queue(site: Site, environment: str = "test") -> None:
    """Queue the release for ``environment`` (made here when it is not ``test``)."""
    if environment != "test":
        create_environment(site.world.ctx("admin"), environment)
    queue_deployment(site.world.ctx("op"), _release(site), environment)


def test_the_wake_up_directory_is_beside_a_sqlite_file_and_nowhere_else() -> None:
    assert wake_dir("sqlite:////srv/hub/hub.db") == Path("/srv/hub/hub.db" + SUFFIX)
    assert wake_dir("sqlite://") is None
    assert wake_dir("sqlite:///:memory:") is None
    assert wake_dir("postgresql://u:p@db/hub") is None  # NOTIFY instead
    assert wake_dir("mysql://u:p@db/hub") is None  # may be on other hosts: it polls


def test_a_commit_that_queues_wakes_every_live_server_once_after_the_commit(
        site: Site, receivers: list[Receiver]) -> None:
    _queue(site)
    site.session().flush()
    assert [r.received() for r in receivers] == [0, 0]  # not before the commit
    fds = sorted(os.listdir("/proc/self/fd"))
    site.session().commit()
    assert [r.received() for r in receivers] == [1, 1]
    assert site.queued() == 1
    # the sender's socket was the call's own, closed (none left open for the process's life)
    assert sorted(os.listdir("/proc/self/fd")) == fds


def test_a_rollback_sends_nothing(site: Site, receivers: list[Receiver]) -> None:
    _queue(site)
    site.session().flush()
    site.session().rollback()
    site.session().commit()  # an empty transaction after it: still nothing noted
    assert [r.received() for r in receivers] == [0, 0]
    assert site.queued() == 0


def test_commits_that_queue_nothing_and_revoke_nobody_send_nothing(
        site: Site, receivers: list[Receiver]) -> None:
    _queue(site)
    site.session().commit()
    assert [r.received() for r in receivers] == [1, 1]
    dep = site.session().scalars(select(Deployment)).one()
    create_environment(site.world.ctx("admin"), "plant-b")  # nothing for a live server
    site.session().commit()
    assert claim(site.session(), dep.id, site.world.clock())  # queued -> exporting
    site.session().commit()
    agent = site.session().scalars(select(Agent)).one()
    agent.hostname = "renamed"  # an agent's row changes, not its status
    site.session().commit()
    site.session().execute(update(Deployment).where(Deployment.id == dep.id)
                           .values(claimed_by=None).execution_options(synchronize_session=False))
    site.session().commit()  # what releasing a claim does: the state is not set
    assert [r.received() for r in receivers] == [0, 0]


def test_a_revocation_and_a_conditional_update_to_queued_wake(
        site: Site, receivers: list[Receiver]) -> None:
    revoke_agent(site.world.ctx("admin"), "site-01", reason="stolen")
    site.session().commit()
    assert [r.received() for r in receivers] == [1, 1]
    _queue(site)
    site.session().commit()
    assert [r.received() for r in receivers] == [1, 1]
    dep = site.session().scalars(select(Deployment)).one()
    site.session().execute(update(Deployment).where(Deployment.id == dep.id)
                           .values(state="planned").execution_options(synchronize_session=False))
    site.session().commit()
    assert [r.received() for r in receivers] == [0, 0]  # planned: not for a live server
    # what a window that opens or an approval that completes does (hub.services.promotion)
    site.session().execute(update(Deployment).where(Deployment.id == dep.id,
                                                    Deployment.state == "planned")
                           .values(state="queued").execution_options(synchronize_session=False))
    site.session().commit()
    assert [r.received() for r in receivers] == [1, 1]


def _stale(site: Site) -> Path:
    """A socket whose live server is gone: its file stays, nobody reads it."""
    gone = Receiver(site.wake, "99-gone.sock")
    gone.close()
    return gone.path


def test_what_a_sender_meets_never_fails_the_commit(site: Site, tmp_path: Path) -> None:
    # No live server has ever run: no directory.
    _queue(site)
    site.session().commit()
    assert site.queued() == 1 and not site.wake.exists()

    # A stale socket next to a live one: the live one is woken, the stale one removed.
    live = Receiver(site.wake, "1-live.sock")
    stale = _stale(site)
    other = site.wake / "notes.txt"  # not a socket: never sent to, never removed
    other.write_text("an operator's file\n")
    _queue(site, "plant-b")
    site.session().commit()
    assert live.received() == 1 and not stale.exists() and other.exists()

    # A live server that does not read: its queue fills, the senders go on.
    for _ in range(2000):
        assert send_wakeups(site.wake) in (0, 1)
    revoke_agent(site.world.ctx("admin"), "site-01")
    site.session().commit()
    assert live.received() > 0 and live.path.exists()
    live.close()


def test_a_wake_up_directory_that_cannot_be_listed_fails_nothing(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    site.wake.write_text("not a directory\n")
    _queue(site)
    site.session().commit()
    assert site.queued() == 1
    assert site.wake.read_text() == "not a directory\n"
    assert "cannot list the live servers' sockets" in caplog.text


def test_a_path_too_long_for_a_socket_address_still_wakes(
        tmp_path: Path, clock: FakeClock, keys: Keys) -> None:
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    sites = _site(deep / "hub.db", clock, keys)
    site = next(sites)
    try:
        assert len(os.fsencode(site.wake / "1-a.sock")) > MAX_ADDRESS_BYTES

        async def scenario() -> None:
            woken = asyncio.Event()
            server = WakeSocket(site.wake, woken.set)
            assert server.open() and server.path is not None and server.path.exists()
            assert server.path.parent == site.wake
            assert site.wake.stat().st_mode & 0o777 == 0o700
            try:
                _queue(site)
                await asyncio.to_thread(site.session().commit)  # as a web worker's thread
                await asyncio.wait_for(woken.wait(), DEADLINE)
                assert site.queued() == 1
            finally:
                path = server.path
                server.close()
            assert not path.exists()  # senders skip a closed server

        asyncio.run(scenario())
    finally:
        sites.close()


def test_the_live_servers_socket_is_bound_again_when_its_file_is_removed(
        tmp_path: Path) -> None:
    directory = tmp_path / "hub.db-wake"

    async def scenario() -> None:
        woken = asyncio.Event()
        server = WakeSocket(directory, woken.set)
        assert server.open()
        first = server.path
        assert first is not None
        first.unlink()  # someone cleaned the directory
        assert send_wakeups(directory) == 0
        server.check()
        assert server.path is not None and server.path != first and server.path.exists()
        assert send_wakeups(directory) == 1
        await asyncio.wait_for(woken.wait(), DEADLINE)
        server.check()  # still there: nothing changes
        assert server.path.exists() and len(list(directory.iterdir())) == 1
        server.close()
        assert list(directory.iterdir()) == []

    asyncio.run(scenario())


def test_the_web_apps_sessions_wake_too(tmp_path: Path, clock: FakeClock) -> None:
    """The web UI commits through Flask-SQLAlchemy's ``db.session``, not the factory."""
    from hub.app import create_app
    from hub.db import db

    (tmp_path / "hub").mkdir()
    app = create_app({"data_dir": tmp_path / "hub", "secret_key": "k" * 32})
    wake = wake_dir(app.config["SQLALCHEMY_DATABASE_URI"])
    assert wake == tmp_path / "hub" / ("hub.db" + SUFFIX)
    receiver = Receiver(wake, "1-web.sock")
    try:
        with app.app_context():
            env = Environment(name="plant-a", created_at=clock())
            db.session.add(env)
            db.session.flush()
            agent = Agent(agent_id="site-01", environment_id=env.id, ed25519_public="a" * 64,
                          x25519_public="b" * 64, enrolled_at=clock())
            db.session.add(agent)
            db.session.commit()
            assert receiver.received() == 0  # an enrolled agent is nothing to push to yet
            agent.status = "revoked"
            db.session.commit()
            assert receiver.received() == 1
            db.session.remove()
    finally:
        receiver.close()


def test_a_savepoint_neither_sends_before_the_commit_nor_forgets_the_transactions_work(
        site: Site, receivers: list[Receiver]) -> None:
    """A savepoint released (web/api/runs.py ships an ad-hoc run in one) is not the commit:
    a datagram then woke a poll that could not see the deployment yet, and the commit sent
    none. A savepoint rolled back forgets only what was noted inside it."""
    session = site.session()
    with session.begin_nested():
        _queue(site)
    assert [r.received() for r in receivers] == [0, 0]  # nobody else sees it yet
    session.commit()
    assert [r.received() for r in receivers] == [1, 1]

    _queue(site, "plant-b")
    session.flush()  # queued in the transaction, before the savepoint
    savepoint = session.begin_nested()
    session.add(Environment(name="plant-c", created_at=site.world.clock()))
    session.flush()
    savepoint.rollback()  # e.g. ConflictError in hub.services.promotion._enter
    session.commit()
    assert [r.received() for r in receivers] == [1, 1]
    assert site.queued() == 2

    savepoint = session.begin_nested()
    _queue(site, "plant-d")
    session.flush()  # noted inside the savepoint only
    savepoint.rollback()
    session.commit()
    assert [r.received() for r in receivers] == [0, 0]
    assert site.queued() == 2


def test_a_session_closed_without_a_commit_forgets_what_it_flushed(
        site: Site, receivers: list[Receiver]) -> None:
    session = site.session()
    _queue(site)
    session.flush()
    session.close()  # its transaction rolled back without after_rollback
    create_environment(site.world.ctx("admin"), "plant-b")  # the session used again
    session.commit()
    assert [r.received() for r in receivers] == [0, 0]
    assert site.queued() == 0


def test_senders_that_refill_the_queue_as_fast_as_it_is_read_never_hold_the_event_loop(
        tmp_path: Path) -> None:
    """The live server reads a bounded number of datagrams per readable event and wakes
    once; it read until the queue was empty, so a queue refilled as fast as it was read
    kept it there (no heartbeat, no transfer served)."""

    class Flooded:
        reads = 0

        def recv(self, _size: int) -> bytes:
            self.reads += 1
            if self.reads > 10 * DRAIN_DATAGRAMS:
                raise AssertionError("still reading")
            return b""  # another datagram, always

    wakes: list[None] = []
    server = WakeSocket(tmp_path / "hub.db-wake", lambda: wakes.append(None))
    flooded = Flooded()
    server._sock = flooded  # type: ignore[assignment]
    server._readable()
    assert flooded.reads == DRAIN_DATAGRAMS and len(wakes) == 1
    assert not (tmp_path / "hub.db-wake").exists()


def test_a_session_bound_to_a_connection_wakes_and_its_commit_does_not_raise(
        site: Site, receivers: list[Receiver]) -> None:
    """A session of the hub's factory joined to a connection (``factory(bind=connection)``,
    SQLAlchemy's way into an outer transaction) got an AttributeError from the wake-up
    after its commit had happened."""
    database = site.wake.with_name(site.wake.name.removesuffix(SUFFIX))
    site.session().commit()
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            session = make_session_factory(engine)(bind=connection)
            session.execute(update(Agent).where(Agent.agent_id == "site-01")
                            .values(status="revoked"))
            session.commit()
            session.close()
    finally:
        engine.dispose()
    assert [r.received() for r in receivers] == [1, 1]
    site.session().expire_all()
    assert site.session().scalars(select(Agent.status)).one() == "revoked"


def test_a_symbolic_link_in_the_wake_up_directory_is_never_followed(
        site: Site, receivers: list[Receiver], tmp_path: Path) -> None:
    """A live server binds its socket there, never a link: a ``*.sock`` link to a socket
    elsewhere (another program's, ``/dev/log``) made every committing process send to it
    with the hub's rights."""
    elsewhere = Receiver(tmp_path / "elsewhere", "other-program.sock")
    link = site.wake / "9-link.sock"
    link.symlink_to(elsewhere.path)
    try:
        _queue(site)
        site.session().commit()
        assert [r.received() for r in receivers] == [1, 1]
        assert elsewhere.received() == 0
        assert link.is_symlink() and elsewhere.path.is_socket()
    finally:
        elsewhere.close()


def test_a_socket_that_cannot_be_bound_again_is_tried_again_every_round(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The directory removed while the live server runs and, for a while, something else in
    its place (or a full disk): binding again failed once and was never tried again, so the
    live server had no wake-ups until it was restarted. It is tried at every round, the
    failure logged once, and the file in the way left alone."""
    directory = tmp_path / "hub.db-wake"

    async def scenario() -> None:
        woken = asyncio.Event()
        server = WakeSocket(directory, woken.set)
        assert server.open()
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()
        directory.write_text("in the way\n")  # mkdir fails: not a directory
        for _ in range(3):
            server.check()
            assert not server.listening
        assert directory.read_text() == "in the way\n"
        assert caplog.text.count("cannot listen for local wake-ups") == 1
        directory.unlink()
        server.check()
        assert server.listening and server.path is not None and server.path.exists()
        assert send_wakeups(directory) == 1
        await asyncio.wait_for(woken.wait(), DEADLINE)
        server.close()
        assert list(directory.iterdir()) == []
        server.check()  # closed for good: not bound again
        assert not server.listening and list(directory.iterdir()) == []

    asyncio.run(scenario())
