"""agent.live over TLS: the agent trusts only the hub CA pinned from its enrollment response,
checks the host name and expiry, binds its signed challenge to the certificate it saw, and
refuses plain ws:// unless allowed on loopback. A real TLS live server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.home import HomeError, import_enrollment_response
from agent.live import SOCKET_READ_BYTES, LiveClient, LiveTLSError, check_hub_url
from agent.service import Agent
from hub.db import make_session_factory
from hub.live import LiveHub, LiveServer, start_live
from hub.services.agents import EnrollmentResponse
from hub.tls import TlsFiles, create_ca, issue_server_certificate, load_server_tls
from tests.agent.test_live_transfer import one_copy_frames, read_sizes
from tests.e2e.conftest import wait_for
from tests.e2e.test_live import _Client, file_world  # noqa: F401 - file_world: a fixture
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _agent

DEADLINE = 30.0  # seconds for anything that crosses the socket
NOW = dt.datetime.now(dt.UTC)


def _ca(tmp_path: Path, name: str) -> TlsFiles:
    files = TlsFiles(tmp_path / name)
    create_ca(files, f"hub-{name}", NOW)
    return files


def _server(world: World, tmp_path: Path, files: TlsFiles, *,
            binding: bytes | None = None) -> LiveServer:
    tls = load_server_tls(files.server_cert, files.server_key)
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                        keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor=None,
                        clock=world.clock, binding=tls.binding if binding is None else binding)
    return start_live(hub, "127.0.0.1", 0, ssl=tls.context)


def _run(agent: Agent, url: str, ca: Path) -> _Client:
    config = dataclasses.replace(agent.config, hub_url=url)
    ca_pem = ca.read_bytes()
    config.hub_ca_path.write_bytes(ca_pem)  # as `agent enroll-response` pins it
    client = LiveClient(config, keys=agent.keys, min_backoff=0.05, max_backoff=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(client.run(stop),), daemon=True)
    thread.start()
    return _Client(client, stop, thread)


@pytest.fixture
def site(file_world: World, tmp_path: Path) -> Iterator[tuple[World, Agent]]:  # noqa: F811
    agent = _agent(file_world, tmp_path)
    yield file_world, agent
    agent.close()


def test_wss_with_the_pinned_ca_authenticates_bound_to_the_certificate(
        site: tuple[World, Agent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world, agent = site
    reads = read_sizes(monkeypatch)
    frames = one_copy_frames(monkeypatch)
    files = _ca(tmp_path, "tls")
    cert = issue_server_certificate(files, ["localhost", "127.0.0.1"], NOW)
    server = _server(world, tmp_path, files)
    running = _run(agent, f"wss://127.0.0.1:{server.port}/live", files.ca_cert)
    try:
        wait_for(lambda: "site-01" in server.online, DEADLINE, "the agent to authenticate")
        assert server.hub.binding == hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
        assert running.client.last_refusal is None
        # The TLS layer reads in pieces of 2 MiB (agent.live.read_in_large_pieces), not
        # asyncio's 256 KiB nor the hub's 16 KiB (TLS_READ_BYTES, set for this process's
        # hub in this test: for the whole class, which the agent's connection overrides).
        assert reads == [SOCKET_READ_BYTES]
        # and the handshake's messages came through agent.live_frames' reader
        assert frames == [True]
    finally:
        running.close()
        server.stop()


@pytest.mark.parametrize(("case", "message"), [
    ("other-ca", "does not verify against the pinned CA"),
    ("expired", "certificate has expired"),
    ("wrong-name", "mismatch"),
])
def test_a_certificate_the_pinned_ca_does_not_vouch_for_is_refused(
        site: tuple[World, Agent], tmp_path: Path, case: str, message: str) -> None:
    world, agent = site
    pinned = _ca(tmp_path, "pinned")
    serving = _ca(tmp_path, "other") if case == "other-ca" else pinned
    names = ["hub.example"] if case == "wrong-name" else ["127.0.0.1"]
    when = NOW - dt.timedelta(days=30) if case == "expired" else NOW
    issue_server_certificate(serving, names, when, days=1)
    server = _server(world, tmp_path, serving)
    running = _run(agent, f"wss://127.0.0.1:{server.port}/live", pinned.ca_cert)
    try:
        wait_for(lambda: running.client.last_error is not None, DEADLINE, "a TLS refusal")
        error = running.client.last_error
        assert error is not None and message in error, error
        assert str(agent.config.hub_ca_path) in error
        assert not running.client.connected.is_set()
        assert server.online == frozenset()
        assert not list(agent.config.inbox.iterdir())  # nothing delivered
    finally:
        running.close()
        server.stop()


def test_a_signature_bound_to_another_certificate_is_refused(
        site: tuple[World, Agent], tmp_path: Path) -> None:
    """A hub (or a relay) whose certificate differs from the one the agent saw: the signed
    challenge does not verify (auth-failed, close 4010)."""
    world, agent = site
    files = _ca(tmp_path, "tls")
    issue_server_certificate(files, ["127.0.0.1"], NOW)
    server = _server(world, tmp_path, files, binding=hashlib.sha256(b"another cert").digest())
    running = _run(agent, f"wss://127.0.0.1:{server.port}/live", files.ca_cert)
    try:
        wait_for(lambda: running.client.last_refusal is not None, DEADLINE, "a refusal")
        assert running.client.last_refusal is not None
        assert running.client.last_refusal[0] == "auth-failed"
        assert server.online == frozenset()
    finally:
        running.close()
        server.stop()


@pytest.mark.parametrize(("url", "allow", "message"), [
    ("ws://10.1.2.3:8401/live", True, "only allowed to a loopback address"),
    ("ws://hub.example:8401/live", True, "only allowed to a loopback address"),
    ("ws://127.0.0.1:8401/live", False, "plain ws:// is refused"),
    ("http://127.0.0.1:8401/live", True, "must be wss://"),
])
def test_plain_ws_is_refused_unless_allowed_on_loopback(url: str, allow: bool,
                                                        message: str) -> None:
    with pytest.raises(LiveTLSError, match=message):
        check_hub_url(url, allow_insecure_loopback=allow)


def test_plain_ws_on_loopback_when_allowed() -> None:
    assert check_hub_url("ws://127.0.0.1:1/live", allow_insecure_loopback=True) == "ws"
    assert check_hub_url("wss://hub.example/live", allow_insecure_loopback=False) == "wss"


def test_wss_without_a_pinned_ca_is_a_clear_error(site: tuple[World, Agent]) -> None:
    _world, agent = site
    config = dataclasses.replace(agent.config, hub_url="wss://127.0.0.1:1/live")
    with pytest.raises(LiveTLSError, match=r"no pinned hub CA .*agent enroll-response"):
        LiveClient(config, keys=agent.keys)


# -- pinning from the enrollment response


def _response(world: World, agent_id: str = "site-01", ca: bytes | None = None,
              hub_id: str = "hub-test") -> bytes:
    resp = EnrollmentResponse(agent_id, "test", hub_id, world.keys.hub.root_envelope,
                              int(NOW.timestamp()), tls_ca_pem=ca)
    return resp.to_envelope(world.keys.release)


def test_enrollment_response_pins_the_ca(site: tuple[World, Agent], tmp_path: Path) -> None:
    world, agent = site
    ca = _ca(tmp_path, "tls").ca_cert.read_bytes()
    info = import_enrollment_response(agent.config, _response(world, ca=ca))
    assert info.ca_pinned == agent.config.hub_ca_path
    assert agent.config.hub_ca_path.read_bytes() == ca
    ssl.create_default_context(cafile=str(info.ca_pinned))


@pytest.mark.parametrize(("change", "message"), [
    ("other-agent", "is for agent 'site-02'"),
    ("other-hub", "is from hub 'hub-other'"),
    ("tampered", "does not verify"),
    ("forged", "does not verify"),
    ("not-a-cert", "not a usable CA certificate"),
])
def test_a_bad_enrollment_response_pins_nothing(site: tuple[World, Agent], tmp_path: Path,
                                                change: str, message: str) -> None:
    world, agent = site
    ca = _ca(tmp_path, "tls").ca_cert.read_bytes()
    if change == "other-agent":
        data = _response(world, "site-02", ca=ca)
    elif change == "other-hub":
        data = _response(world, ca=ca, hub_id="hub-other")
    elif change == "tampered":
        envelope = json.loads(_response(world, ca=ca))
        payload = base64.b64decode(envelope["payload"]).replace(b'"test"', b'"prod"')
        envelope["payload"] = base64.b64encode(payload).decode()
        data = json.dumps(envelope).encode()
    elif change == "forged":
        from signing.keys import SigningKey

        resp = EnrollmentResponse("site-01", "test", "hub-test", None, 0, tls_ca_pem=ca)
        data = resp.to_envelope(SigningKey.generate())
    else:
        data = _response(world, ca=b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                   b"-----END CERTIFICATE-----\n")
    with pytest.raises(HomeError, match=message):
        import_enrollment_response(agent.config, data)
    assert not agent.config.hub_ca_path.exists()


def test_agent_run_without_a_pinned_ca_says_what_to_do(tmp_path: Path) -> None:
    from tests.e2e.conftest import run
    from tests.hub.conftest import make_keys

    root = tmp_path / "root.json"
    root.write_bytes(make_keys().hub.root_envelope)
    home = tmp_path / "agent"
    refused = run("agent", "init", str(home), "--root", str(root), "--hub-url",
                  "ws://10.0.0.1:8401/live", "--insecure-loopback", check=False)
    assert refused.returncode != 0 and "only allowed to a loopback address" in refused.stderr
    assert not home.exists()
    run("agent", "init", str(home), "--root", str(root), "--hub-url",
        "wss://127.0.0.1:1/live")
    out = run("agent", "run", "--home", str(home), check=False)
    assert out.returncode == 1
    assert "no pinned hub CA" in out.stderr and "agent enroll-response" in out.stderr


def test_a_message_larger_than_the_tls_read_buffer_arrives_whole(
        site: tuple[World, Agent], tmp_path: Path) -> None:
    """The live server reads TLS in pieces of TLS_READ_BYTES (16 KiB, not asyncio's 256 KiB:
    memory per connection); a 1 MiB RESULT_CHUNK crosses many of them and still arrives
    byte for byte: the importer decides on it (CANCEL ``rejected``: not a result file), and
    the transfer check never says ``corrupt``."""
    from asyncio import sslproto

    from websockets.asyncio.client import connect

    from agent.live import pinned_context
    from bundle.sync import (
        MAX_MESSAGE_BYTES,
        AgentSide,
        Offer,
        ResumeRequested,
        TransferCancelled,
        Welcomed,
    )
    from hub.live import TLS_READ_BYTES

    world, agent = site
    files = _ca(tmp_path, "tls")
    issue_server_certificate(files, ["localhost", "127.0.0.1"], NOW)
    server = _server(world, tmp_path, files)
    data = bytes(range(256)) * 4096  # 1 MiB
    answers: list[TransferCancelled] = []

    async def upload() -> None:
        async with connect(f"wss://127.0.0.1:{server.port}/live", compression=None,
                           max_size=MAX_MESSAGE_BYTES,
                           ssl=pinned_context(files.ca_cert)) as ws:
            der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            conn = AgentSide("site-01", world.keys.hub.hub_id, agent.keys.identity,
                             binding=hashlib.sha256(der).digest())
            conn.send_hello()
            while not answers:
                for message in conn.data_to_send():
                    await ws.send(message)
                raw = await asyncio.wait_for(ws.recv(), DEADLINE)
                assert isinstance(raw, bytes)
                conn.receive_data(raw)
                for event in conn.events_received():
                    if isinstance(event, Welcomed):
                        conn.send_offer(Offer("r1", "site-01-r1.tgr", len(data),
                                              hashlib.sha256(data).hexdigest()))
                    elif isinstance(event, ResumeRequested):
                        conn.send_chunk("r1", 0, data)
                        conn.send_done("r1")
                    elif isinstance(event, TransferCancelled):
                        answers.append(event)

    try:
        asyncio.run(upload())
        assert sslproto.SSLProtocol.max_size == TLS_READ_BYTES < len(data)
        (answer,) = answers
        assert (answer.transfer, answer.code) == ("r1", "rejected"), answer
        # Nothing of it stays at the hub: neither the partial upload nor the received file.
        assert not list((tmp_path / "hubdata" / "live-inbox").rglob("*r1*"))
    finally:
        server.stop()
