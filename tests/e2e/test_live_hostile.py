"""The live channel under a hostile peer (issue 10): a client written from
docs/live-protocol.md alone — a raw ``websockets`` connection, messages framed as §2.2 says,
the AUTH signature built as §5.2 says — against a real ``tiangong hub live`` process over
TLS on 127.0.0.1. Nothing of ``bundle.sync`` or ``agent.live`` is used to speak the protocol.

One hub data directory is set up per module (``hub init``, six enrolled agents, two queued
releases); each test starts its own ``hub live`` process on it with the limits it needs
(``TIANGONG_HUB_LIVE_*``). Clients bind to different loopback source addresses
(127.0.0.N) where a test needs a source of its own: the per-address caps and back-off count
sources. Every wait has a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from agent.home import init_home
from signing.keyfile import load_private_key
from signing.keys import SigningKey
from tests.e2e.conftest import TIANGONG, run, wait_for
from tests.e2e.test_live_serve import _accepts, free_port
from tests.hub.conftest import write_release

DEADLINE = 30.0  # seconds for anything that crosses the socket or a process boundary
HUB_ID = "hub-hostile"
BIG_MIB = 16  # MiB of random payload: more than the socket buffers of a peer that stops reading
AGENTS = {  # agent id -> environment
    "agent-a": "plant-a",
    "agent-b": "plant-a",
    "agent-a--x": "plant-idle",
    "stuck-01": "plant-big",
    "upload-01": "plant-idle",
    "login-01": "plant-idle",
}
_T = TypeVar("_T")

# -- the protocol, from docs/live-protocol.md -----------------------------------------------

HELLO, CHALLENGE, AUTH, WELCOME, REFUSE = 0x01, 0x02, 0x03, 0x04, 0x05
OFFER, RESUME, CHUNK, ACK, DONE, RECEIVED, CANCEL = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16
LOG = 0x20
RESULT_OFFER, RESULT_CHUNK, RESULT_DONE = 0x30, 0x31, 0x32
HEARTBEAT, HEARTBEAT_ACK, ERROR = 0x40, 0x41, 0x7F


def encode(mtype: int, header: dict[str, Any], body: bytes = b"") -> bytes:
    """§2.2: type byte, header length (2 bytes, big endian), canonical JSON header, body."""
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack(">BH", mtype, len(raw)) + raw + body


def decode(data: bytes) -> tuple[int, dict[str, Any], bytes]:
    mtype, n = struct.unpack_from(">BH", data)
    return mtype, json.loads(data[3:3 + n]), data[3 + n:]


def auth_signature(key: SigningKey, agent_id: str, nonce: bytes, binding: bytes) -> bytes:
    """§5.2: length-prefixed fields after the domain tag, signed with the agent's key."""
    fields = (b"tiangong-live-auth-v1", HUB_ID.encode(), agent_id.encode(), nonce, binding)
    return key.sign(b"".join(struct.pack(">I", len(f)) + f for f in fields))


# -- the site --------------------------------------------------------------------------------


@dataclass
class Site:
    tmp: Path
    data: Path
    env: dict[str, str]
    keys: dict[str, SigningKey]

    def hub(self, *args: str, user: str = "admin") -> subprocess.CompletedProcess[str]:
        return run("hub", "--local-admin", user, *args, env=self.env)

    def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.data / 'hub.db'}?mode=ro",
                                                uri=True, timeout=10)) as db:
            return db.execute(query, args).fetchall()

    def bundle_id(self, agent_id: str) -> str | None:
        rows = self.sql("SELECT d.bundle_id FROM deployments d JOIN agents a "
                        "ON a.id = d.agent_id WHERE a.agent_id = ?", agent_id)
        return rows[0][0] if rows else None

    def last_seen(self, agent_id: str) -> str | None:
        ((seen,),) = self.sql("SELECT last_seen FROM agents WHERE agent_id = ?", agent_id)
        return str(seen) if seen is not None else None

    def refusals(self) -> list[dict[str, Any]]:
        events = json.loads(self.hub("audit", "show", "--last", "1000", "--json").stdout)
        return [{"object": e["object"], **json.loads(e["details"])} for e in events
                if e["action"] == "live.refused"]

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.data / "tls" / "ca.crt"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """An initialised hub with a TLS certificate for 127.0.0.1, the agents of
    :data:`AGENTS` enrolled, ``relay 1.0.0`` queued for plant-a and a ``big 1.0.0`` of
    :data:`BIG_MIB` MiB queued for plant-big."""
    tmp = tmp_path_factory.mktemp("hostile")
    data = tmp / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "root-pass"}
    s = Site(tmp, data, env, {})
    s.hub("init", "--admin", "admin", "--hub-id", HUB_ID, "--tls-name", "127.0.0.1")
    for name, role in (("alice", "developer"), ("bob", "approver"), ("carol", "operator")):
        s.hub("users", "create", name)
        s.hub("users", "grant", name, role)
    for environment in sorted(set(AGENTS.values())):
        s.hub("environments", "create", environment)
    requests = tmp / "requests"
    requests.mkdir()
    for agent_id, environment in AGENTS.items():
        config, request = init_home(tmp / "agents" / agent_id, root_file=data / "root.json",
                                    agent_id=agent_id, environment=environment)
        shutil.move(request, requests / request.name)
        s.keys[agent_id] = load_private_key(config.keys_dir / "identity.key",
                                            passphrase=None).signing_key()
    s.hub("import", str(requests), user="carol")
    for product, payload_mib, environment in (("relay", 0, "plant-a"),
                                              ("big", BIG_MIB, "plant-big")):
        src = write_release(tmp / "src", product, "1.0.0", {"noop": "true\n"})
        if payload_mib:
            (src / "data").mkdir()
            (src / "data" / "blob.bin").write_bytes(os.urandom(payload_mib * 1024 * 1024))
        run("hub", "--local-admin", "alice", "releases", "create", str(src), "--create-product",
            env=env, check=False)  # an unreferenced file is a warning
        s.hub("releases", "submit", product, "1.0.0", user="alice")
        s.hub("releases", "approve", product, "1.0.0", user="bob")
        s.hub("deployments", "queue", product, "1.0.0", "--environment", environment,
              user="carol")
    return s


@dataclass
class Live:
    """One ``tiangong hub live`` process on the module's hub."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/live"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss(self) -> int:
        """Resident set size of the process, bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_live(site: Site, tmp_path: Path) -> Iterator[Callable[..., Live]]:
    """``start_live(**limits)``: a ``hub live`` process with ``[live]`` limits set through
    ``TIANGONG_HUB_LIVE_<NAME>``, stopped (SIGTERM) at the end of the test."""
    started: list[Live] = []

    def start(**limits: object) -> Live:
        port = free_port()
        env = {**os.environ, **site.env,
               **{f"TIANGONG_HUB_LIVE_{k.upper()}": str(v) for k, v in limits.items()}}
        log_path = tmp_path / f"hub-live-{len(started)}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen([*TIANGONG, "hub", "--data-dir", str(site.data), "live",
                                     "--bind", f"127.0.0.1:{port}"],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
        live = Live(proc, port, log_path)
        started.append(live)
        wait_for(lambda: proc.poll() is not None or _accepts(port), DEADLINE,
                 "hub live to listen")
        assert proc.poll() is None, live.log()
        return live

    yield start
    for live in started:
        live.stop()


# -- the hostile client ----------------------------------------------------------------------


@dataclass
class Peer:
    ws: ClientConnection
    binding: bytes
    seen: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    async def send(self, mtype: int, header: dict[str, Any], body: bytes = b"") -> None:
        await self.ws.send(encode(mtype, header, body))

    async def recv(self) -> tuple[int, dict[str, Any], bytes]:
        data = await asyncio.wait_for(self.ws.recv(), DEADLINE)
        assert isinstance(data, bytes)
        mtype, header, body = decode(data)
        self.seen.append((mtype, header))
        return mtype, header, body

    async def expect(self, *types: int) -> dict[str, Any]:
        """The header of the next message of one of ``types``, skipping others (offers,
        heartbeat answers, chunks)."""
        while True:
            mtype, header, _ = await self.recv()
            if mtype in types:
                return header

    async def closed(self) -> int | None:
        """Read until the hub closes; its close code."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.recv()
        return self.ws.close_code

    async def sync(self, n: int) -> None:
        """HEARTBEAT ``n`` and its answer: the hub handles one connection's messages in
        order, so everything sent before is handled."""
        await self.send(HEARTBEAT, {"id": n})
        while (await self.expect(HEARTBEAT_ACK))["id"] != n:
            pass


async def open_peer(live: Live, site: Site, *, source: str = "127.0.0.1",
                    rcvbuf: int | None = None, max_queue: int = 16) -> Peer:
    """A TLS WebSocket from ``source`` (a loopback address), nothing sent yet. ``rcvbuf``
    shrinks the socket's receive buffer (a peer that stops reading fills it soon)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    ws = await connect(live.url, sock=sock, ssl=site.tls(), server_hostname="127.0.0.1",
                       compression=None, max_size=4 * 1024 * 1024, max_queue=max_queue,
                       ping_interval=None, open_timeout=DEADLINE)
    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return Peer(ws, hashlib.sha256(der).digest())


async def login(live: Live, site: Site, agent_id: str, *, key: SigningKey | None = None,
                source: str = "127.0.0.1", **options: Any) -> Peer:
    """HELLO, CHALLENGE, AUTH (§5.1); returns after WELCOME. Fails on REFUSE."""
    peer = await open_peer(live, site, source=source, **options)
    await peer.send(HELLO, {"version": 1, "agent_id": agent_id, "hub_id": HUB_ID})
    mtype, header, _ = await peer.recv()
    assert mtype == CHALLENGE, (mtype, header)
    signature = auth_signature(key or site.keys[agent_id], agent_id,
                               bytes.fromhex(header["nonce"]), peer.binding)
    await peer.send(AUTH, {"signature": signature.hex()})
    mtype, header, _ = await peer.recv()
    assert mtype == WELCOME, (mtype, header)
    return peer


async def refused(peer: Peer) -> tuple[str, int | None]:
    """The code of the REFUSE or ERROR the hub sends next, and its close code."""
    header = await peer.expect(REFUSE, ERROR)
    return header["code"], await peer.closed()


def arun(coro: Awaitable[_T]) -> _T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def logs_dir(site: Site) -> Path:
    return site.data / "live-logs"


def tree(path: Path) -> dict[str, int]:
    """Every file under ``path`` and its size (what "nothing changed" compares)."""
    return {str(p.relative_to(path)): p.stat().st_size
            for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


# -- §1.1, §1.2: everything an agent sends is bound to what the hub addressed to it ----------


def test_an_agent_cannot_write_into_another_agents_deployment_log(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live()

    async def scenario() -> tuple[str, int | None, str, list[dict[str, Any]]]:
        b = await login(live, site, "agent-b")
        await b.expect(OFFER)  # its bundle was exported for it on connecting
        bundle = site.bundle_id("agent-b")
        assert bundle is not None
        for seq in range(3):
            await b.send(LOG, {"bundle_id": bundle, "step": 0, "seq": seq, "stream": "stdout"},
                         f"agent-b line {seq}".encode())
        await b.sync(1)
        before = tree(logs_dir(site))
        a = await login(live, site, "agent-a")
        await a.send(LOG, {"bundle_id": bundle, "step": 3, "seq": 3, "stream": "stderr"},
                     b"FORGED-BY-agent-a: step 3 FAILED, database dropped")
        code, close = await refused(a)
        assert tree(logs_dir(site)) == before  # nothing stored, nothing created
        # B's own next line takes seq 3: A did not take it.
        await b.send(LOG, {"bundle_id": bundle, "step": 0, "seq": 3, "stream": "stdout"},
                     b"agent-b line 3")
        await b.sync(2)
        await b.ws.close()
        return code, close, bundle, log_lines(logs_dir(site) / "agent-b" / f"{bundle}.log")

    code, close, bundle, lines = arun(scenario())
    assert (code, close) == ("forbidden", 4016)
    assert [(r["seq"], r["text"]) for r in lines] == [(n, f"agent-b line {n}") for n in range(4)]
    assert not (logs_dir(site) / "agent-a").exists()
    assert f"agent agent-a sent LOG for bundle {bundle!r}" in live.log()


def test_log_lines_for_made_up_bundle_ids_are_refused_and_store_nothing(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live()
    before = tree(logs_dir(site))

    async def scenario() -> tuple[str, int | None]:
        a = await login(live, site, "agent-a")
        for n in range(3):  # the first closes the connection; the rest are never read
            await a.send(LOG, {"bundle_id": f"invented-{n}", "step": 0, "seq": 0,
                               "stream": "stdout"}, b"x" * 16384)
        return await refused(a)

    assert arun(scenario()) == ("forbidden", 4016)
    assert tree(logs_dir(site)) == before


def test_log_storage_stops_at_the_agents_quota_with_a_note(
        site: Site, start_live: Callable[..., Live]) -> None:
    quota = 64 * 1024
    live = start_live(log_quota_agent_bytes=quota)

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        b = await login(live, site, "agent-b")
        await b.expect(OFFER)  # exported for agent-b by now
        bundle = site.bundle_id("agent-b")
        assert bundle is not None
        path = logs_dir(site) / "agent-b" / f"{bundle}.log"
        start = max((r["seq"] for r in log_lines(path)), default=-1) + 1
        for seq in range(start, start + 10):  # 160 KiB of text
            await b.send(LOG, {"bundle_id": bundle, "step": 1, "seq": seq, "stream": "stdout"},
                         b"y" * 16384)
        await b.sync(1)  # the connection stays open: a quota is no protocol violation
        await b.ws.close()
        return bundle, log_lines(path)

    _, lines = arun(scenario())
    stored = sum(p.stat().st_size for p in (logs_dir(site) / "agent-b").glob("*.log"))
    assert stored <= quota
    assert lines[-1]["stream"] == "info"
    assert "the quota of agent agent-b (65536 bytes, [live] log_quota_agent_bytes)" in (
        lines[-1]["text"])
    assert "log_quota_agent_bytes" in live.log()


@pytest.mark.parametrize(("mtype", "header"), [
    (RESUME, {"offset": 0}),
    (ACK, {"offset": 0}),
    (RECEIVED, {}),
    (CANCEL, {"offered_by": "hub", "code": "have-it", "text": "mine now"}),
    (RESULT_CHUNK, {"offset": 0}),
    (RESULT_DONE, {}),
], ids=["resume", "ack", "received", "cancel", "result-chunk", "result-done"])
def test_transfer_messages_for_a_bundle_not_offered_to_this_agent_close_the_connection(
        site: Site, start_live: Callable[..., Live], mtype: int, header: dict[str, Any]
) -> None:
    """agent-a names the transfer the hub offers agent-b (its bundle's file): refused,
    closed, and agent-b's spooled bundle is still waiting for agent-b."""
    live = start_live()
    spool = site.data / "live-outbox" / "agent-b"

    async def offered() -> str:
        b = await login(live, site, "agent-b")
        transfer = (await b.expect(OFFER))["transfer"]
        await b.ws.close()
        return str(transfer)

    # Taken once agent-b was offered its bundle (the hub may spool it only then): the test
    # does not lean on earlier tests of this file having filled the spool.
    transfer = arun(offered())
    before = tree(spool)

    async def scenario() -> tuple[str, int | None]:
        a = await login(live, site, "agent-a")
        body = b"z" if mtype == RESULT_CHUNK else b""
        await a.send(mtype, {"transfer": transfer, **header}, body)
        return await refused(a)

    code, close = arun(scenario())
    assert (code, close) == ("out-of-order", 4005)
    assert tree(spool) == before and any(spool.glob("*.tgb"))


# -- §1.3: names on disk never collide ------------------------------------------------------


def test_ids_with_double_dashes_never_share_a_partial_upload(
        site: Site, start_live: Callable[..., Live]) -> None:
    """agent-a--x / r1 and agent-a / x--r1 made the same file name."""
    live = start_live()
    victim_bytes = os.urandom(256 * 1024)
    size = 512 * 1024
    offer = {"name": "r1.tgr", "size": size, "sha256": hashlib.sha256(b"?").hexdigest(),
             "parts": []}

    async def scenario() -> int:
        victim = await login(live, site, "agent-a--x")
        await victim.send(RESULT_OFFER, {"transfer": "r1", **offer})
        assert (await victim.expect(RESUME))["offset"] == 0
        await victim.send(RESULT_CHUNK, {"transfer": "r1", "offset": 0}, victim_bytes)
        await victim.sync(1)
        await victim.ws.close()  # abandoned: kept for a resume by agent-a--x only
        attacker = await login(live, site, "agent-a")
        await attacker.send(RESULT_OFFER, {"transfer": "x--r1", **offer})
        offset: int = (await attacker.expect(RESUME))["offset"]
        await attacker.ws.close()
        return offset

    assert arun(scenario()) == 0  # nothing of the victim's upload is adopted or revealed
    (victim_part,) = (site.data / "live-inbox" / ".partial" / "agent-a--x").glob("*.part")
    assert victim_part.read_bytes() == victim_bytes
    assert not list((site.data / "live-inbox" / ".partial").glob("*--*.part"))


# -- §1.4: a receiver that stops reading ----------------------------------------------------


async def stuck_peer(live: Live, site: Site) -> tuple[Peer, str]:
    """stuck-01 accepts the offer of its big bundle, then stops reading (a tiny receive
    buffer, one frame of queue): the hub's writes to it block."""
    peer = await login(live, site, "stuck-01", rcvbuf=16 * 1024, max_queue=1)
    transfer: str = (await peer.expect(OFFER))["transfer"]
    await peer.send(RESUME, {"transfer": transfer, "offset": 0})
    return peer, transfer


def moved_on(site: Site, agent_id: str, seen: str | None) -> Callable[[], bool]:
    return lambda: site.last_seen(agent_id) != seen


def test_a_receiver_that_stops_reading_is_still_read_and_replaced_by_its_reconnect(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live(send_timeout_s=120)  # longer than this test: only the reconnect ends it

    async def scenario() -> dict[str, Any]:
        stuck, transfer = await stuck_peer(live, site)
        # Heartbeats still reach the hub: last_seen moves on each time (written every
        # second), although the hub cannot write a byte to this peer.
        for n in range(1, 4):
            seen = site.last_seen("stuck-01")
            await stuck.send(HEARTBEAT, {"id": n})
            await asyncio.to_thread(wait_for, moved_on(site, "stuck-01", seen), DEADLINE,
                                    f"heartbeat {n} of a peer that does not read")
        # The same agent connects again: WELCOME at once, and the bundle offered afresh.
        again = await login(live, site, "stuck-01")
        offer = await again.expect(OFFER)
        assert offer["transfer"] == transfer
        await again.ws.close()
        stuck.ws.transport.abort()
        return offer

    assert arun(scenario())["size"] > BIG_MIB * 1024 * 1024
    assert "stuck-01 connected again; closing its old connection" in live.log()


def test_a_peer_that_stops_reading_is_closed_after_the_send_timeout(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live(send_timeout_s=2)

    async def scenario() -> tuple[set[int], int | None]:
        stuck, _ = await stuck_peer(live, site)
        await asyncio.to_thread(wait_for, lambda: "has not read for" in live.log(), DEADLINE,
                                "the hub to give up on a peer that does not read")
        # Reading again now gets what was buffered, then the end: never the whole file.
        code = await stuck.closed()
        return {mtype for mtype, _ in stuck.seen}, code

    types, code = arun(scenario())
    assert "stuck-01 (127.0.0.1) has not read for [live] send_timeout_s = 2 s" in live.log()
    assert DONE not in types  # cut off mid-transfer
    assert code == 1006  # no closing handshake: the socket was cut


# -- §1.5: unauthenticated connections ------------------------------------------------------


def test_unauthenticated_connections_are_capped_per_address_and_in_total_and_time_out(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live(handshake_timeout_s=2, max_unauthenticated_per_address=3,
                      max_unauthenticated=5)

    async def scenario() -> tuple[list[tuple[str, int | None]], list[tuple[str, int | None]]]:
        held = [await open_peer(live, site, source="127.0.0.2") for _ in range(3)]
        over_address = await open_peer(live, site, source="127.0.0.2")
        held += [await open_peer(live, site, source="127.0.0.3") for _ in range(2)]
        over_total = await open_peer(live, site, source="127.0.0.4")
        busy = [await refused(over_address), await refused(over_total)]
        # Silent, or a HELLO and then nothing: closed at the handshake deadline.
        await held[0].send(HELLO, {"version": 1, "agent_id": "agent-a", "hub_id": HUB_ID})
        timed_out = [await refused(p) for p in held]
        return busy, timed_out

    busy, timed_out = arun(scenario())
    assert busy == [("busy", 4015), ("busy", 4015)]
    assert timed_out == [("timeout", 4009)] * 5


def test_a_large_message_before_authentication_is_refused_by_the_websocket_layer(
        site: Site, start_live: Callable[..., Live]) -> None:
    """Before WELCOME nothing larger than a HELLO or AUTH is read (§5.3): a HELLO message of
    64 KiB is refused with 1009 (message too big) before the hub parses it."""
    live = start_live()

    async def scenario() -> int | None:
        peer = await open_peer(live, site, source="127.0.0.8")
        await peer.send(HELLO, {"version": 1, "agent_id": "agent-a", "hub_id": HUB_ID},
                        b"p" * 65536)
        return await peer.closed()

    assert arun(scenario()) == 1009


def test_memory_stays_bounded_under_bursts_of_abandoned_connections(
        site: Site, start_live: Callable[..., Live]) -> None:
    """Bursts of 200 connections that never authenticate: RSS after six bursts stays
    within a generous bound of RSS after the first (measured in this test, same process)."""
    live = start_live(handshake_timeout_s=1)

    async def burst() -> int:
        async def one() -> int:
            try:
                peer = await open_peer(live, site)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                return 1  # cut during the TLS or WebSocket handshake (the deadline): fine
            await asyncio.wait_for(peer.ws.wait_closed(), DEADLINE)
            return 0

        return sum(await asyncio.gather(*(one() for _ in range(200))))

    arun(burst())
    warm = live.rss()
    for _ in range(5):
        arun(burst())
    grown = live.rss() - warm
    print(f"hub live RSS after the first burst {warm / 2**20:.1f} MiB, "
          f"grown by {grown / 2**20:.1f} MiB over five more")
    assert grown <= warm // 4 + 16 * 1024 * 1024, (warm, grown)
    assert live.proc.poll() is None


# -- §1.6: uploads ---------------------------------------------------------------------------


def result_offer(transfer: str, data: bytes) -> dict[str, Any]:
    return {"transfer": transfer, "name": f"{transfer}.tgr", "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "parts": []}


def partials(site: Site, agent_id: str) -> list[Path]:
    try:
        return sorted((site.data / "live-inbox" / ".partial" / agent_id).glob("*.part"))
    except FileNotFoundError:  # the hub removed the agent's directory while glob read it
        return []


def test_a_result_over_the_configured_size_is_refused_up_front(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live(max_result_bytes=1024 * 1024)
    before = tree(site.data / "live-inbox")

    async def scenario() -> dict[str, Any]:
        peer = await login(live, site, "upload-01")
        await peer.send(RESULT_OFFER, {"transfer": "huge", "name": "huge.tgr",
                                       "size": 512 * 1024 ** 3, "sha256": "0" * 64,
                                       "parts": []})
        header = await peer.expect(CANCEL, RESUME)
        await peer.sync(1)  # the connection stays usable
        await peer.ws.close()
        return header

    header = arun(scenario())
    assert header["code"] == "too-large" and header["offered_by"] == "agent"
    assert "1048576 bytes" in header["text"]
    assert tree(site.data / "live-inbox") == before


def test_cancelled_and_abandoned_partial_uploads_are_removed(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live(partial_max_age_s=2)
    data = os.urandom(300 * 1024)

    async def scenario() -> None:
        peer = await login(live, site, "upload-01")
        for transfer in ("cancelled", "abandoned"):
            await peer.send(RESULT_OFFER, result_offer(transfer, data))
            assert (await peer.expect(RESUME))["offset"] == 0
            await peer.send(RESULT_CHUNK, {"transfer": transfer, "offset": 0}, data[:1000])
        await peer.send(CANCEL, {"transfer": "cancelled", "offered_by": "agent",
                                 "code": "gave-up", "text": "never mind"})
        await peer.sync(1)
        assert [p.name for p in partials(site, "upload-01")] == ["abandoned.part"]
        await peer.ws.close()  # the other one is abandoned

    arun(scenario())
    # the sweep removes the file, then logs it: wait for both, not the file alone
    wait_for(lambda: not partials(site, "upload-01")
             and "removed abandoned partial upload" in live.log(), DEADLINE,
             "the abandoned partial upload to be removed and the removal logged")


@pytest.mark.parametrize("case", ["good bytes", "flipped byte", "bad part"])
def test_a_large_upload_is_checked_as_it_arrives_and_bad_bytes_never_reach_the_inbox(
        site: Site, start_live: Callable[..., Live], case: str) -> None:
    """A result over 1 MiB is checked, hashed and written by the upload's worker thread
    (bundle/live_file.py): good bytes reach the importer (random bytes: it rejects them),
    ACKs come in order and only for written bytes; a flipped byte or a bad part is refused
    ``corrupt`` and nothing is left in live-inbox/."""
    live = start_live()
    mib = 1024 * 1024
    data = os.urandom(10 * mib + 17)
    offer = result_offer("big", data)
    if case == "bad part":
        parts = [data[:4 * mib], data[4 * mib:]]
        offer["parts"] = [[len(p), hashlib.sha256(p).hexdigest()] for p in parts]
    wire = bytearray(data)
    if case != "good bytes":
        wire[6 * mib] ^= 0x01  # in part 001 of the split offer
    before = tree(site.data / "live-inbox")

    async def scenario() -> tuple[list[int], int, dict[str, Any]]:
        peer = await login(live, site, "upload-01")
        await peer.send(RESULT_OFFER, offer)
        assert (await peer.expect(RESUME))["offset"] == 0
        for offset in range(0, len(wire), mib):
            await peer.send(RESULT_CHUNK, {"transfer": "big", "offset": offset},
                            bytes(wire[offset:offset + mib]))
        await peer.send(RESULT_DONE, {"transfer": "big"})
        acks = []
        while True:
            mtype, header, _ = await peer.recv()
            if mtype == ACK:
                acks.append(header["offset"])
            elif mtype in (RECEIVED, CANCEL):
                await peer.ws.close()
                return acks, mtype, header

    acks, mtype, header = arun(scenario())
    assert mtype == CANCEL and header["offered_by"] == "agent", (mtype, header)
    assert acks == sorted(set(acks))
    if case == "good bytes":
        assert header["code"] == "rejected"  # it passed the transfer checks
        assert "not a readable result file" in header["text"]
        assert acks[-1] == len(data)
    else:
        assert header["code"] == "corrupt"
        assert all(a < len(data) for a in acks)  # never the whole file
    assert tree(site.data / "live-inbox") == before


def test_a_result_the_importer_rejects_is_answered_as_rejected_and_leaves_the_inbox(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live()
    data = os.urandom(2000)  # the right size and SHA-256, but no result bundle

    async def scenario() -> tuple[int, dict[str, Any]]:
        peer = await login(live, site, "upload-01")
        await peer.send(RESULT_OFFER, result_offer("forged", data))
        assert (await peer.expect(RESUME))["offset"] == 0
        await peer.send(RESULT_CHUNK, {"transfer": "forged", "offset": 0}, data)
        await peer.send(RESULT_DONE, {"transfer": "forged"})
        while True:
            mtype, header, _ = await peer.recv()
            if mtype in (RECEIVED, CANCEL):
                await peer.ws.close()
                return mtype, header

    mtype, header = arun(scenario())
    assert mtype == CANCEL and header["code"] == "rejected", (mtype, header)
    assert header["offered_by"] == "agent"
    assert "not a readable result file" in header["text"]  # the importer's reason ...
    assert str(site.data) not in header["text"]  # ... without the hub's paths
    inbox = site.data / "live-inbox"
    assert [p for p in inbox.rglob("*") if p.is_file()] == []
    rejected = site.sql("SELECT count(*) FROM audit_events WHERE action = 'result.rejected'")
    assert rejected[0][0] >= 1


# -- §1.7: refused logins --------------------------------------------------------------------


def test_refused_logins_are_audited_in_aggregate_and_back_off(
        site: Site, start_live: Callable[..., Live]) -> None:
    live = start_live(login_failures_before_backoff=25, login_backoff_s=600,
                      refused_audit_interval_s=3600)
    stranger = SigningKey.generate()

    async def attempt(agent_id: str, source: str, key: SigningKey | None = None
                      ) -> tuple[str, int | None]:
        peer = await open_peer(live, site, source=source)
        with contextlib.suppress(ConnectionClosed):  # a source in back-off is refused at once
            await peer.send(HELLO, {"version": 1, "agent_id": agent_id, "hub_id": HUB_ID})
        mtype, header, _ = await peer.recv()
        if mtype == CHALLENGE:
            signature = auth_signature(key or site.keys[agent_id], agent_id,
                                       bytes.fromhex(header["nonce"]), peer.binding)
            await peer.send(AUTH, {"signature": signature.hex()})
            mtype, header, _ = await peer.recv()
        if mtype == WELCOME:
            await peer.ws.close()
            return "welcome", None
        assert mtype == REFUSE, (mtype, header)
        return header["code"], await peer.closed()

    async def scenario() -> list[tuple[str, int | None]]:
        out = [await attempt("ghost-01", "127.0.0.5") for _ in range(20)]
        out += [await attempt("login-01", "127.0.0.5", stranger) for _ in range(5)]
        out += [await attempt("login-01", "127.0.0.5") for _ in range(3)]  # the right key
        out.append(await attempt("login-01", "127.0.0.6"))  # another address is not held
        return out

    out = arun(scenario())
    assert out == ([("unknown-agent", 4011)] * 20 + [("auth-failed", 4010)] * 5
                   + [("backoff", 4014)] * 3 + [("welcome", None)])
    live.stop()  # counts still pending are audited at shutdown
    events = [e for e in site.refusals() if e.get("source") in ("127.0.0.5", "127.0.0.6")]
    by_key: dict[tuple[str, str, str], list[int]] = {}
    for e in events:
        by_key.setdefault((e["source"], e["object"], e["code"]), []).append(e["count"])
    assert {k: sum(v) for k, v in by_key.items()} == {
        ("127.0.0.5", "agent:ghost-01", "unknown-agent"): 20,
        ("127.0.0.5", "agent:login-01", "auth-failed"): 5,
        ("127.0.0.5", "agent:-", "backoff"): 3,
    }
    assert all(len(v) <= 2 for v in by_key.values()), by_key  # not one event per attempt


# -- §1.8: a text WebSocket message ----------------------------------------------------------


@pytest.mark.parametrize("authenticated", [False, True], ids=["handshake", "open"])
def test_a_text_message_is_a_protocol_error_closed_with_4000(
        site: Site, start_live: Callable[..., Live], authenticated: bool) -> None:
    live = start_live()

    async def scenario() -> tuple[str, int | None]:
        peer = (await login(live, site, "login-01", source="127.0.0.7") if authenticated
                else await open_peer(live, site, source="127.0.0.7"))
        await peer.ws.send('{"hello": "text"}')
        return await refused(peer)

    assert arun(scenario()) == ("protocol", 4000)
