"""Export bundles to media and import results from it — the hub's two file paths.

**Export** (:func:`export_environment`): for every queued deployment of an environment
(optionally one agent), allocate the target's next sequence under a row lock, build the
release manifest (approvals, latest signed audit checkpoint), write the signed bundle into
the output directory (atomically; re-read and verified by the writer), and mark the deployment
exported — one transaction per deployment, so a crash half-way loses nothing and re-running
continues. Re-running with no queued work writes nothing. A human-readable ``INDEX-<env>.txt``
lists what is on the media and for whom.

**Import** (:func:`import_directory`): every ``*.tgr`` result file (and every enrollment
request) found in a directory is handled on its own; a bad file is reported and left where it
is, never stopping the run. A result is verified against the registered key of the agent it
claims to come from, must concern a bundle that was addressed to that agent, advances the
deployment, and is stored verbatim (``<data_dir>/results/<envelope sha256>.tgr``) with its
signed envelope in the audit log, so an auditor can re-check it without the hub. The same file
imported twice changes nothing. Gaps and breaks in an agent's result chain are flagged.

Views and the CLI call these; they decide nothing themselves.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bundle.errors import BundleError
from bundle.manifest import Approval as ManifestApproval
from bundle.manifest import Target
from bundle.reader import ExpectResult, VerifiedBundle, VerifierState, inspect, verify_path
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from hub.db import AuditEvent, Deployment
from hub.errors import ConfigError, HubError, ValidationError
from hub.services import audit
from hub.services.agents import EnrollmentRequest, agent_target, enroll_agent, get_agent
from hub.services.approvals import approvals_for_manifest
from hub.services.context import ServiceContext
from hub.services.deployments import (
    allocate_sequence,
    mark_exported,
    pending_exports,
    transition,
)
from hub.services.environments import get_environment
from hub.services.users import require, require_ctx
from signing.envelope import TYPE_ENROLLMENT, parse_envelope, verify_envelope
from signing.errors import SigningError
from signing.keys import PublicKey
from signing.strictjson import loads_strict

__all__ = [
    "ExportReport",
    "ExportedBundle",
    "ImportReport",
    "ImportRow",
    "export_environment",
    "import_directory",
    "import_result",
]

DEFAULT_EXPIRY = timedelta(days=14)
MAX_ENROLLMENT_BYTES = 64 * 1024  # bytes
MAX_INLINE_ENVELOPE = 128 * 1024  # bytes of result envelope copied into the audit event
RESULT_STATES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "rejected": "rejected",
    "interrupted": "interrupted",
    "cancelled": "failed",
}
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExportedBundle:
    deployment_id: int
    agent_id: str | None
    product: str
    version: str
    sequence: int
    bundle_id: str
    paths: tuple[Path, ...]
    size: int


@dataclass
class ExportReport:
    environment: str
    written: list[ExportedBundle] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (deployment id, reason)
    index: Path | None = None


def _bundle_name(product: str, version: str, target: str, seq: int) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in f"{product}-{version}")
    who = "".join(c if c.isalnum() or c in "._-" else "-" for c in target)
    return f"{safe}-{who}-{seq:06d}.tgb"


def export_environment(
    ctx: ServiceContext,
    environment: str,
    out_dir: Path,
    *,
    agent_id: str | None = None,
    expires_in: timedelta = DEFAULT_EXPIRY,
    split_size: int | None = None,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write a bundle for every queued deployment of ``environment`` into ``out_dir``.

    Commits after each bundle. Raises PermissionDeniedError (operator) before writing
    anything, ConfigError when the release key is not loaded; other per-deployment problems
    are collected in ``failed`` (and audited) so one bad release does not block the rest.
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "bundle.export", env)
    if ctx.keys is None or ctx.keys.release_key is None:
        raise ConfigError("the release key is not loaded; it lives in <data_dir>/keys/")
    keys = ctx.keys
    release_key = keys.release_key
    assert release_key is not None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(environment)
    checkpoint = _checkpoint_json(ctx)
    for dep in pending_exports(ctx.session, environment, agent_id):
        dep_id = dep.id
        try:
            exported = _export_one(ctx, dep, out_dir, expires_in, split_size, checkpoint, progress)
        except (HubError, BundleError, OSError) as exc:
            ctx.session.rollback()
            reason = f"{type(exc).__name__}: {exc}"
            report.failed.append((dep_id, reason))
            audit.record(
                ctx, "bundle.export_failed", "deployment", str(dep_id), {"reason": reason[:2000]}
            )
            ctx.session.commit()
            continue
        ctx.session.commit()
        report.written.append(exported)
    if report.written:
        report.index = _write_index(out_dir, environment, report, ctx)
    return report


def _checkpoint_json(ctx: ServiceContext) -> dict[str, Any] | None:
    if ctx.keys is None or ctx.keys.audit_key is None:
        return None
    cp = audit.write_checkpoint(ctx)
    ctx.session.commit()
    return {
        "seq": cp.seq,
        "head_hash": cp.head_hash,
        "at": int(cp.at.timestamp()),
        "envelope": base64.b64encode(cp.envelope).decode("ascii"),
    }


def _export_one(
    ctx: ServiceContext,
    dep: Deployment,
    out_dir: Path,
    expires_in: timedelta,
    split_size: int | None,
    checkpoint: dict[str, Any] | None,
    progress: ProgressFn | None,
) -> ExportedBundle:
    keys = ctx.keys
    assert keys is not None and keys.release_key is not None
    release = dep.release
    if release.state != "approved":
        raise ValidationError(
            f"release {release.product.name} {release.version} is {release.state}, not approved"
        )
    source = load_release(Path(release.stored_path))
    if source.content_hash != release.content_hash:
        raise ValidationError(
            f"the stored files of {release.product.name} {release.version} changed on disk "
            f"(content hash {source.content_hash[:16]} ≠ approved {release.content_hash[:16]});"
            " refusing to export"
        )
    env = dep.environment
    if dep.agent is not None:
        if dep.agent.status != "enrolled":
            raise ValidationError(f"agent {dep.agent.agent_id} is {dep.agent.status}")
        target = Target(agents=(dep.agent.agent_id,), environment=env.name)
        counter = agent_target(dep.agent.agent_id)
        who = dep.agent.agent_id
    else:
        target = Target(environment=env.name)
        counter = f"env:{env.name}"
        who = env.name
    _, seq = allocate_sequence(ctx.session, counter, agent=dep.agent)
    root_version = keys.root.version
    now = ctx.now()
    created = int(now.timestamp())
    approvals = tuple(
        ManifestApproval(by=a["by"], at=_unix(a["at"]), comment=a.get("comment", ""))
        for a in approvals_for_manifest(release, env)
    )
    bundle_id = f"{release.product.name}-{release.version}-{who}-{seq}"[:128]
    manifest, files = release_manifest(
        source,
        bundle_id=bundle_id,
        issuer=keys.release_key.key_id,
        target=target,
        root_version=root_version,
        sequence=seq,
        created=created,
        expires=created + int(expires_in.total_seconds()),
        counter=release.id,
        author=release.author.username,
        approvals=approvals,
        checkpoint=checkpoint,
    )
    out = out_dir / _bundle_name(release.product.name, release.version, who, seq)
    written = write_bundle(
        out, manifest, files, [keys.release_key], split_size=split_size, progress=progress
    )
    try:
        mark_exported(
            ctx,
            dep,
            bundle_id=bundle_id,
            bundle_path=str(written.paths[0]),
            sequence=seq,
            root_version=root_version,
        )
        audit.record(
            ctx,
            "bundle.written",
            "deployment",
            str(dep.id),
            {
                "bundle_id": bundle_id,
                "envelope_sha256": written.envelope_sha256,
                "files": [p.name for p in written.paths],
                "size": written.size,
                "sequence": seq,
                "target": target.to_json(),
            },
        )
    except BaseException:
        for p in written.paths:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    return ExportedBundle(
        dep.id,
        dep.agent.agent_id if dep.agent else None,
        release.product.name,
        release.version,
        seq,
        bundle_id,
        written.paths,
        written.size,
    )


def _unix(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` → Unix seconds."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in text else "%Y-%m-%dT%H:%M:%SZ"
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp())


def _write_index(
    out_dir: Path, environment: str, report: ExportReport, ctx: ServiceContext
) -> Path:
    lines = [
        f"Tiangong bundles for environment {environment}",
        f"written {ctx.now().strftime('%Y-%m-%d %H:%M UTC')} by {ctx.actor_name}",
        "",
        "Drop each file into the inbox of the agent it is for (all parts of a split bundle).",
        "",
        f"{'file':<60} {'for agent':<24} {'release':<28} {'seq':>6} {'size':>12}",
    ]
    for b in report.written:
        for p in b.paths:
            lines.append(
                f"{p.name:<60} {b.agent_id or '(any in ' + environment + ')':<24} "
                f"{b.product + ' ' + b.version:<28} {b.sequence:>6} "
                f"{p.stat().st_size:>12}"
            )
    if report.failed:
        lines += ["", "NOT exported (see the hub's audit log):"]
        lines += [f"  deployment {d}: {r}" for d, r in report.failed]
    path = out_dir / f"INDEX-{environment}.txt"
    tmp = path.with_name(f".{path.name}.tmp")
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    text = "\n".join(lines) + "\n" + (f"\n--- earlier exports ---\n{previous}" if previous else "")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- import -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRow:
    file: str
    status: str  # imported | duplicate | rejected | enrolled
    reason: str
    agent_id: str | None = None
    deployment_id: int | None = None
    flags: tuple[str, ...] = ()


@dataclass
class ImportReport:
    rows: list[ImportRow] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)


def import_directory(ctx: ServiceContext, directory: Path, *, results_dir: Path) -> ImportReport:
    """Import every result file and enrollment request in ``directory`` (not recursive).

    Raises PermissionDeniedError before touching anything; per-file problems are rows.
    """
    require(ctx.actor, "result.import")
    report = ImportReport()
    directory = Path(directory)
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".tgr":
            report.rows.append(import_result(ctx, path, results_dir=results_dir))
        elif (
            path.name.startswith("enrollment-")
            and path.suffix == ".json"
            and not path.name.startswith("enrollment-response-")
        ):
            report.rows.append(_import_enrollment(ctx, path))
    return report


def _reject(
    ctx: ServiceContext, path: Path, reason: str, agent: str | None = None, check: str = "import"
) -> ImportRow:
    ctx.session.rollback()
    audit.record(
        ctx,
        "result.rejected",
        "file",
        path.name[:200],
        {"reason": reason[:2000], "check": check, "claimed_agent": agent},
    )
    ctx.session.commit()
    return ImportRow(path.name, "rejected", reason, agent)


def import_result(ctx: ServiceContext, path: Path, *, results_dir: Path) -> ImportRow:
    """Import one result file; never raises for bad data (the row says what happened)."""
    try:
        claimed = inspect(path)
    except (BundleError, OSError) as exc:
        return _reject(ctx, path, f"not a readable result file: {exc}")
    m = claimed.manifest
    if m is None or m.result is None:
        return _reject(ctx, path, f"not a result bundle ({claimed.problem or (m and m.kind)})")
    agent_id = m.result.agent_id
    try:
        agent = get_agent(ctx.session, agent_id)
    except HubError:
        return _reject(ctx, path, f"unknown agent {agent_id!r}", agent_id, "agent")
    if agent.status != "enrolled":
        return _reject(ctx, path, f"agent {agent_id} is {agent.status}", agent_id, "agent")
    if ctx.keys is None:
        raise ConfigError("the hub keys are not loaded")
    already = ctx.session.scalar(
        select(AuditEvent.seq).where(
            AuditEvent.action == "result.import", AuditEvent.object_id == claimed.envelope_sha256
        )
    )
    if already is not None:
        _store_verbatim(path, results_dir, claimed.envelope_sha256)
        return ImportRow(
            path.name, "duplicate", f"already imported (audit event {already})", agent_id
        )
    staging = Path(tempfile.mkdtemp(prefix="result-", dir=results_dir.parent))
    try:
        vb = verify_path(
            path,
            trusted_root=ctx.keys.trusted_root,
            state=VerifierState(),
            expect=ExpectResult(
                hub_id=ctx.keys.hub_id,
                agent_id=agent_id,
                agent_key=PublicKey.from_hex(agent.ed25519_public),
            ),
            staging_dir=staging,
            clock=lambda: int(ctx.now().timestamp()),
        )
        return _apply_result(ctx, path, vb, agent, results_dir)
    except BundleError as exc:
        return _reject(ctx, path, str(exc), agent_id, exc.check)
    except HubError as exc:
        return _reject(ctx, path, f"{type(exc).__name__}: {exc}", agent_id, "hub")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _apply_result(
    ctx: ServiceContext, path: Path, vb: VerifiedBundle, agent: Any, results_dir: Path
) -> ImportRow:
    m = vb.manifest
    res = m.result
    assert res is not None
    flags: list[str] = []
    dep: Deployment | None = None
    if res.bundle_id is not None:
        dep = ctx.session.scalar(select(Deployment).where(Deployment.bundle_id == res.bundle_id))
        if dep is None:
            return _reject(
                ctx,
                path,
                f"result {res.result_seq} of {agent.agent_id} is about "
                f"bundle {res.bundle_id}, which this hub never exported",
                agent.agent_id,
                "unknown-release",
            )
        if dep.agent_id != agent.id:
            return _reject(
                ctx,
                path,
                f"bundle {res.bundle_id} was not addressed to agent {agent.agent_id}",
                agent.agent_id,
                "target",
            )
    # The agent's result chain: sequence gaps and broken links are flagged, not fatal
    # (media can arrive out of order).
    if res.result_seq > agent.result_seq + 1:
        flags.append(
            f"gap: results {agent.result_seq + 1}..{res.result_seq - 1} of "
            f"{agent.agent_id} have not been imported"
        )
    elif (
        res.result_seq == agent.result_seq + 1
        and agent.last_result_digest is not None
        and res.prev_result_sha256 != agent.last_result_digest
    ):
        flags.append(
            f"chain: result {res.result_seq} does not follow the last imported result of this agent"
        )
    if res.result_seq > agent.result_seq:
        agent.result_seq = res.result_seq
        agent.last_result_digest = vb.envelope_sha256
    agent.last_seen = ctx.now()
    summary = {
        "status": res.status,
        "result_seq": res.result_seq,
        "summary": str(res.body.get("summary", ""))[:2000],
        "steps": [
            {k: s.get(k) for k in ("index", "name", "status", "summary", "exit_code")}
            for s in res.body.get("steps", [])
        ][:200],
    }
    if dep is not None and res.status in RESULT_STATES:
        new_state = RESULT_STATES[res.status]
        if dep.state != new_state:
            transition(ctx, dep, new_state, summary=summary, action="result.import")
    audit.record(
        ctx,
        "result.import",
        "result",
        vb.envelope_sha256,
        {
            "agent_id": agent.agent_id,
            "result_seq": res.result_seq,
            "status": res.status,
            "bundle_id": res.bundle_id,
            "deployment": dep.id if dep else None,
            "file": path.name,
            "file_sha256": _sha256(path),
            "envelope": base64.b64encode(vb.envelope).decode("ascii"),
            "flags": flags,
        },
    )
    for flag in flags:
        audit.record(ctx, "result.flag", "agent", agent.agent_id, {"flag": flag})
    ctx.session.commit()
    _store_verbatim(path, results_dir, vb.envelope_sha256)
    return ImportRow(
        path.name,
        "imported",
        f"{res.status}: {summary['summary']}"[:300],
        agent.agent_id,
        dep.id if dep else None,
        tuple(flags),
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _store_verbatim(path: Path, results_dir: Path, envelope_sha256: str) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    dest = results_dir / f"{envelope_sha256}.tgr"
    if dest.exists():
        return
    tmp = results_dir / f".{envelope_sha256}.tmp"
    shutil.copyfile(path, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    dfd = os.open(results_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _import_enrollment(ctx: ServiceContext, path: Path) -> ImportRow:
    """An agent's enrollment request: self-signed by the key it announces."""
    try:
        data = path.read_bytes()[: MAX_ENROLLMENT_BYTES + 1]
        env = parse_envelope(data, MAX_ENROLLMENT_BYTES)
        doc = loads_strict(env.payload, MAX_ENROLLMENT_BYTES)
        key = PublicKey.from_hex(doc["ed25519_public"])
        verify_envelope(
            data,
            payload_type=TYPE_ENROLLMENT,
            trusted=[key],
            threshold=1,
            max_bytes=MAX_ENROLLMENT_BYTES,
        )
        if not doc.get("environment"):
            raise ValidationError("the request names no environment")
        request = EnrollmentRequest(
            hostname=doc["hostname"],
            ed25519_public=doc["ed25519_public"],
            x25519_public=doc["x25519_public"],
            agent_id=doc.get("agent_id"),
            labels=tuple(sorted((str(k), str(v)) for k, v in (doc.get("labels") or {}).items())),
            agent_version=str(doc.get("agent_version", "")),
            environment=doc["environment"],
            hub_id=doc.get("hub_id"),
        )
        response = enroll_agent(ctx, doc["environment"], request)
        ctx.session.commit()
    except (SigningError, HubError, KeyError, TypeError, ValueError, OSError) as exc:
        return _reject(ctx, path, f"enrollment request refused: {exc}", None, "enrollment")
    if ctx.keys is not None and ctx.keys.release_key is not None:
        out = path.with_name(f"enrollment-response-{response.agent_id}.json")
        out.write_bytes(response.to_envelope(ctx.keys.release_key))
    return ImportRow(
        path.name,
        "enrolled",
        f"agent {response.agent_id} enrolled in {response.environment}",
        response.agent_id,
    )
