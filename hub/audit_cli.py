"""``tiangong audit verify-export FILE --trust root.json``: verify an audit export offline.

Needs only the exported file and the hub's root document (``root.json``, pinned as given):
the audit key comes from the root's ``audit`` role. Works without Flask, SQLAlchemy or a
database — this module imports only ``hub.audit_chain``, ``hub.errors`` and ``signing``.

Exit codes: 0 the export verifies; 1 it does not (every problem named); 2 the input is
unusable (unreadable file, bad root, malformed export, checkpoint with a bad signature).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from hub.audit_chain import MAX_EXPORT_LINE_BYTES, ChainReport, verify_export_lines
from hub.errors import AuditVerificationError
from signing.errors import SigningError
from signing.roots import MAX_ROOT_BYTES, TrustedRoot

__all__ = ["audit", "chain_report_json", "read_lines"]


def chain_report_json(report: ChainReport) -> dict[str, Any]:
    """What ``--json`` prints for a verification (``hub audit verify``, ``verify-export``)."""
    return {
        "ok": report.ok,
        "events": report.events,
        "head_seq": report.last_seq,
        "head_hash": report.head_hash,
        "checkpoints": report.checkpoints_checked,
        "problems": [p.message for p in report.problems],
        "problem_kinds": [{"seq": p.seq, "kind": p.kind} for p in report.problems],
        "problem_count": report.problem_count,
        # True: every event's MAC verified; False: no audit MAC key; None: an export (none)
        "macs_checked": report.macs_checked,
    }


def read_lines(fh: BinaryIO, max_bytes: int = MAX_EXPORT_LINE_BYTES) -> Iterator[bytes]:
    """Yield lines of at most ``max_bytes`` (+ newline); a longer line is yielded cut at the
    cap + 2 bytes so the verifier refuses it without reading it whole."""
    while True:
        line = fh.readline(max_bytes + 2)
        if not line:
            return
        yield line
        if len(line) > max_bytes + 1:
            return  # the verifier refuses the over-long line; read no further


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def audit() -> None:
    """Verify a hub's exported audit log offline."""


@audit.command("verify-export")
@click.argument("export_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--trust",
    "trust_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The hub's root document (root.json) you trust.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON for scripts.")
def verify_export(export_file: Path, trust_file: Path, as_json: bool) -> None:
    """Verify EXPORT_FILE (written by `tiangong hub audit export`) against the hub's root."""
    try:
        with open(trust_file, "rb") as fh:
            root_bytes = fh.read(MAX_ROOT_BYTES + 1)
        trusted = TrustedRoot.pin(root_bytes)
    except OSError as exc:
        click.echo(f"error: {trust_file}: {exc.strerror}", err=True)
        sys.exit(2)
    except SigningError as exc:
        click.echo(f"error: {trust_file} is not a valid root document: {exc}", err=True)
        sys.exit(2)
    try:
        with open(export_file, "rb") as fh:
            report = verify_export_lines(read_lines(fh), trusted)
    except OSError as exc:
        click.echo(f"error: {export_file}: {exc.strerror}", err=True)
        sys.exit(2)
    except AuditVerificationError as exc:
        click.echo(f"error: {export_file}: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({"file": str(export_file)} | chain_report_json(report),
                              indent=2, sort_keys=True))
    else:
        click.echo(f"{export_file}: {report.summary()}")
    sys.exit(0 if report.ok else 1)
