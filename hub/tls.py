"""TLS for the live server: the server's SSL context and its channel binding.

The live protocol binds the agent's signed challenge to the TLS connection with
**tls-server-end-point** (RFC 5929 §4; docs/live-protocol.md §5.2): the SHA-256 of the hub's
certificate in DER form. The hub knows its own certificate; the agent reads it from the
connection. A relay that terminates TLS with another certificate cannot reuse a signature.

This module does not listen on anything (:mod:`hub.live` does).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from hub.errors import ConfigError

__all__ = ["ServerTLS", "end_point_binding", "load_server_tls"]

MAX_PEM_BYTES = 64 * 1024  # bytes of a certificate chain file we are willing to read


@dataclass(frozen=True)
class ServerTLS:
    """What the live server needs for ``wss://``: the context and the §5.2 binding."""

    context: ssl.SSLContext
    binding: bytes
    cert_file: Path


def end_point_binding(cert_der: bytes) -> bytes:
    """tls-server-end-point of a certificate in DER form (SHA-256, as §5.2 fixes it)."""
    return hashlib.sha256(cert_der).digest()


def _first_pem_certificate(path: Path) -> bytes:
    """The leaf (first) certificate of a PEM chain file, as DER.

    Raises:
        ConfigError: unreadable, too large, or no certificate in it.
    """
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"live TLS certificate {path}: {exc.strerror}; create it with "
                          "`tiangong hub tls issue` or set [live] tls_cert_file") from exc
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"live TLS certificate {path}: larger than {MAX_PEM_BYTES} bytes")
    text = data.decode("ascii", errors="replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ConfigError(f"live TLS certificate {path}: no PEM certificate in it")
    try:
        return ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)])
    except ValueError as exc:
        raise ConfigError(f"live TLS certificate {path}: {exc}") from exc


def load_server_tls(cert_file: Path, key_file: Path) -> ServerTLS:
    """A TLS 1.2+ server context for ``cert_file`` (PEM chain, leaf first) and ``key_file``.

    Raises:
        ConfigError: a file is missing or unreadable, or the key does not match the
            certificate (the message names both files).
    """
    cert_der = _first_pem_certificate(cert_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"live TLS key {key_file}: {exc.strerror}; create it with "
                          "`tiangong hub tls issue` or set [live] tls_key_file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"live TLS: cannot use certificate {cert_file} with key {key_file}: "
                          f"{exc}") from exc
    return ServerTLS(context, end_point_binding(cert_der), cert_file)
