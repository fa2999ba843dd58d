"""Export: write a signed bundle for every queued deployment of an environment.

:func:`export_environment` — for every queued deployment of an environment (optionally one
agent), allocate the target's next sequence under a row lock, build the release manifest
(approvals, latest signed audit checkpoint), write the signed bundle into the output
directory (atomically; re-read and verified by the writer), and mark the deployment
exported — one transaction per deployment, so a crash half-way loses nothing and re-running
continues. Re-running with no queued work writes nothing. A human-readable
``INDEX-<env>.txt`` lists what is on the media and for whom.

The CLI (``hub export``), the web media page and the live server all call this one function.
It does not import results (:mod:`hub.services.result_import`).
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bundle.errors import BundleError
from bundle.manifest import Approval as ManifestApproval
from bundle.manifest import Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from hub.db import Deployment, Environment
from hub.errors import ConfigError, HubError, ValidationError
from hub.services import audit
from hub.services.agents import agent_target
from hub.services.approvals import approvals_for_manifest
from hub.services.chain import chain_for
from hub.services.context import ServiceContext
from hub.services.deployments import allocate_sequence, mark_exported, pending_exports
from hub.services.environments import get_environment
from hub.services.users import require_ctx

__all__ = ["DEFAULT_EXPIRY", "ExportReport", "ExportedBundle", "ProgressFn", "export_environment"]

DEFAULT_EXPIRY = timedelta(days=14)
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
    pending = pending_exports(ctx.session, environment, agent_id)
    if not pending:
        return report  # nothing to write: no checkpoint either (the live server asks often)
    checkpoint = _checkpoint_json(ctx, env)
    for dep in pending:
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


def _checkpoint_json(ctx: ServiceContext, env: Environment) -> dict[str, Any] | None:
    if ctx.keys is None or ctx.keys.audit_key is None:
        return None
    cp = audit.checkpoint_for_export(ctx, env)
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
    chain = chain_for(ctx.session, dep, root_version, seq)  # bundle-format §6.8
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
        chain=chain,
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

