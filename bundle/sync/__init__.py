"""Sans-I/O live sync protocol: hub and agent state machines (docs/live-protocol.md).

The asyncio layers (hub server, agent client) move bytes; everything else is here::

    conn.receive_data(message)      # one WebSocket binary message in
    conn.events_received()          # -> list of events (what the peer said)
    conn.data_to_send()             # -> list of messages to write, in order
    conn.send_offer(...) / ...      # actions queue messages

:class:`HubSide` and :class:`AgentSide` enforce the order of §6: nothing but HELLO, CHALLENGE
and AUTH before authentication; a CHUNK only for an offered, resumed transfer at exactly the
next offset and never past the offered size; DONE only when every byte was sent; log lines
within their rate. When the peer breaks a rule, ``receive_data`` queues an ERROR (a REFUSE
for authentication and version failures) with a short code, marks the connection closed and
raises the :class:`~bundle.sync.errors.SyncError`: the layer sends what is queued, then
closes the WebSocket with ``conn.close_code``.

One sans-I/O protocol, one module per concept (as ``websockets`` keeps its ``protocol.py``):

==========================  ===========================================================
:mod:`bundle.sync.sides`    :class:`HubSide`, :class:`AgentSide`: handshake, role rules
:mod:`bundle.sync.connection`  the shared state machine: transfers, heartbeats, errors
:mod:`bundle.sync.messages` the wire format, field rules, limits, the AUTH message
:mod:`bundle.sync.events`   what the peer said (frozen values)
:mod:`bundle.sync.errors`   the error tree and close codes (§7)
:mod:`bundle.sync.transfer` :class:`TransferReceiver`, :class:`TokenBucket`
:mod:`bundle.sync.state`    the STATE body's rules (an agent's inventory and holds)
==========================  ===========================================================

This package re-exports what the layers need, so they import from ``bundle.sync`` (errors
from ``bundle.sync.errors``).

Deliberately not here: sockets, files, timers, retries, database lookups (the hub layer finds
the agent's key and decides to refuse), and what to do with a received file.
"""

from __future__ import annotations

from bundle.sync.connection import MAX_TRANSFERS, RECENT_TRANSFERS, Connection
from bundle.sync.events import (
    AckReceived,
    Authenticated,
    ChallengeReceived,
    ChunkReceived,
    Event,
    HeartbeatAcked,
    HeartbeatReceived,
    HelloReceived,
    LogReceived,
    OfferReceived,
    PeerError,
    Refused,
    ResumeRequested,
    StateReceived,
    TransferCancelled,
    TransferDone,
    TransferReceived,
    Welcomed,
)
from bundle.sync.messages import (
    CANCEL_HAVE_IT,
    MAX_CHUNK_BYTES,
    MAX_HEADER_BYTES,
    MAX_LOG_LINE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_TRANSFER_BYTES,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Message,
    MessageType,
    Offer,
    Part,
    auth_message,
    decode_message,
    encode_chunk,
    encode_message,
    verify_auth,
)
from bundle.sync.sides import (
    DEFAULT_HEARTBEAT_SECONDS,
    HUB_LOG_BURST_MESSAGES,
    LOG_BURST_MESSAGES,
    LOG_MESSAGES_PER_SECOND,
    AgentSide,
    HubSide,
    is_loopback,
)
from bundle.sync.transfer import Sink, TokenBucket, TransferReceiver

__all__ = [
    "CANCEL_HAVE_IT",
    "DEFAULT_HEARTBEAT_SECONDS",
    "HUB_LOG_BURST_MESSAGES",
    "LOG_BURST_MESSAGES",
    "LOG_MESSAGES_PER_SECOND",
    "MAX_CHUNK_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_LOG_LINE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_TRANSFERS",
    "MAX_TRANSFER_BYTES",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "RECENT_TRANSFERS",
    "SUPPORTED_VERSIONS",
    "AckReceived",
    "AgentSide",
    "Authenticated",
    "ChallengeReceived",
    "ChunkReceived",
    "Connection",
    "Event",
    "HeartbeatAcked",
    "HeartbeatReceived",
    "HelloReceived",
    "HubSide",
    "LogReceived",
    "Message",
    "MessageType",
    "Offer",
    "OfferReceived",
    "Part",
    "PeerError",
    "Refused",
    "ResumeRequested",
    "Sink",
    "StateReceived",
    "TokenBucket",
    "TransferCancelled",
    "TransferDone",
    "TransferReceived",
    "TransferReceiver",
    "Welcomed",
    "auth_message",
    "decode_message",
    "encode_chunk",
    "encode_message",
    "is_loopback",
    "verify_auth",
]
