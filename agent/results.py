"""Signed result bundles (.tgr): what happened to a bundle at this site.

Every bundle the agent processes ends in a result — succeeded, failed, rejected, interrupted,
cancelled or duplicate — written atomically to ``outbox/`` with the same container and writer
as release bundles (docs/bundle-format.md §6.4), signed by the agent's identity key, addressed
to the hub. The result carries:

* ``result.result_seq``: the agent's own counter (1, 2, 3 ...), and
  ``result.prev_result_sha256``: the envelope digest of the previous result, so the hub can
  detect a missing or suppressed result (SECURITY-MODEL.md threat 15);
* ``result.bundle_id`` / ``bundle_envelope_sha256``: which bundle this is about (null for a
  file that could not even be authenticated);
* ``result.body``: per-step status, timings, exit codes, summaries and details;
* one payload file per step attempt log (``logs/<step>-<attempt>.log``), compressed by the
  container, complete up to the cap with the cut marked.

The result sequence is allocated and recorded in the journal in the same order the files are
written; a crash between the two leaves a file the journal does not know, which the next
result simply follows (the hub sees both).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.journal import Journal
from agent.runner import StepReport
from bundle.manifest import KIND_RESULT, Manifest, ResultInfo, Target
from bundle.writer import write_bundle
from signing.keys import SigningKey

__all__ = ["RESULT_STATUSES", "write_result"]

RESULT_STATUSES = ("succeeded", "failed", "rejected", "interrupted", "cancelled", "duplicate")


def write_result(
    config: AgentConfig,
    journal: Journal,
    key: SigningKey,
    *,
    status: str,
    summary: str,
    bundle_id: str | None = None,
    bundle_envelope_sha256: str | None = None,
    release: Mapping[str, Any] | None = None,
    steps: Sequence[StepReport] = (),
    extra: Mapping[str, Any] | None = None,
    root_version: int = 1,
    now: int | None = None,
) -> Path:
    """Write the next signed result file to the outbox and record it in the journal.

    Returns the path of the ``.tgr`` file.

    Raises:
        OSError: the outbox cannot be written (the result is then retried by the caller).
    """
    if status not in RESULT_STATUSES:
        raise ValueError(f"unknown result status {status!r}")
    now = int(time.time()) if now is None else now
    last_seq, last_digest = journal.last_result()
    seq = last_seq + 1
    body: dict[str, Any] = {
        "summary": summary[:4000],
        "agent_version": _agent_version(),
        "release": dict(release or {}),
        "steps": [
            {
                "index": r.idx + 1,
                "attempt": r.attempt,
                "name": r.name,
                "kind": r.kind,
                "status": r.state,
                "summary": r.summary[:4000],
                "exit_code": r.exit_code,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "details": _json_safe(r.details),
                "log": f"logs/{r.idx + 1:03d}-{r.attempt}.log" if r.log else None,
                "log_truncated": r.log_truncated,
            }
            for r in steps
        ],
    }
    if extra:
        body.update(_json_safe(dict(extra)))
    manifest = Manifest(
        bundle_id=f"result-{config.agent_id}-{seq}",
        kind=KIND_RESULT,
        issuer=key.key_id,
        target=Target(hub=config.hub_id),
        root_version=root_version,
        sequence=seq,
        created=now,
        expires=now + config.result_expires_s,
        result=ResultInfo(
            agent_id=config.agent_id,
            result_seq=seq,
            status=status,
            body=body,
            prev_result_sha256=last_digest,
            bundle_id=bundle_id,
            bundle_envelope_sha256=bundle_envelope_sha256,
        ),
    )
    config.outbox.mkdir(parents=True, exist_ok=True)
    name = f"{config.agent_id}-{seq:06d}-{status}.tgr"
    with tempfile.TemporaryDirectory(prefix=".result-", dir=config.outbox) as tmp:
        files: list[tuple[str, Path]] = []
        for r in steps:
            if r.log:
                p = Path(tmp) / f"{r.idx + 1:03d}-{r.attempt}.log"
                p.write_text(r.log, encoding="utf-8", errors="replace")
                files.append((f"logs/{r.idx + 1:03d}-{r.attempt}.log", p))
        written = write_bundle(config.outbox / name, manifest, files, [key], spool_dir=Path(tmp),
                               verify=False)
    journal.record_result(seq, bundle_id, status, name, written.envelope_sha256)
    return written.paths[0]


def _agent_version() -> str:
    from tiangong import __version__

    return __version__


def _json_safe(value: Any) -> Any:
    """Strict JSON has no floats: whole floats become integers, others their decimal text."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else repr(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
