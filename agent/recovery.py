"""``tiangong agent journal recover``: rebuild a damaged, emptied or deleted journal.

The journal is the agent's memory of what it accepted and ran. When it is lost, the agent
refuses to start (``JournalDamagedError``) rather than start "fresh" and re-run bundles it
already ran, or reuse result numbers. This module rebuilds a journal from what the home still
holds, in the safe direction only (docs/agent.md, "Damaged journal"):

1. The damaged files (``journal.sqlite`` and its ``-wal``/``-shm``) are kept, renamed
   ``journal.sqlite.damaged-<UTC time>``; nothing is deleted.
2. A new journal pins ``trust/root.json``, with the time floor at max(root issue time, now).
3. Every result file in ``outbox/`` that verifies with this agent's own key is recorded as
   written, so result numbers continue after the highest one (``--result-floor N`` raises it
   further when results were taken off the outbox).
4. Every bundle in ``archive/`` that verifies against the pinned root (signature, target and
   every digest; its own creation time as the clock, since it may have expired since) is
   recorded as accepted, in sequence order: the sequence floor becomes the highest archived
   sequence, so no archived bundle can run again. Its payload is staged again (``staging/``
   is emptied first: nothing refers to what it held), for retries.
5. A bundle whose result is in the outbox takes the state of that result. Any other is
   recorded ``interrupted`` — whether its steps ran is unknown — with a signed
   ``interrupted`` result saying so; nothing is re-run (``agent retry`` remains possible).

This module deliberately does not try to read the damaged file (a partial read could be
wrong in ways the rebuilt journal cannot tell), and does not look in ``quarantine/``
(refused files consumed nothing).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.approvalcheck import release_digest
from agent.config import AgentConfig
from agent.home import AgentKeys
from agent.journal import Journal, JournalDamagedError
from agent.results import flush_results, result_intent
from agent.runner import StepReport
from bundle.approvals import undone_bundle
from bundle.errors import BundleError
from bundle.inspect import inspect
from bundle.parts import find_first_part
from bundle.reader import (
    ExpectRelease,
    ExpectResult,
    VerifiedBundle,
    VerifierState,
    verify_parts,
    verify_path,
)
from signing.errors import SigningError
from signing.roots import TrustedRoot

__all__ = ["RecoveryError", "RecoveryReport", "recover_journal"]

log = logging.getLogger("tiangong.agent.recovery")

UNKNOWN = ("unknown: the journal was rebuilt by 'tiangong agent journal recover'; this step "
           "may or may not have run, and it was not run again")


class RecoveryError(Exception):
    """The journal cannot (or need not) be rebuilt; the message says why."""


@dataclass
class RecoveryReport:
    kept: list[Path] = field(default_factory=list)
    results: int = 0
    bundles: list[tuple[str, int, str]] = field(default_factory=list)  # id, sequence, state
    skipped: list[str] = field(default_factory=list)  # files that did not verify, and why
    sequence: int = 0
    result_floor: int = 0
    new_results: list[Path] = field(default_factory=list)


def recover_journal(config: AgentConfig, keys: AgentKeys, *, now: int | None = None,
                    result_floor: int = 0) -> RecoveryReport:
    """Rebuild ``journal.sqlite`` (see the module docstring). The caller holds the home lock.

    Raises:
        RecoveryError: the journal is healthy, the pinned root cannot be read, or the new
            journal cannot be written.
    """
    now = int(time.time()) if now is None else now
    path = config.journal_path
    try:
        Journal(path, create=False).close()
    except JournalDamagedError:
        pass
    else:
        raise RecoveryError(f"the journal {path} opens and passes its checks; there is "
                            "nothing to recover")
    try:
        root_bytes = config.root_path.read_bytes()
        root = TrustedRoot.pin(root_bytes)
    except (OSError, SigningError) as exc:
        raise RecoveryError(f"cannot use the pinned root {config.root_path}: {exc}") from exc
    report = RecoveryReport()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for suffix in ("", "-wal", "-shm"):
        old = Path(f"{path}{suffix}")
        if old.exists():
            kept = old.with_name(f"{old.name}.damaged-{stamp}")
            os.replace(old, kept)
            report.kept.append(kept)
    # Nothing refers to what staging/ holds any more: archived bundles are staged afresh.
    for entry in config.staging.iterdir() if config.staging.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    journal = Journal(path, clock=lambda: float(now))
    try:
        journal.pin_root(root.document.hub_id, root_bytes, root.version,
                         time_floor=max(root.document.issued, now))
        finals = _record_results(config, keys, root, journal, report)
        highest = journal.last_result()[0]
        if result_floor > highest:
            journal.set_meta("result_floor", str(result_floor))
        report.result_floor = max(result_floor, highest)
        for vb, source in _archived_bundles(config, root, report):
            _restore(config, journal, vb, source, finals.get(vb.manifest.bundle_id), report)
        trust = journal.trust(root.document.hub_id)
        report.sequence = trust.sequence if trust else 0
        report.new_results = flush_results(config, journal, keys.identity)
    finally:
        journal.close()
    return report


def _record_results(config: AgentConfig, keys: AgentKeys, root: TrustedRoot, journal: Journal,
                    report: RecoveryReport) -> dict[str, tuple[int, str]]:
    """Record the outbox's own result files; return bundle id -> (result seq, status) of
    each bundle's last result."""
    found = []
    expect = ExpectResult(hub_id=root.document.hub_id, agent_id=config.agent_id,
                          agent_key=keys.identity.public)
    for path in sorted(config.outbox.glob("*.tgr")):
        with tempfile.TemporaryDirectory(prefix="recover-", dir=config.staging) as scratch:
            try:
                vb = verify_path(path, trusted_root=root, state=VerifierState(), expect=expect,
                                 staging_dir=Path(scratch), clock=_fixed(_created(path)))
            except (BundleError, OSError) as exc:
                report.skipped.append(f"{path.name}: {exc}")
                continue
        info = vb.manifest.result
        if info is not None:
            found.append((info.result_seq, info.bundle_id, info.status, path.name,
                          vb.envelope_sha256))
    finals: dict[str, tuple[int, str]] = {}
    for seq, bundle_id, status, name, sha in sorted(found):
        journal.record_result(seq, bundle_id, status, name, sha)
        report.results += 1
        if bundle_id is not None and status != "duplicate":
            finals[bundle_id] = (seq, status)
    return finals


def _fixed(t: int) -> Callable[[], int]:
    return lambda: t


def _created(path: Path) -> int:
    manifest = inspect(path).manifest
    return manifest.created if manifest is not None else int(time.time())


def _archived_bundles(config: AgentConfig, root: TrustedRoot,
                      report: RecoveryReport) -> list[tuple[VerifiedBundle, str]]:
    """Every bundle in archive/ (not archive/duplicates/) that verifies, in sequence order."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(config.archive.iterdir()) if config.archive.is_dir() else []:
        if not path.is_file():
            continue
        name = path.name
        base = name.rsplit(".part", 1)[0] if ".tgb.part" in name else name
        if base.endswith(".tgb"):
            groups.setdefault(base, []).append(path)
    expect = ExpectRelease(agent_id=config.agent_id, environment=config.environment)
    out = []
    config.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    for base, paths in sorted(groups.items()):
        try:
            first = find_first_part(paths) if len(paths) > 1 else paths[0]
            created = _created(first)
            kwargs = dict(trusted_root=root, state=VerifierState(), expect=expect,
                          staging_dir=config.staging, clock=_fixed(created))
            vb = (verify_parts(paths, **kwargs) if len(paths) > 1  # type: ignore[arg-type]
                  else verify_path(paths[0], **kwargs))  # type: ignore[arg-type]
        except (BundleError, OSError) as exc:
            report.skipped.append(f"{base}: {exc}")
            continue
        out.append((vb, base))
    out.sort(key=lambda item: (item[0].state.root_version, item[0].state.sequence))
    return out


def _restore(config: AgentConfig, journal: Journal, vb: VerifiedBundle, source: str,
             final: tuple[int, str] | None, report: RecoveryReport) -> None:
    m = vb.manifest
    steps = [(str(s.get("name")), str(s.get("kind"))) for s in m.steps]
    journal.accept_bundle(
        issuer=config.hub_id or "", root_envelope=vb.trusted_root.envelope,
        root_version=vb.state.root_version, sequence=vb.state.sequence,
        time_floor=vb.state.time_floor, bundle_id=m.bundle_id,
        envelope_sha256=vb.envelope_sha256, source=source, manifest=m.to_json(),
        staged_dir=str(vb.staged_dir), not_before=vb.not_before, steps=steps,
        release_digest=release_digest(m), undoes=undone_bundle(m))
    status = final[1] if final else "interrupted"
    state = {"succeeded": "succeeded", "failed": "failed", "cancelled": "failed"}.get(
        status, "interrupted")
    if final is not None:
        summary = f"journal rebuilt; result #{final[0]} in the outbox says {status}"
        journal.restore_outcome(m.bundle_id, "succeeded" if state == "succeeded" else
                                "interrupted", summary, bundle_state=state)
    else:
        summary = ("interrupted: the journal was rebuilt and no result of this bundle was "
                   "found; whether its steps ran is unknown, and none was run again")
        journal.restore_outcome(m.bundle_id, "interrupted", UNKNOWN)
        reports = [StepReport(s.idx, s.attempt, s.name, s.kind, s.state, s.summary or "")
                   for s in journal.steps(m.bundle_id, latest_only=True)]
        intent = result_intent(config, status="interrupted", summary=summary,
                               bundle_id=m.bundle_id, bundle_envelope_sha256=vb.envelope_sha256,
                               release=m.to_json().get("release") or {}, steps=reports,
                               root_version=vb.trusted_root.version,
                               now=int(time.time()))
        journal.finish_bundle(m.bundle_id, "interrupted", summary, intent)
    report.bundles.append((m.bundle_id, m.sequence, state))
