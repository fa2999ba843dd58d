"""The hub's and the agent's ends of a live connection: :class:`HubSide` (it challenges and
verifies AUTH, rate-limits LOG) and :class:`AgentSide` (it answers the challenge, sends
LOG within its rate) over the shared :class:`bundle.sync.connection.Connection`
(docs/live-protocol.md §5, §6). Import them from :mod:`bundle.sync`.

Deliberately not here: sockets, files, timers, retries, database lookups (the hub layer finds
the agent's key and decides to refuse), and what to do with a received file.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from bundle.sync.connection import Connection, State
from bundle.sync.errors import (
    LogRateError,
    NotAuthenticatedError,
    OutOfOrderError,
    RateLimitedError,
    UsageError,
    VersionError,
    WrongHubError,
)
from bundle.sync.events import (
    Authenticated,
    ChallengeReceived,
    HelloReceived,
    LogReceived,
    StateReceived,
    Welcomed,
)
from bundle.sync.messages import (
    MAX_LOG_LINE_BYTES,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Message,
    MessageType,
    auth_message,
    verify_auth,
)
from bundle.sync.transfer import Clock, TokenBucket
from signing.errors import StrictJSONError
from signing.keys import PublicKey, SigningKey
from signing.strictjson import dumps_canonical

__all__ = [
    "DEFAULT_HEARTBEAT_SECONDS",
    "HUB_LOG_BURST_MESSAGES",
    "LOG_BURST_MESSAGES",
    "LOG_MESSAGES_PER_SECOND",
    "STATE_BURST_MESSAGES",
    "STATE_MESSAGES_PER_SECOND",
    "AgentSide",
    "HubSide",
    "is_loopback",
]

LOG_MESSAGES_PER_SECOND = 200.0  # LOG messages per second an agent sends at most
LOG_BURST_MESSAGES = 400  # LOG messages an agent may send at once (token bucket size)
HUB_LOG_BURST_MESSAGES = 2_000  # the hub's bucket: larger, as the network may bunch messages
DEFAULT_HEARTBEAT_SECONDS = 30  # seconds between heartbeats, announced in WELCOME
STATE_MESSAGES_PER_SECOND = 1.0  # STATE messages per second the hub accepts at most
STATE_BURST_MESSAGES = 10  # STATE messages the hub accepts at once (token bucket size)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address: the only place where either
    side may speak plain ``ws://`` (tests), never elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HubSide(Connection):
    """The hub's end of one agent connection.

    ``binding`` is the TLS channel binding the agent must sign (§5.2), ``b""`` without TLS.
    """

    role = "hub"
    #: the HELLO versions this hub accepts (§9)
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    _OFFER = MessageType.OFFER
    _CHUNK = MessageType.CHUNK
    _DONE = MessageType.DONE
    _SUFFIX = ".tgb"

    def __init__(self, hub_id: str, *, binding: bytes = b"",
                 heartbeat: int = DEFAULT_HEARTBEAT_SECONDS, clock: Clock = time.monotonic,
                 log_rate: float = LOG_MESSAGES_PER_SECOND,
                 log_burst: int = HUB_LOG_BURST_MESSAGES) -> None:
        super().__init__(clock=clock)
        self.hub_id = hub_id
        self.agent_id: str | None = None  # claimed in HELLO; proven once ``is_open``
        self._binding = binding
        self._heartbeat = heartbeat
        self._agent_key: PublicKey | None = None
        self._nonce: bytes | None = None
        self._log_rate = log_rate
        self._logs = TokenBucket(log_rate, log_burst, clock)
        self._states = TokenBucket(STATE_MESSAGES_PER_SECOND, STATE_BURST_MESSAGES, clock)
        self.version: int | None = None  # the agent's HELLO version, once received

    def challenge(self, agent_key: PublicKey, nonce: bytes, now: int) -> None:
        """Answer HELLO: challenge the agent to sign ``nonce`` with ``agent_key``.

        ``nonce`` must be fresh for this connection (``os.urandom(NONCE_BYTES)``); ``now`` is
        the hub's Unix time in seconds (information for the agent's logs).

        Raises:
            UsageError: no HELLO yet, challenged already, or the nonce has the wrong size.
        """
        if self._state is not State.HANDSHAKE or self.agent_id is None or self._nonce:
            raise UsageError("challenge() is the answer to one HELLO")
        if len(nonce) != NONCE_BYTES:
            raise UsageError(f"a nonce is {NONCE_BYTES} bytes")
        self._agent_key, self._nonce = agent_key, nonce
        self._send(MessageType.CHALLENGE, {"nonce": nonce, "hub_id": self.hub_id, "time": now})

    def _handshake(self, msg: Message) -> None:
        if msg.type is MessageType.HELLO:
            if self.agent_id is not None:
                raise OutOfOrderError("second HELLO", remote_text="HELLO sent twice")
            if msg.header["version"] not in self.versions:
                speaks = ("version " if len(self.versions) == 1 else "versions ") + " and ".join(
                    str(v) for v in self.versions)
                raise VersionError(f"agent speaks protocol version {msg.header['version']}, "
                                   f"the hub speaks {speaks}",
                                   remote_text=f"the hub speaks {speaks}")
            if msg.header["hub_id"] != self.hub_id:
                raise WrongHubError(f"agent {msg.header['agent_id']} expected hub "
                                    f"{msg.header['hub_id']!r}, this is {self.hub_id!r}")
            self.agent_id = msg.header["agent_id"]
            self.version = msg.header["version"]
            self._events.append(HelloReceived(msg.header["agent_id"], msg.header["version"]))
        elif msg.type is MessageType.AUTH:
            if self._nonce is None or self._agent_key is None or self.agent_id is None:
                raise OutOfOrderError("AUTH before CHALLENGE", remote_text="AUTH before CHALLENGE")
            verify_auth(self._agent_key, msg.header["signature"], hub_id=self.hub_id,
                        agent_id=self.agent_id, nonce=self._nonce, binding=self._binding)
            self._nonce = None  # one signature per challenge
            self._state = State.OPEN
            self._send(MessageType.WELCOME, {"heartbeat": self._heartbeat})
            self._events.append(Authenticated(self.agent_id))
        else:
            raise NotAuthenticatedError(f"{msg.type.name} before authentication",
                                        remote_text=f"{msg.type.name} before authentication")

    def _extra_handlers(self) -> dict[MessageType, Callable[[Message], None]]:
        return {MessageType.LOG: self._on_log, MessageType.STATE: self._on_state}

    def _on_state(self, msg: Message) -> None:
        if self.version is None or self.version < 2:
            raise OutOfOrderError(f"agent {self.agent_id} sent STATE on a protocol version "
                                  f"{self.version} connection",
                                  remote_text="STATE is not part of protocol version 1")
        if not self._states.take():
            raise RateLimitedError(f"agent {self.agent_id} sent STATE faster than "
                                   f"{STATE_MESSAGES_PER_SECOND:g}/s")
        assert msg.state is not None  # decode_message checked it
        self._events.append(StateReceived(msg.header["id"], msg.state))

    def _on_log(self, msg: Message) -> None:
        if not self._logs.take():
            raise RateLimitedError(f"agent {self.agent_id} sent log lines faster than "
                                   f"{self._log_rate:g}/s")
        h = msg.header
        self._events.append(LogReceived(h["bundle_id"], h["step"], h["seq"], h["stream"],
                                        bytes(msg.body).decode("utf-8")))


class AgentSide(Connection):
    """The agent's end: call :meth:`send_hello` once connected; the challenge is answered
    with ``signing_key`` over ``binding`` (§5) without the layer's help."""

    role = "agent"
    _OFFER = MessageType.RESULT_OFFER
    _CHUNK = MessageType.RESULT_CHUNK
    _DONE = MessageType.RESULT_DONE
    _SUFFIX = ".tgr"

    def __init__(self, agent_id: str, hub_id: str, signing_key: SigningKey, *,
                 binding: bytes = b"", clock: Clock = time.monotonic,
                 log_rate: float = LOG_MESSAGES_PER_SECOND,
                 log_burst: int = LOG_BURST_MESSAGES,
                 version: int = PROTOCOL_VERSION) -> None:
        super().__init__(clock=clock)
        if version not in SUPPORTED_VERSIONS:
            raise UsageError(f"protocol version {version} is not one of {SUPPORTED_VERSIONS}")
        self.version = version
        self.agent_id = agent_id
        self.hub_id = hub_id
        self._key = signing_key
        self._binding = binding
        self._hello_sent = False
        self._auth_sent = False
        self._logs = TokenBucket(log_rate, log_burst, clock)

    def send_hello(self) -> None:
        """The first message of a connection.

        Raises:
            UsageError: sent already.
        """
        if self._hello_sent:
            raise UsageError("HELLO is sent once per connection")
        self._hello_sent = True
        self._send(MessageType.HELLO, {"version": self.version, "agent_id": self.agent_id,
                                       "hub_id": self.hub_id})

    def _handshake(self, msg: Message) -> None:
        if msg.type is MessageType.CHALLENGE:
            if not self._hello_sent or self._auth_sent:
                raise OutOfOrderError("CHALLENGE not expected now",
                                      remote_text="CHALLENGE not expected")
            if msg.header["hub_id"] != self.hub_id:
                raise WrongHubError(f"hub answered as {msg.header['hub_id']!r}, expected "
                                    f"{self.hub_id!r}")
            message = auth_message(self.hub_id, self.agent_id, msg.header["nonce"],
                                   self._binding)
            self._auth_sent = True
            self._send(MessageType.AUTH, {"signature": self._key.sign(message)})
            self._events.append(ChallengeReceived(msg.header["hub_id"], msg.header["time"]))
        elif msg.type is MessageType.WELCOME and self._auth_sent:
            self._state = State.OPEN
            self._events.append(Welcomed(msg.header["heartbeat"]))
        else:
            raise NotAuthenticatedError(f"{msg.type.name} before authentication",
                                        remote_text=f"{msg.type.name} before authentication")

    def log_wait(self) -> float:
        """Seconds until :meth:`send_log` may be called (0.0: now)."""
        return self._logs.wait_time()

    def send_log(self, bundle_id: str, step: int, seq: int, stream: str, text: str) -> None:
        """Send one line (or block) of step output; ``seq`` increases per bundle.

        Raises:
            LogRateError: no budget now (see :meth:`log_wait`).
            UsageError: not open, or the text is over MAX_LOG_LINE_BYTES (split it first).
        """
        self._require_open("send LOG")
        body = text.encode("utf-8", errors="replace")
        if len(body) > MAX_LOG_LINE_BYTES:
            raise UsageError(f"log text of {len(body)} bytes is over {MAX_LOG_LINE_BYTES}")
        if not self._logs.take():
            raise LogRateError("log rate exceeded", retry_after=self._logs.wait_time())
        self._send(MessageType.LOG, {"bundle_id": bundle_id, "step": step, "seq": seq,
                                     "stream": stream}, body)

    def send_state(self, id: int, state: dict[str, object]) -> None:
        """Send what the agent says about itself (§3.1): ``{"inventory": ..., "holds":
        [...]}``, checked by :func:`bundle.sync.state.check_state`. ``id`` counts the STATE
        messages of the connection.

        Raises:
            UsageError: not open, a version 1 connection, or the state breaks its rules or
                is over MAX_STATE_BYTES (a local bug: the caller bounds what it sends).
        """
        self._require_open("send STATE")
        if self.version < 2:
            raise UsageError("STATE is not part of protocol version 1")
        try:
            body = dumps_canonical(state)
        except StrictJSONError as exc:
            raise UsageError(f"cannot encode STATE: {exc}") from exc
        self._send(MessageType.STATE, {"id": id}, body)
