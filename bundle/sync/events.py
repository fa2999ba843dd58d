"""Events of the live sync protocol: what :mod:`bundle.sync` reports the peer said (§6).

Frozen values only; no behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bundle.sync.messages import Offer

__all__ = [
    "AckReceived",
    "Authenticated",
    "ChallengeReceived",
    "ChunkReceived",
    "Event",
    "HeartbeatAcked",
    "HeartbeatReceived",
    "HelloReceived",
    "LogReceived",
    "OfferReceived",
    "PeerError",
    "Refused",
    "ResumeRequested",
    "StateReceived",
    "TransferCancelled",
    "TransferDone",
    "TransferReceived",
    "Welcomed",
]


@dataclass(frozen=True)
class HelloReceived:
    """Hub: an agent says who it is. Look its key up, then ``challenge()`` or ``refuse()``."""

    agent_id: str
    version: int


@dataclass(frozen=True)
class ChallengeReceived:
    """Agent: the hub's challenge (already answered). ``server_time``: hub's Unix seconds."""

    hub_id: str
    server_time: int


@dataclass(frozen=True)
class Authenticated:
    """Hub: the agent proved its key; WELCOME is queued."""

    agent_id: str


@dataclass(frozen=True)
class Welcomed:
    """Agent: the hub accepted us. Send a HEARTBEAT every ``heartbeat`` seconds."""

    heartbeat: int


@dataclass(frozen=True)
class Refused:
    """Agent: the hub refused the connection (``code`` as in docs/live-protocol.md §7)."""

    code: str
    text: str


@dataclass(frozen=True)
class PeerError:
    """The peer reported a protocol error and will close."""

    code: str
    text: str


@dataclass(frozen=True)
class OfferReceived:
    """A file is offered. Open a :class:`TransferReceiver`, then ``send_resume()``."""

    offer: Offer


@dataclass(frozen=True)
class ResumeRequested:
    """The receiver wants our offered file from ``offset``: send chunks from there."""

    transfer: str
    offset: int


@dataclass(frozen=True)
class ChunkReceived:
    """Bytes of an incoming transfer, at exactly the next offset."""

    transfer: str
    offset: int
    data: bytes | memoryview  # a read-only view into the received message


@dataclass(frozen=True)
class AckReceived:
    """The receiver holds (fsynced) every byte before ``offset``."""

    transfer: str
    offset: int


@dataclass(frozen=True)
class TransferDone:
    """The sender sent every byte: check the file, then ``send_received()`` or cancel."""

    transfer: str


@dataclass(frozen=True)
class TransferReceived:
    """The receiver checked the whole file and stored it: the transfer is over."""

    transfer: str


@dataclass(frozen=True)
class TransferCancelled:
    """The peer cancelled a transfer (``offered_by`` says whose offer it was)."""

    transfer: str
    offered_by: str
    code: str
    text: str


@dataclass(frozen=True)
class LogReceived:
    """Hub: a line of step output."""

    bundle_id: str
    step: int
    seq: int
    stream: str
    text: str


@dataclass(frozen=True)
class HeartbeatReceived:
    """The peer is alive (HEARTBEAT_ACK is queued)."""

    id: int


@dataclass(frozen=True)
class StateReceived:
    """Hub: the agent's inventory and holds (§3.1), checked by
    :func:`bundle.sync.state.check_state`; it describes the authenticated agent."""

    id: int
    state: Mapping[str, Any]


@dataclass(frozen=True)
class HeartbeatAcked:
    """The peer answered our HEARTBEAT ``id``."""

    id: int


Event = (HelloReceived | ChallengeReceived | Authenticated | Welcomed | Refused | PeerError
         | OfferReceived | ResumeRequested | ChunkReceived | AckReceived | TransferDone
         | TransferReceived | TransferCancelled | LogReceived | HeartbeatReceived
         | HeartbeatAcked | StateReceived)
