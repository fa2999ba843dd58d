"""Errors of the live sync protocol (docs/live-protocol.md §7).

    SyncError                         (attributes ``code``: wire code; ``close_code``: WebSocket
    │                                  close code; ``remote_text``: what the peer may be told)
    ├── ProtocolError                 the peer broke the protocol                 [protocol]
    │   ├── MalformedError            truncated message, bad JSON, bad field      [malformed]
    │   ├── OversizedError            header, chunk, log line or transfer too big [oversized]
    │   ├── UnknownTypeError          message type byte not in the set            [unknown-type]
    │   ├── VersionError              protocol version not spoken here            [bad-version]
    │   ├── OutOfOrderError           message not allowed now, wrong offset,
    │   │                             unknown transfer                            [out-of-order]
    │   ├── NotAuthenticatedError     anything but HELLO/CHALLENGE/AUTH before auth
    │   │                                                                         [unauthenticated]
    │   ├── RateLimitedError          the peer sent log lines faster than allowed [rate-limited]
    │   ├── HandshakeTimeoutError     (raised by the hub layer) no authentication within
    │   │                             the handshake deadline                      [timeout]
    │   ├── ForbiddenError            (raised by the hub layer) a message names a bundle
    │   │                             the hub did not address to this agent       [forbidden]
    │   └── ConnectionClosedError     data received after the connection closed  [closed]
    ├── AuthError                     authentication failed                       [auth-failed]
    │   ├── UnknownAgentError         (raised by the hub layer) no such agent     [unknown-agent]
    │   ├── RevokedAgentError         (raised by the hub layer) agent revoked     [revoked]
    │   ├── WrongHubError             the agent expected another hub, or the hub
    │   │                             answered as another hub                     [wrong-hub]
    │   ├── BackoffError              (raised by the hub layer) too many failed logins from
    │   │                             this address; refused without a look-up     [backoff]
    │   └── BusyError                 (raised by the hub layer) too many unauthenticated
    │                                 connections from this address or in total   [busy]
    ├── TransferError                 received bytes do not match the offer (size or SHA-256);
    │                                 raised by TransferReceiver, not a protocol violation
    │                                                                             [corrupt]
    └── UsageError                    the local caller asked for something the protocol
        │                             forbids (a bug in the asyncio layer)        [usage]
        └── LogRateError              no log budget left now; ``retry_after`` says when

``str(error)`` is for the local operator and may name offsets, ids and limits.
``remote_text`` is what goes to the peer in ERROR / REFUSE: short, and never about our
internals (no key ids, no stack traces, no file paths).

This module holds classes only.
"""

from __future__ import annotations

__all__ = [
    "CLOSE_CODES",
    "AuthError",
    "BackoffError",
    "BusyError",
    "ConnectionClosedError",
    "ForbiddenError",
    "HandshakeTimeoutError",
    "LogRateError",
    "MalformedError",
    "NotAuthenticatedError",
    "OutOfOrderError",
    "OversizedError",
    "ProtocolError",
    "RateLimitedError",
    "RevokedAgentError",
    "SyncError",
    "TransferError",
    "UnknownAgentError",
    "UnknownTypeError",
    "UsageError",
    "VersionError",
    "WrongHubError",
]

# WebSocket close codes (RFC 6455 §7.4.2: 4000-4999 are for applications), by wire code.
CLOSE_CODES: dict[str, int] = {
    "protocol": 4000,
    "malformed": 4001,
    "oversized": 4002,
    "unknown-type": 4003,
    "bad-version": 4004,
    "out-of-order": 4005,
    "unauthenticated": 4006,
    "rate-limited": 4007,
    "closed": 4008,
    "timeout": 4009,
    "auth-failed": 4010,
    "unknown-agent": 4011,
    "revoked": 4012,
    "wrong-hub": 4013,
    "backoff": 4014,
    "busy": 4015,
    "forbidden": 4016,
    "corrupt": 4020,
    "usage": 4090,
    "going-away": 1001,  # RFC 6455: normal shutdown of either side
}


class SyncError(Exception):
    """Base of live-protocol errors."""

    code = "protocol"
    default_remote_text = "protocol error"

    def __init__(self, message: str, *, remote_text: str | None = None) -> None:
        super().__init__(message)
        self.remote_text = remote_text if remote_text is not None else self.default_remote_text

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.code]


class ProtocolError(SyncError):
    code = "protocol"


class MalformedError(ProtocolError):
    code = "malformed"
    default_remote_text = "malformed message"


class OversizedError(ProtocolError):
    code = "oversized"
    default_remote_text = "message over a size limit"


class UnknownTypeError(ProtocolError):
    code = "unknown-type"
    default_remote_text = "unknown message type"


class VersionError(ProtocolError):
    code = "bad-version"
    default_remote_text = "protocol version not supported"


class OutOfOrderError(ProtocolError):
    code = "out-of-order"
    default_remote_text = "message not expected now"


class NotAuthenticatedError(ProtocolError):
    code = "unauthenticated"
    default_remote_text = "not authenticated"


class RateLimitedError(ProtocolError):
    code = "rate-limited"
    default_remote_text = "too many log messages"


class HandshakeTimeoutError(ProtocolError):
    code = "timeout"
    default_remote_text = "no authentication within the handshake deadline"


class ForbiddenError(ProtocolError):
    code = "forbidden"
    default_remote_text = "not addressed to this agent"


class ConnectionClosedError(ProtocolError):
    code = "closed"
    default_remote_text = "connection closed"


class AuthError(SyncError):
    code = "auth-failed"
    default_remote_text = "authentication failed"


class UnknownAgentError(AuthError):
    code = "unknown-agent"
    default_remote_text = "agent not enrolled"


class RevokedAgentError(AuthError):
    code = "revoked"
    default_remote_text = "agent revoked"


class WrongHubError(AuthError):
    code = "wrong-hub"
    default_remote_text = "wrong hub"


class BackoffError(AuthError):
    code = "backoff"
    default_remote_text = "too many failed logins from this address; retry later"


class BusyError(AuthError):
    code = "busy"
    default_remote_text = "too many unauthenticated connections; retry later"


class TransferError(SyncError):
    code = "corrupt"
    default_remote_text = "transfer corrupt"


class UsageError(SyncError):
    code = "usage"
    default_remote_text = "internal error"


class LogRateError(UsageError):
    """No log budget right now; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
