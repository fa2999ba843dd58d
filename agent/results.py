"""Signed result bundles (.tgr): what happened to a bundle at this site.

Every bundle the agent processes ends in a result — succeeded, failed, rejected, interrupted,
cancelled or duplicate — written atomically to ``outbox/`` with the same container and writer
as release bundles (docs/bundle-format.md §6.4), signed by the agent's identity key, addressed
to the hub. The result carries:

* ``result.result_seq``: the agent's own counter (1, 2, 3 ...), and
  ``result.prev_result_sha256``: the envelope digest of the previous result, so the hub can
  detect a missing or suppressed result (docs/security.md, threat 15);
* ``result.bundle_id`` / ``bundle_envelope_sha256``: which bundle this is about (null for a
  file that could not even be authenticated);
* ``result.body``: per-step status, timings, exit codes, summaries and details;
* one payload file per step attempt log (``logs/<step>-<attempt>.log``), compressed by the
  container, complete up to the cap with the cut marked.

Two phases, so that a result is never lost and never numbered twice:

1. :func:`result_intent` builds everything the file will hold (times, agent version, body,
   logs); the caller records it in the journal *in the same transaction* as the state it
   reports (``Journal.finish_bundle``, ``record_disposal``, ``recover_interrupted``), which
   allocates its sequence number.
2. :func:`flush_results` writes every pending result, in sequence order, from the journal
   alone. The bytes are a function of the recorded row, the agent key and the previous
   result's digest (Ed25519 and the bundle writer are deterministic, §12.2), so writing one
   again after a crash gives the same file. A full or read-only outbox leaves the result
   pending; the agent's loop calls :func:`flush_results` again until it succeeds.

Result files are private (0600) from the moment they appear in the outbox. A result is built
in a private temporary directory ``outbox/.result-*/`` (0700; the step-log copies, spool and
unsigned file in it 0600); one that a crash left behind is removed on the next start
(:func:`remove_temporaries`) and the result is written again from the journal.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.faults import crash_point, fault_point
from agent.inventory import collect as collect_inventory
from agent.journal import Journal, PendingResult, ResultIntent
from agent.runner import StepReport
from bundle.manifest import KIND_RESULT, Manifest, ResultInfo, Target
from bundle.writer import write_bundle
from signing.fileio import fsync_dir
from signing.keys import SigningKey

__all__ = ["RESULT_STATUSES", "agent_version", "flush_results", "remove_temporaries",
           "result_intent", "write_result"]

RESULT_STATUSES = ("succeeded", "failed", "rejected", "interrupted", "cancelled", "duplicate",
                   "plan-passed", "plan-failed")  # plan-*: a preflight plan (agent.plan)
MAX_SUMMARY_CHARS = 4000  # characters of a summary kept in a result


def result_intent(
    config: AgentConfig,
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
    graph: Sequence[Mapping[str, Any]] | None = None,
    inventory: Mapping[str, Any] | None = None,
    holds: Sequence[Mapping[str, Any]] | None = None,
) -> ResultIntent:
    """Everything a result file will hold, ready to be recorded in the journal.

    ``graph`` (``bundle.dag.graph_of``) is added to the body for a release whose steps give
    ``after``; ``inventory`` (default: ``agent.inventory.collect`` now, the one thing read
    from the machine) is always added; ``holds`` (``Agent.holds``: the bundles this agent
    holds for a window, a freeze or an earlier held bundle) when given.
    """
    if status not in RESULT_STATUSES:
        raise ValueError(f"unknown result status {status!r}")
    now = int(time.time()) if now is None else now
    body: dict[str, Any] = {
        "summary": summary[:MAX_SUMMARY_CHARS],
        "agent_version": agent_version(),
        "release": _json_safe(dict(release or {})),
        "steps": [
            {
                "index": r.idx + 1,
                "attempt": r.attempt,
                "name": r.name,
                "kind": r.kind,
                "status": r.state,
                "summary": r.summary[:MAX_SUMMARY_CHARS],
                "exit_code": r.exit_code,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "details": _json_safe(r.details),
                "log": _log_name(r) if r.log else None,
                "log_truncated": r.log_truncated,
            }
            for r in steps
        ],
        "inventory": _json_safe(dict(inventory if inventory is not None
                                     else collect_inventory(config, agent_version()))),
    }
    if graph is not None:
        body["graph"] = _json_safe([dict(g) for g in graph])
    if holds is not None:
        body["holds"] = _json_safe([dict(h) for h in holds])
    spec: dict[str, Any] = {
        "agent_id": config.agent_id,
        "hub_id": config.hub_id,
        "status": status,
        "bundle_id": bundle_id,
        "bundle_envelope_sha256": bundle_envelope_sha256,
        "root_version": root_version,
        "created": now,
        "expires": now + config.result_expires_s,
        "body": body,
        "extra": _json_safe(dict(extra or {})),
    }
    logs = {_log_name(r): r.log for r in steps if r.log}
    return ResultIntent(status, bundle_id, spec, logs)


def _log_name(r: StepReport) -> str:
    return f"logs/{r.idx + 1:03d}-{r.attempt}.log"


def flush_results(config: AgentConfig, journal: Journal, key: SigningKey) -> list[Path]:
    """Write every pending result file, oldest first; return the paths written.

    Raises:
        OSError: the outbox cannot be written (disk full, read-only ...): the results from
            the failing one on stay pending and are written by a later call.
        JournalWriteError: the journal cannot record that a file was written (the file is
            written again, identically, by a later call).
    """
    written = []
    for pending in journal.pending_results():
        written.append(_write_one(config, journal, key, pending))
    return written


def _write_one(config: AgentConfig, journal: Journal, key: SigningKey,
               pending: PendingResult) -> Path:
    spec = pending.spec
    seq = pending.result_seq
    body = dict(spec["body"])
    body.update(spec.get("extra") or {})
    manifest = Manifest(
        bundle_id=f"result-{spec['agent_id']}-{seq}",
        kind=KIND_RESULT,
        issuer=key.key_id,
        target=Target(hub=spec["hub_id"]),
        root_version=int(spec["root_version"]),
        sequence=seq,
        created=int(spec["created"]),
        expires=int(spec["expires"]),
        result=ResultInfo(
            agent_id=spec["agent_id"],
            result_seq=seq,
            status=pending.status,
            body=body,
            prev_result_sha256=journal.previous_digest(seq),
            bundle_id=spec["bundle_id"],
            bundle_envelope_sha256=spec["bundle_envelope_sha256"],
        ),
    )
    fault_point("outbox")
    config.outbox.mkdir(parents=True, exist_ok=True)
    final = config.outbox / pending.file_name
    with tempfile.TemporaryDirectory(prefix=".result-", dir=config.outbox) as tmp:
        files: list[tuple[str, Path]] = []
        for name, text in sorted(pending.logs.items()):
            p = Path(tmp) / name.replace("/", "-")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with open(fd, "w", encoding="utf-8", errors="replace") as fh:
                fh.write(text)
            files.append((name, p))
        private = Path(tmp) / pending.file_name  # the directory is 0700: never seen 0644
        written = write_bundle(private, manifest, files, [key], spool_dir=Path(tmp),
                               verify=False)
        os.chmod(private, 0o600)
        crash_point("result-built")
        os.replace(private, final)
    fsync_dir(config.outbox)
    crash_point("result-written")
    journal.result_written(seq, written.envelope_sha256)
    crash_point("result-recorded")
    return final


#: Names of what the agent writes under a temporary name: result build directories
#: (``.result-*``), bundle-writer spools (``.tiangong-spool-*``) and the hidden temp files of
#: atomic writes and cross-device moves (``.<name>.<8 random characters>.tmp``, from
#: ``tempfile.mkstemp``).
_TEMP_DIR_PREFIXES = (".result-", ".tiangong-spool-")
_TEMP_FILE_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$", re.DOTALL)


def remove_temporaries(directories: Sequence[Path]) -> list[Path]:
    """Remove what an interrupted write of this agent left in *directories* (its outbox,
    archive, quarantine and home): only names the agent itself gives its temporaries, never
    a result, an archived or quarantined file. Call with the home lock held, before anything
    is written. Returns what was removed; a directory that is missing or cannot be changed is
    left as it is (logged by the caller's next write, which fails the same way)."""
    removed: list[Path] = []
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.startswith(_TEMP_DIR_PREFIXES):
                        shutil.rmtree(path)
                        removed.append(path)
                elif _TEMP_FILE_RE.match(entry.name):
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
    return removed


def write_result(config: AgentConfig, journal: Journal, key: SigningKey,
                 **fields: Any) -> Path:
    """Record a result on its own (``fields`` as for :func:`result_intent`) and write it,
    and any pending before it, to the outbox.

    Raises:
        OSError: the outbox cannot be written; the result stays pending in the journal.
    """
    seq = journal.add_result(result_intent(config, **fields))
    flush_results(config, journal, key)
    found = journal.result_file(seq)
    assert found is not None
    return config.outbox / found[0]


def agent_version() -> str:
    """The running ``tiangong`` version (results, inventory)."""
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
