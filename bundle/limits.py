"""Named, configurable limits of the bundle format (docs/bundle-format.md §10).

Every limit has a unit in its name or comment and is checked while streaming, before the
bytes it guards are read, decompressed or stored. The writer checks its output against the
same limits, so a bundle written with the defaults verifies with the defaults.

This module holds values only; it does no checking itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["DEFAULT_LIMITS", "GiB", "KiB", "Limits", "MiB", "format_bytes"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_MAX_INT64 = 2**63 - 1
MAX_PAYLOAD_INDEX = 999_999  # payload/NNNNNN.zst has six digits (§2.1)


@dataclass(frozen=True)
class Limits:
    """Caps applied by the verifier (and respected by the writer).

    Defaults are chosen so that one envelope can hold the manifest of ``max_files`` files:
    each file entry costs about 370 bytes of envelope (base64 included, §10).

    Raises:
        ValueError: a field is not a positive integer, or is out of range.
    """

    max_envelope_bytes: int = 1 * MiB  # bytes of envelope.json (DSSE envelope, base64 manifest)
    max_roots_bytes: int = 1 * MiB  # bytes of roots.json
    max_roots: int = 16  # root envelopes in roots.json
    max_files: int = 2_000  # payload files per bundle
    max_file_bytes: int = 64 * GiB  # bytes of one payload file, uncompressed
    max_total_bytes: int = 256 * GiB  # bytes of all payload files together, uncompressed
    max_window_bytes: int = 32 * MiB  # bytes of zstd window (decoder memory) per payload
    max_secrets: int = 256  # sealed secrets per bundle
    max_sealed_bytes: int = 64 * KiB  # bytes of one sealed secret (decoded)
    staging_reserve_bytes: int = 16 * MiB  # bytes kept free in staging beyond the bundle's need

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"limit {f.name} must be an integer")
            low = 0 if f.name == "staging_reserve_bytes" else 1
            if not low <= value <= _MAX_INT64:
                raise ValueError(f"limit {f.name} must be between {low} and 2**63-1")
        if self.max_files > MAX_PAYLOAD_INDEX:
            raise ValueError(f"limit max_files cannot exceed {MAX_PAYLOAD_INDEX}")
        if self.max_window_bytes < KiB:
            # libzstd refuses a maximum window below 1 KiB (ZSTD_WINDOWLOG_ABSOLUTEMIN).
            raise ValueError("limit max_window_bytes must be at least 1024 bytes")


DEFAULT_LIMITS = Limits()


def format_bytes(n: int) -> str:
    """A byte count for operators: ``812 bytes``, ``4.0 KiB``, ``812 MiB``, ``1.4 GiB``."""
    if n < KiB:
        return f"{n} bytes"
    value = n / KiB
    units = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    if value < 10:
        return f"{value:.1f} {units[i]}"
    return f"{value:.0f} {units[i]}"
