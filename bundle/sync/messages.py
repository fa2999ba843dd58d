"""Messages of the live sync protocol: limits, wire encoding, field rules, the AUTH message
(docs/live-protocol.md).

One WebSocket binary message carries one protocol message (§2)::

    +--------+-------------------+----------------------+--------------------------+
    | type   | header length n   | header: n bytes of   | body: raw bytes (CHUNK,  |
    | 1 byte | 2 bytes, big end. | strict JSON object   | RESULT_CHUNK, LOG, STATE)|
    +--------+-------------------+----------------------+--------------------------+

:func:`decode_message` checks everything that does not depend on the connection's state:
sizes first (before parsing), then the type, the strict JSON, the exact set of header keys and
every field's type and range. :func:`encode_message` applies the same rules to what we send,
so a message we write always decodes.

This module does no I/O and keeps no state; ordering rules live in :mod:`bundle.sync`.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bundle.limits import GiB, KiB, MiB
from bundle.sync.errors import (
    AuthError,
    MalformedError,
    OversizedError,
    UnknownTypeError,
    UsageError,
)
from bundle.sync.state import MAX_STATE_BYTES, check_state
from signing.errors import SignatureError, StrictJSONError
from signing.keys import PublicKey
from signing.strictjson import dumps_canonical, loads_strict

__all__ = [
    "AUTH_DOMAIN",
    "MAX_CHUNK_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_LOG_LINE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PARTS",
    "MAX_TEXT_CHARS",
    "MAX_TRANSFER_BYTES",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "SIGNATURE_BYTES",
    "SUPPORTED_VERSIONS",
    "Message",
    "MessageType",
    "Offer",
    "Part",
    "auth_message",
    "decode_message",
    "encode_chunk",
    "encode_message",
    "verify_auth",
]

PROTOCOL_VERSION = 2  # what this code sends in HELLO (§9)
SUPPORTED_VERSIONS = (1, 2)  # what the hub accepts: version 1 is version 2 without STATE
MAX_HEADER_BYTES = 4 * KiB  # bytes of one message's JSON header
MAX_CHUNK_BYTES = 1 * MiB  # bytes of one CHUNK / RESULT_CHUNK body
MAX_LOG_LINE_BYTES = 16 * KiB  # bytes of one LOG body (UTF-8 text)
MAX_MESSAGE_BYTES = 3 + MAX_HEADER_BYTES + MAX_CHUNK_BYTES  # bytes: the WebSocket max_size
MAX_TRANSFER_BYTES = 512 * GiB  # bytes of one offered file (all parts together)
MAX_PARTS = 1000  # parts listed in one offer (part000 .. part999, docs/bundle-format.md §8)
MAX_TEXT_CHARS = 200  # characters of a REFUSE / ERROR / CANCEL reason text
NONCE_BYTES = 32  # bytes of the hub's challenge
SIGNATURE_BYTES = 64  # bytes of an Ed25519 signature
AUTH_DOMAIN = b"tiangong-live-auth-v1"
CANCEL_HAVE_IT = "have-it"  # CANCEL code: the receiver already holds the offered file (§4.2)
_PREFIX = struct.Struct(">BH")
_U32 = struct.Struct(">I")


class MessageType(enum.IntEnum):
    """The type byte (§3). Gaps are deliberate: one range per concern."""

    HELLO = 0x01
    CHALLENGE = 0x02
    AUTH = 0x03
    WELCOME = 0x04
    REFUSE = 0x05
    OFFER = 0x10
    RESUME = 0x11
    CHUNK = 0x12
    ACK = 0x13
    DONE = 0x14
    RECEIVED = 0x15
    CANCEL = 0x16
    LOG = 0x20
    RESULT_OFFER = 0x30
    RESULT_CHUNK = 0x31
    RESULT_DONE = 0x32
    HEARTBEAT = 0x40
    HEARTBEAT_ACK = 0x41
    STATE = 0x42
    ERROR = 0x7F


# --- field rules --------------------------------------------------------------------------

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.(tgb|tgr)")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CODE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_STREAMS = ("stdout", "stderr", "info")
_OFFERED_BY = ("hub", "agent")
_INT64 = 2**63 - 1

Rule = Callable[[object, str], object]


def _fail(key: str, why: str) -> MalformedError:
    return MalformedError(f"header field {key!r} {why}", remote_text=f"field {key!r} {why}")


def _int(low: int, high: int) -> Rule:
    def check(value: object, key: str) -> object:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(key, "must be an integer")
        if not low <= value <= high:
            raise _fail(key, f"must be between {low} and {high}")
        return value

    return check


def _match(pattern: re.Pattern[str], what: str) -> Rule:
    def check(value: object, key: str) -> object:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _fail(key, f"must be {what}")
        return value

    return check


def _text(value: object, key: str) -> object:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise _fail(key, f"must be a string of at most {MAX_TEXT_CHARS} characters")
    return value


def _one_of(choices: tuple[str, ...]) -> Rule:
    def check(value: object, key: str) -> object:
        if value not in choices:
            raise _fail(key, f"must be one of {', '.join(choices)}")
        return value

    return check


def _hex_bytes(size: int) -> Rule:
    def check(value: object, key: str) -> object:
        if (not isinstance(value, str) or len(value) != 2 * size
                or value.strip("0123456789abcdef")):
            raise _fail(key, f"must be {2 * size} lowercase hex characters")
        return bytes.fromhex(value)

    return check


def _parts(value: object, key: str) -> object:
    if not isinstance(value, list) or len(value) > MAX_PARTS:
        raise _fail(key, f"must be a list of at most {MAX_PARTS} parts")
    out = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2):
            raise _fail(key, "entries must be [size, sha256]")
        size = _int(1, MAX_TRANSFER_BYTES)(item[0], key)
        digest = _match(_HEX64, "64 lowercase hex characters")(item[1], key)
        out.append(Part(size=size, sha256=digest))  # type: ignore[arg-type]
    return tuple(out)


_TRANSFER = _match(_ID, "an id of 1-128 letters, digits and ._:@-")
_ID_RULE = _TRANSFER
_OFFSET = _int(0, MAX_TRANSFER_BYTES)
_SHA = _match(_HEX64, "64 lowercase hex characters")
_OFFER_RULES: dict[str, Rule] = {
    "transfer": _TRANSFER,
    "name": _match(_NAME, "a file name ending in .tgb or .tgr"),
    "size": _int(1, MAX_TRANSFER_BYTES),
    "sha256": _SHA,
    "parts": _parts,
}
_CHUNK_RULES: dict[str, Rule] = {"transfer": _TRANSFER, "offset": _OFFSET}
_REASON_RULES: dict[str, Rule] = {"code": _match(_CODE, "a short lowercase code"),
                                  "text": _text}

# Header keys and rules per type: a header must hold exactly these keys (§3).
_SCHEMAS: dict[MessageType, dict[str, Rule]] = {
    MessageType.HELLO: {"version": _int(0, 65535), "agent_id": _ID_RULE, "hub_id": _ID_RULE},
    MessageType.CHALLENGE: {"nonce": _hex_bytes(NONCE_BYTES), "hub_id": _ID_RULE,
                            "time": _int(0, _INT64)},
    MessageType.AUTH: {"signature": _hex_bytes(SIGNATURE_BYTES)},
    MessageType.WELCOME: {"heartbeat": _int(1, 86_400)},
    MessageType.REFUSE: _REASON_RULES,
    MessageType.OFFER: _OFFER_RULES,
    MessageType.RESUME: _CHUNK_RULES,
    MessageType.CHUNK: _CHUNK_RULES,
    MessageType.ACK: _CHUNK_RULES,
    MessageType.DONE: {"transfer": _TRANSFER},
    MessageType.RECEIVED: {"transfer": _TRANSFER},
    MessageType.CANCEL: {"transfer": _TRANSFER, "offered_by": _one_of(_OFFERED_BY),
                         **_REASON_RULES},
    MessageType.LOG: {"bundle_id": _ID_RULE, "step": _int(0, 1_000_000),
                      "seq": _int(0, _INT64), "stream": _one_of(_STREAMS)},
    MessageType.RESULT_OFFER: _OFFER_RULES,
    MessageType.RESULT_CHUNK: _CHUNK_RULES,
    MessageType.RESULT_DONE: {"transfer": _TRANSFER},
    MessageType.HEARTBEAT: {"id": _int(0, _INT64)},
    MessageType.HEARTBEAT_ACK: {"id": _int(0, _INT64)},
    MessageType.STATE: {"id": _int(0, _INT64)},
    MessageType.ERROR: _REASON_RULES,
}

# Bodies: the most a type may carry (bytes). Types not listed carry none.
_BODY_LIMITS: dict[MessageType, int] = {
    MessageType.CHUNK: MAX_CHUNK_BYTES,
    MessageType.RESULT_CHUNK: MAX_CHUNK_BYTES,
    MessageType.LOG: MAX_LOG_LINE_BYTES,
    MessageType.STATE: MAX_STATE_BYTES,
}


@dataclass(frozen=True)
class Part:
    """One part of a split file: its size (bytes) and SHA-256 (hex)."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Offer:
    """A file offered for transfer (OFFER / RESULT_OFFER, §4).

    The transferred byte stream is the file, or the concatenation of its parts in order;
    ``size`` and ``sha256`` are those of the whole stream, and ``parts`` (empty when the file
    is not split) lists each part's size and SHA-256. Part ``i`` is stored as
    ``NAME.partNNN`` (docs/bundle-format.md §8).

    Raises:
        MalformedError: a field breaks its rule, or the parts do not add up to ``size``.
    """

    transfer: str
    name: str
    size: int
    sha256: str
    parts: tuple[Part, ...] = ()

    def __post_init__(self) -> None:
        self.to_header()  # runs every field rule
        if self.parts and sum(p.size for p in self.parts) != self.size:
            raise _fail("parts", "must add up to the offered size")

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "transfer": self.transfer, "name": self.name, "size": self.size,
            "sha256": self.sha256, "parts": [[p.size, p.sha256] for p in self.parts],
        }
        for key, rule in _OFFER_RULES.items():
            rule(header[key], key)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Offer:
        return cls(header["transfer"], header["name"], header["size"], header["sha256"],
                   header["parts"])


@dataclass(frozen=True)
class Message:
    """A decoded message: its type, its checked header fields, and its body.

    Header values are as checked by the rules: hex nonces and signatures are ``bytes``, the
    offer's ``parts`` a tuple of :class:`Part`.
    """

    type: MessageType
    header: Mapping[str, Any]
    #: CHUNK and RESULT_CHUNK: a read-only view into the received message (no copy)
    body: bytes | memoryview = b""
    #: STATE only: the body parsed and checked by :func:`bundle.sync.state.check_state`.
    state: Mapping[str, Any] | None = None


def _check_header(mtype: MessageType, header: object) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise MalformedError(f"{mtype.name} header is not a JSON object",
                             remote_text="header is not a JSON object")
    rules = _SCHEMAS[mtype]
    if set(header) != set(rules):
        missing = sorted(set(rules) - set(header))
        extra = sorted(set(header) - set(rules))
        why = "; ".join(filter(None, [
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(k[:40] for k in extra[:5])}" if extra else "",
        ]))
        raise MalformedError(f"{mtype.name} header: {why}", remote_text=f"{mtype.name}: {why}")
    return {key: rule(header[key], key) for key, rule in rules.items()}


_VIEW_BODIES = frozenset({MessageType.CHUNK, MessageType.RESULT_CHUNK})  # bodies not copied
#: HEARTBEAT and HEARTBEAT_ACK in their canonical form (what every peer sends: no body, the
#: header ``{"id":N}``) are read and written without the JSON parser and encoder — a live
#: server with 10,000 agents handles 333 of each a second. Anything else takes the general
#: path, with the same checks and errors.
_HEARTBEATS = frozenset({MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK})
_CANONICAL_ID = re.compile(rb'\{"id":(0|[1-9][0-9]{0,18})\}')


def decode_message(data: bytes) -> Message:
    """Decode one WebSocket binary message.

    Raises:
        OversizedError, UnknownTypeError, MalformedError: as :func:`_decode_head`.
    """
    mtype, header, end, state = _decode_head(data)
    if mtype in _VIEW_BODIES:
        # File bytes stay where the WebSocket layer put them: a read-only view, no copy
        # (a fresh 1 MiB copy per chunk cost more than decoding everything else).
        return Message(mtype, header, memoryview(data)[end:], state)
    return Message(mtype, header, bytes(data[end:]), state)


def _decode_head(data: bytes | bytearray) -> tuple[MessageType, dict[str, Any], int,
                                                   Mapping[str, Any] | None]:
    """Check one message and decode its type and header: (type, header, where the body
    starts, the checked STATE). Only LOG and STATE bodies are read (UTF-8, strict JSON);
    others are checked by length, so checking a 1 MiB CHUNK copies none of it.

    Raises:
        OversizedError: the header or body is over its limit (checked before parsing).
        UnknownTypeError: the type byte is not a :class:`MessageType`.
        MalformedError: truncated, not strict JSON, wrong header keys or field values, or a
            body on a type that carries none (or a LOG body that is not UTF-8).
    """
    if len(data) < _PREFIX.size:
        raise MalformedError(f"message of {len(data)} bytes is shorter than its prefix",
                             remote_text="truncated message")
    type_byte, header_len = _PREFIX.unpack_from(data)
    try:
        mtype = MessageType(type_byte)
    except ValueError:
        raise UnknownTypeError(f"unknown message type 0x{type_byte:02x}",
                               remote_text=f"unknown message type 0x{type_byte:02x}") from None
    if header_len > MAX_HEADER_BYTES:
        raise OversizedError(
            f"{mtype.name} header of {header_len} bytes is over {MAX_HEADER_BYTES} bytes",
            remote_text=f"header over {MAX_HEADER_BYTES} bytes")
    end = _PREFIX.size + header_len
    if len(data) < end:
        raise MalformedError(
            f"{mtype.name} header is truncated ({len(data) - _PREFIX.size} of {header_len} bytes)",
            remote_text="truncated header")
    if mtype in _HEARTBEATS and len(data) == end:
        found = _CANONICAL_ID.fullmatch(data, _PREFIX.size, end)
        if found is not None and int(found[1]) <= _INT64:
            return mtype, {"id": int(found[1])}, end, None
    body_len = len(data) - end
    limit = _BODY_LIMITS.get(mtype, 0)
    if body_len > limit:
        if limit == 0:
            raise MalformedError(f"{mtype.name} carries a body of {body_len} bytes",
                                 remote_text=f"{mtype.name} carries no body")
        raise OversizedError(f"{mtype.name} body of {body_len} bytes is over {limit} bytes",
                             remote_text=f"{mtype.name} body over {limit} bytes")
    try:
        raw = loads_strict(bytes(data[_PREFIX.size:end]), MAX_HEADER_BYTES)
    except StrictJSONError as exc:
        raise MalformedError(f"{mtype.name} header: {exc}",
                             remote_text="header is not strict JSON") from exc
    header = _check_header(mtype, raw)
    if mtype is MessageType.LOG:
        try:
            bytes(data[end:]).decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise MalformedError(f"LOG text is not UTF-8 at byte {exc.start}",
                                 remote_text="log text is not UTF-8") from exc
    state = None
    if mtype is MessageType.STATE:
        try:
            parsed = loads_strict(bytes(data[end:]), MAX_STATE_BYTES)
        except StrictJSONError as exc:
            raise MalformedError(f"STATE body: {exc}",
                                 remote_text="STATE body is not strict JSON") from exc
        state = check_state(parsed)
    return mtype, header, end, state


def _wire_value(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [[p.size, p.sha256] if isinstance(p, Part) else p for p in value]
    return value


def _encode_head(mtype: MessageType, header: Mapping[str, object]) -> bytes:
    """The type byte, the header length and the canonical JSON header of one message."""
    wire = {key: _wire_value(value) for key, value in header.items()}
    try:
        payload = dumps_canonical(wire)
    except StrictJSONError as exc:
        raise UsageError(f"cannot encode {mtype.name}: {exc}") from exc
    if len(payload) > MAX_HEADER_BYTES:
        raise UsageError(f"{mtype.name} header of {len(payload)} bytes is over the limit")
    return _PREFIX.pack(int(mtype), len(payload)) + payload


def _self_check(mtype: MessageType, data: bytes | bytearray) -> None:
    try:
        _decode_head(data)  # what the peer will check, without copying the body
    except (MalformedError, OversizedError, UnknownTypeError) as exc:
        raise UsageError(f"cannot encode {mtype.name}: {exc}") from exc


def encode_message(mtype: MessageType, header: Mapping[str, object], body: bytes = b"") -> bytes:
    """Encode one message; ``bytes`` header values are written as lowercase hex.

    Raises:
        UsageError: the message would not pass :func:`decode_message` (a local bug).
    """
    if mtype in _HEARTBEATS and not body and header.keys() == {"id"}:
        beat = header["id"]
        if type(beat) is int and 0 <= beat <= _INT64:  # its canonical form, checked as read
            head = b'{"id":%d}' % beat
            return _PREFIX.pack(int(mtype), len(head)) + head
    data = b"".join((_encode_head(mtype, header), body))  # one copy
    _self_check(mtype, data)
    return data


def encode_chunk(mtype: MessageType, header: Mapping[str, object], size: int,
                 fill: Callable[[memoryview], None], *,
                 buffer: bytearray | None = None) -> bytearray:
    """Encode a CHUNK or RESULT_CHUNK whose ``size``-byte body ``fill`` writes in place (a
    file read straight into the message: no copy of the body in between). ``buffer``, if
    it has exactly the message's length, is reused instead of a fresh allocation (a
    message already sent: the WebSocket layer copied it into its frame).

    Raises:
        UsageError: not a chunk type, or the message would not pass :func:`decode_message`.
        OSError: as ``fill``.
    """
    if mtype not in _VIEW_BODIES:
        raise UsageError(f"{mtype.name} is not a chunk")
    head = _encode_head(mtype, header)
    total = len(head) + size
    data = buffer if buffer is not None and len(buffer) == total else bytearray(total)
    data[:len(head)] = head
    _self_check(mtype, data)  # before reading: checks sizes and the header
    fill(memoryview(data)[len(head):])
    return data


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def auth_message(hub_id: str, agent_id: str, nonce: bytes, binding: bytes = b"") -> bytes:
    """The bytes an agent signs to authenticate (§5).

    Every field is length-prefixed (4 bytes, big endian) after the domain tag, so no two
    different tuples encode the same way and the signature cannot be reused in another
    context. ``binding`` is the TLS channel binding (§5.2) or ``b""`` on plain loopback.

    Raises:
        UsageError: the nonce is not :data:`NONCE_BYTES` long.
    """
    if len(nonce) != NONCE_BYTES:
        raise UsageError(f"a challenge nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
    return b"".join(_field(x) for x in (
        AUTH_DOMAIN, hub_id.encode("utf-8"), agent_id.encode("utf-8"), nonce, binding))


def verify_auth(public_key: PublicKey, signature: bytes, *, hub_id: str, agent_id: str,
                nonce: bytes, binding: bytes = b"") -> None:
    """Check an AUTH signature over :func:`auth_message` of the given fields (§5).

    Raises:
        AuthError: the signature does not verify (other key, nonce, hub id or binding).
    """
    try:
        public_key.verify(auth_message(hub_id, agent_id, nonce, binding), signature)
    except (SignatureError, UsageError) as exc:
        raise AuthError(f"agent {agent_id}: AUTH signature does not verify") from exc
