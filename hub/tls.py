"""TLS for the live server: a private CA, the server certificate, the server's SSL context
and its channel binding.

``hub init`` creates, in ``<data_dir>/tls/``::

    ca.crt       the hub's private CA (ECDSA P-256, 10 years): agents pin it from their
                 enrollment response and trust no other CA for the live channel
    ca.key       its private key (0600): only ``hub tls issue`` needs it
    server.crt   the live server's certificate, signed by the CA, for the names given
                 (default: localhost, 127.0.0.1 and this host's name), 2 years
    server.key   its private key (0600)

``tiangong hub tls issue --name …`` signs a new server certificate with the same CA (when the
hub's address changes, or before the old one expires); agents keep working because they pin
the CA, not the certificate. ECDSA P-256 rather than Ed25519: every TLS stack an operator
may put in front of the hub (nginx, HAProxy, load balancers) speaks it.

The live protocol binds the agent's signed challenge to the TLS connection with
**tls-server-end-point** (RFC 5929 §4; docs/live-protocol.md §5.2): the SHA-256 of the hub's
certificate in DER form. The hub knows its own certificate; the agent reads it from the
connection. A relay that terminates TLS with another certificate cannot reuse a signature.

This module does not listen on anything (:mod:`hub.live` does).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.errors import ConfigError
from signing.errors import KeyFileError
from signing.keyfile import write_file_atomic

__all__ = [
    "CA_VALIDITY_DAYS",
    "SERVER_VALIDITY_DAYS",
    "ServerTLS",
    "TlsFiles",
    "certificate_binding",
    "create_ca",
    "default_names",
    "end_point_binding",
    "issue_server_certificate",
    "load_server_tls",
    "tls_files",
]

MAX_PEM_BYTES = 64 * 1024  # bytes of a certificate chain file we are willing to read
CA_VALIDITY_DAYS = 3650  # days the private CA is valid
SERVER_VALIDITY_DAYS = 730  # days a server certificate is valid (re-issue with `hub tls issue`)
MAX_NAMES = 64  # subject alternative names in one server certificate


@dataclass(frozen=True)
class TlsFiles:
    """The four files of ``<data_dir>/tls/``."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


def tls_files(data_dir: Path) -> TlsFiles:
    """Where ``hub init`` keeps the TLS files of the hub in ``data_dir``."""
    return TlsFiles(Path(data_dir) / "tls")


def default_names() -> list[str]:
    """``localhost``, ``127.0.0.1`` and this host's name (and its FQDN when it has one)."""
    names = ["localhost", "127.0.0.1"]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name not in names and name != "localhost.localdomain":
            names.append(name)
    return names


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for the subjectAltName extension.

    Raises:
        ConfigError: no name, too many, or one that is neither a host name nor an address.
    """
    result: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in names:
        name = raw.strip().lower()
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
            continue
        except ValueError:
            pass
        labels = name.rstrip(".").split(".")
        if not all(0 < len(label) <= 63 and label.replace("-", "").isalnum() and
                   label.isascii() and not label.startswith("-") for label in labels):
            raise ConfigError(f"TLS name {raw!r} is neither a host name nor an IP address")
        result.append(x509.DNSName(name.rstrip(".")))
    if not result:
        raise ConfigError("a server certificate needs at least one name (--tls-name)")
    if len(result) > MAX_NAMES:
        raise ConfigError(f"{len(result)} TLS names: at most {MAX_NAMES}")
    return result


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    try:
        write_file_atomic(path, data, mode=mode, overwrite=overwrite)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from exc


def create_ca(files: TlsFiles, hub_id: str, now: dt.datetime) -> x509.Certificate:
    """Create the hub's private CA (``ca.crt``, ``ca.key`` 0600).

    Raises:
        ConfigError: the CA exists already (never overwritten: agents pin it), or the
            directory cannot be written.
    """
    if files.ca_cert.exists() or files.ca_key.exists():
        raise ConfigError(f"{files.ca_cert} exists already; the CA is never replaced "
                          "(agents pin it)")
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Tiangong hub {hub_id} CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(files.ca_key, _key_pem(key), 0o600, overwrite=False)
    _write(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=False)
    return cert


def _load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Raises ConfigError: a CA file is missing or unreadable, or the key is not the CA's."""
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: not found; the hub's CA is created by "
                          "`tiangong hub init` (`tiangong hub tls init` for an older hub)") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the hub's CA in {files.directory}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
            key.public_key().public_numbers() != cert.public_key().public_numbers()):  # type: ignore[union-attr]
        raise ConfigError(f"{files.ca_key} is not the private key of {files.ca_cert}")
    return cert, key


def issue_server_certificate(files: TlsFiles, names: Sequence[str], now: dt.datetime, *,
                             days: int = SERVER_VALIDITY_DAYS) -> x509.Certificate:
    """Sign a new server certificate for ``names`` with the hub's CA and replace
    ``server.crt``/``server.key`` (a new key each time). The running live server keeps its
    old certificate until it restarts.

    Raises:
        ConfigError: no CA, a bad name, ``days`` not positive, files not writable.
    """
    if days <= 0:
        raise ConfigError(f"certificate validity must be positive, not {days} days")
    alt_names = _general_names(names)
    ca_cert, ca_key = _load_ca(files)
    key = ec.generate_private_key(ec.SECP256R1())
    first = alt_names[0].value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.server_key, _key_pem(key), 0o600, overwrite=True)
    _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644,
           overwrite=True)
    return cert


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


def certificate_binding(cert_file: Path) -> bytes:
    """tls-server-end-point of the first certificate in a PEM file: what agents sign when
    this is the certificate they see (e.g. a TLS-terminating proxy's).

    Raises:
        ConfigError: unreadable or no certificate in it.
    """
    return end_point_binding(_first_pem_certificate(cert_file))


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
