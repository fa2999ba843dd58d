"""Read a deployment's logs: the live lines an online agent streams, and the step logs of
the signed result bundle once it has been imported.

**Live lines.** The live server (:mod:`hub.live_hub`, :class:`hub.live_files.LogStore`)
appends one JSON object per LOG message to ``<data_dir>/live-logs/<agent_id>/<bundle_id>.log``:
``{"seq", "step", "stream", "text"}``, each ``seq`` stored once (docs/live-protocol.md §3).
:func:`live_lines` returns the lines with a ``seq`` greater than a cursor, in ``seq`` order,
at most :data:`MAX_LIVE_LINES` lines / :data:`MAX_LIVE_BYTES` of text per call, reading the
file as a stream (memory does not grow with the file). A line that is not a well-formed
record (a torn last line while the live server writes, say) is skipped, never fatal.

**Result logs.** The importer (:func:`hub.services.exchange.import_result`) stores a result
verbatim as ``<data_dir>/results/<envelope sha256>.tgr`` and records the digest in its
``result.import`` audit event. :func:`result_for_deployment` finds that event, verifies the
stored file again with :mod:`bundle.reader` (signature by the agent's registered key,
digests of every log member: a file edited on the hub's disk is reported, not shown), with
the clock set to the import time (a result is short-lived by design; it was fresh when it
was imported). Logs are shown up to :data:`MAX_SHOWN_LOG_BYTES` each, the cut marked.

Every function that takes a deployment checks that the actor may view its environment.
Nothing here writes to the database or to the log files.
"""

from __future__ import annotations

import heapq
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bundle.errors import BundleError
from bundle.reader import ExpectResult, VerifierState, verify_path
from hub.db import AuditEvent, Deployment
from hub.services.context import ServiceContext
from hub.services.users import require
from signing.errors import SigningError
from signing.keys import PublicKey

__all__ = [
    "LIVE_LOGS_DIR",
    "MAX_LIVE_BYTES",
    "MAX_LIVE_LINES",
    "MAX_SHOWN_LOG_BYTES",
    "RESULTS_DIR",
    "LiveChunk",
    "LiveLine",
    "ResultLogs",
    "ResultStep",
    "deployment_live_lines",
    "deployment_live_tail",
    "live_lines",
    "live_log_path",
    "live_tail",
    "result_for_deployment",
]

LIVE_LOGS_DIR = "live-logs"  # under the data directory (hub.live_hub.LiveHub.logs)
RESULTS_DIR = "results"  # under the data directory (where results are stored verbatim)
MAX_LIVE_LINES = 2000  # lines per live_lines call
MAX_LIVE_BYTES = 1024 * 1024  # bytes of text per live_lines call
MAX_RECORD_BYTES = 64 * 1024  # bytes of one stored JSON line (a LOG body is ≤ 16 KiB)
MAX_SHOWN_LOG_BYTES = 1024 * 1024  # bytes of one result step log shown on a page
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # bundle-format.md §6
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")  # live-protocol.md §2.3


@dataclass(frozen=True)
class LiveLine:
    """One LOG message as stored: ``step`` is the agent's 0-based step index."""

    seq: int
    step: int
    stream: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "step": self.step, "stream": self.stream, "text": self.text}


@dataclass(frozen=True)
class LiveChunk:
    """Lines after a cursor. ``last_seq`` is the cursor for the next call (unchanged when
    nothing new came); ``more`` says a limit cut this answer short (ask again at once)."""

    lines: tuple[LiveLine, ...]
    last_seq: int
    more: bool
    omitted: int = 0  # lines before ``lines`` left out (tails only)


def live_log_path(data_dir: Path, agent_id: str, bundle_id: str) -> Path | None:
    """``<data_dir>/live-logs/<agent_id>/<bundle_id>.log`` (the lines that agent streamed
    for that bundle), or None for a name that is not an id (it could otherwise point
    outside the directory)."""
    if not (_BUNDLE_ID.fullmatch(bundle_id) and _AGENT_ID.fullmatch(agent_id)):
        return None
    return Path(data_dir) / LIVE_LOGS_DIR / agent_id / f"{bundle_id}.log"


def _deployment_log(deployment: Deployment, data_dir: Path) -> Path | None:
    agent = deployment.agent
    if not deployment.bundle_id or agent is None:
        return None
    return live_log_path(data_dir, agent.agent_id, deployment.bundle_id)


def _records(path: Path) -> Iterator[LiveLine]:
    """Every well-formed record of the file, in file order; skips what is not one."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        while raw := fh.readline(MAX_RECORD_BYTES + 1):
            if len(raw) > MAX_RECORD_BYTES or not raw.endswith(b"\n"):
                # over-long (skip the rest of it) or torn (still being written): not a record
                while len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
                    raw = fh.readline(MAX_RECORD_BYTES + 1)
                continue
            try:
                doc = json.loads(raw)
                line = LiveLine(int(doc["seq"]), int(doc["step"]), str(doc["stream"]),
                                str(doc["text"]))
            except (ValueError, KeyError, TypeError):
                continue
            yield line


def _seq(line: LiveLine) -> int:
    return line.seq


def live_lines(path: Path, after: int = -1, *, max_lines: int = MAX_LIVE_LINES,
               max_bytes: int = MAX_LIVE_BYTES) -> LiveChunk:
    """The lines of ``path`` with ``seq > after``, in ``seq`` order, within the limits.

    Lines normally arrive in order; one that arrives late with a lower ``seq`` than a
    client's cursor is shown on the next full page load.
    """
    # At most max_lines + 1 records are held, however long the file is.
    newer = heapq.nsmallest(max_lines + 1, (r for r in _records(path) if r.seq > after),
                            key=_seq)
    out: list[LiveLine] = []
    size = 0
    for record in newer:
        if len(out) >= max_lines or (out and size + len(record.text) > max_bytes):
            break
        out.append(record)
        size += len(record.text)
    last = out[-1].seq if out else after
    return LiveChunk(tuple(out), last, len(out) < len(newer))


def live_tail(path: Path, *, max_lines: int = MAX_LIVE_LINES) -> LiveChunk:
    """The last ``max_lines`` lines by ``seq`` (a page's server-rendered log so far)."""
    total = 0

    def counted() -> Iterator[LiveLine]:
        nonlocal total
        for record in _records(path):
            total += 1
            yield record

    tail = heapq.nlargest(max_lines, counted(), key=_seq)[::-1]
    last = tail[-1].seq if tail else -1
    return LiveChunk(tuple(tail), last, False, total - len(tail))


def deployment_live_lines(ctx: ServiceContext, deployment: Deployment, data_dir: Path,
                          after: int = -1) -> LiveChunk:
    """:func:`live_lines` of ``deployment``'s bundle (empty before it has a bundle).

    Raises:
        PermissionDeniedError: the actor may not view the deployment's environment.
    """
    require(ctx.actor, "view", deployment.environment)
    path = _deployment_log(deployment, data_dir)
    if path is None:
        return LiveChunk((), after, False)
    return live_lines(path, after)


def deployment_live_tail(ctx: ServiceContext, deployment: Deployment,
                         data_dir: Path) -> LiveChunk | None:
    """:func:`live_tail` of ``deployment``'s bundle; None when nothing was streamed.

    Raises:
        PermissionDeniedError: the actor may not view the deployment's environment.
    """
    require(ctx.actor, "view", deployment.environment)
    path = _deployment_log(deployment, data_dir)
    if path is None or not path.exists():
        return None
    return live_tail(path)


# -- result logs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultStep:
    """One step attempt as the agent reported it (times in Unix seconds)."""

    index: int
    attempt: int
    name: str
    kind: str
    status: str
    summary: str
    exit_code: int | None
    started_at: int | None
    finished_at: int | None
    log: str = ""
    log_cut: bool = False  # cut here for display (over MAX_SHOWN_LOG_BYTES)
    log_truncated: bool = False  # cut by the agent (its per-step cap)


@dataclass
class ResultLogs:
    """The imported result of a deployment. ``problem`` is set (and ``steps`` empty) when
    the stored file is missing or no longer verifies."""

    envelope_sha256: str
    file: str
    imported_seq: int
    status: str = ""
    summary: str = ""
    steps: list[ResultStep] = field(default_factory=list)
    problem: str | None = None


def _import_event(ctx: ServiceContext, deployment: Deployment) -> tuple[AuditEvent, str] | None:
    """The newest ``result.import`` event about ``deployment`` and its agent id.

    The details are canonical JSON (sorted keys, no spaces), so a LIKE on the bundle id
    narrows the rows; each candidate is then parsed and matched exactly.
    """
    if deployment.bundle_id is None:
        return None
    # "/" escapes LIKE's wildcards: a bundle id has no "/", and unlike "\\" it means the
    # same in every SQL dialect's string literals.
    needle = deployment.bundle_id.replace("/", "//").replace("%", "/%").replace("_", "/_")
    rows = ctx.session.scalars(
        select(AuditEvent)
        .where(AuditEvent.action == "result.import",
               AuditEvent.details.like(f'%"bundle_id":"{needle}"%', escape="/"))
        .order_by(AuditEvent.seq.desc())
    )
    for event in rows:
        try:
            details = json.loads(event.details)
        except ValueError:
            continue
        if details.get("deployment") == deployment.id and details.get("agent_id"):
            return event, str(details["agent_id"])
    return None


def result_for_deployment(ctx: ServiceContext, deployment: Deployment,
                          data_dir: Path) -> ResultLogs | None:
    """The verified result of ``deployment`` with its step logs; None before one was
    imported. Verification problems are reported in :attr:`ResultLogs.problem`.

    Raises:
        PermissionDeniedError: the actor may not view the deployment's environment.
    """
    require(ctx.actor, "view", deployment.environment)
    found = _import_event(ctx, deployment)
    if found is None:
        return None
    event, agent_id = found
    sha = event.object_id
    name = f"{RESULTS_DIR}/{sha}.tgr"
    out = ResultLogs(sha, name, event.seq)
    path = Path(data_dir) / RESULTS_DIR / f"{sha}.tgr"
    agent = deployment.agent
    if ctx.keys is None or agent is None or agent.agent_id != agent_id:
        out.problem = f"{name}: cannot be checked (hub keys or the agent {agent_id} missing)"
        return out
    if not path.is_file():
        out.problem = f"{name}: the stored result file is missing from the data directory"
        return out
    imported_at = int(event.at.timestamp())
    staging = Path(tempfile.mkdtemp(prefix="result-view-", dir=data_dir))
    try:
        vb = verify_path(
            path,
            trusted_root=ctx.keys.trusted_root,
            state=VerifierState(),
            expect=ExpectResult(hub_id=ctx.keys.hub_id, agent_id=agent_id,
                                agent_key=PublicKey.from_hex(agent.ed25519_public)),
            staging_dir=staging,
            clock=lambda: imported_at,
            durable=False,
        )
        if vb.envelope_sha256 != sha:
            out.problem = f"{name}: its envelope digest is {vb.envelope_sha256}, not {sha}"
            return out
        res = vb.manifest.result
        assert res is not None  # ExpectResult accepts result bundles only
        out.status = res.status
        out.summary = str(res.body.get("summary", ""))
        for raw in res.body.get("steps") or []:
            out.steps.append(_step(raw, vb.files))
    except (BundleError, SigningError, OSError) as exc:
        out.problem = f"{name} does not verify: {exc}"
        out.steps = []
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _step(raw: Any, files: Any) -> ResultStep:
    doc = raw if isinstance(raw, dict) else {}
    text, cut = "", False
    member = doc.get("log")
    if isinstance(member, str) and member in files:
        with open(files[member], "rb") as fh:
            data = fh.read(MAX_SHOWN_LOG_BYTES + 1)
        cut = len(data) > MAX_SHOWN_LOG_BYTES
        text = data[:MAX_SHOWN_LOG_BYTES].decode("utf-8", errors="replace")
    return ResultStep(
        index=_int_or_none(doc.get("index")) or 0,
        attempt=_int_or_none(doc.get("attempt")) or 1,
        name=str(doc.get("name", "")),
        kind=str(doc.get("kind", "")),
        status=str(doc.get("status", "")),
        summary=str(doc.get("summary", "")),
        exit_code=_int_or_none(doc.get("exit_code")),
        started_at=_int_or_none(doc.get("started_at")),
        finished_at=_int_or_none(doc.get("finished_at")),
        log=text,
        log_cut=cut,
        log_truncated=bool(doc.get("log_truncated")),
    )
