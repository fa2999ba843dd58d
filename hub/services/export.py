"""Export: write a signed bundle for every queued deployment of an environment.

:func:`export_environment` — for every queued deployment of an environment (optionally one
agent), in this order, each step durable before the next:

1. **claim** the deployment with a conditional update (``queued → exporting``,
   :mod:`hub.services.export_claims`): of any number of concurrent exports (CLI, web,
   live server; SQLite or PostgreSQL) exactly one gets it, the others report it as
   "exported by another process";
2. in the same transaction, allocate the target's next sequence and record the **intent** —
   sequence, bundle id, creation and expiry times, checkpoint, file name — with a
   ``bundle.claimed`` audit event, and commit (crash point ``hub.export-claimed``);
3. write the signed bundle (the writer spools and writes under hidden temporary names, then
   renames; crash points ``hub.export-writing``, ``hub.export-renamed``);
4. mark it ``exported`` with a ``bundle.written`` event and commit
   (``hub.export-recorded``).

So a bundle whose final name reached the media is always known to the hub, and a result
for it is accepted. An export that was killed (or failed writing) leaves its deployment
``exporting`` with a claim whose process is gone: the next export of that environment takes
it over and either finds the file already on the media under the recorded name (and records
it) or writes the *same* bundle again from the recorded intent — same sequence, bundle id
and times, so the same bytes: a copy that did reach some media is an exact duplicate, never
a second sequence. Leftovers of killed exports in the output directory — spool directories,
temporary files, a media index's lock file and temporary copy — are removed on the next run
and listed in the report; a finished export leaves nothing hidden on the media.

Re-running with no queued work writes nothing. A human-readable ``INDEX-<env>.txt`` lists
what is on the media and for whom.

The CLI (``hub export``), the web media page and the live server all call this one function.
It does not import results (:mod:`hub.services.result_import`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import glob
import hashlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import BindParameter, bindparam, select, update
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm.attributes import set_committed_value

from bundle.errors import BundleError
from bundle.frame_cache import FrameCache
from bundle.manifest import Approval as ManifestApproval
from bundle.manifest import ChainInfo, Manifest, SecretEntry, Target
from bundle.parts import part_path, strip_part_suffix
from bundle.prepared import PreparedPayloads, prepare_payloads, write_prepared
from bundle.release import ReleaseSource, load_release
from bundle.windows import Policy
from bundle.writer import (
    WrittenBundle,
    make_durable,
    name_file,
    release_manifest,
    release_payloads,
    sync_placed,
    write_bundle,
)
from hub.db import Agent, Deployment, Environment, Release
from hub.errors import (
    ConfigError,
    DestinationError,
    HubError,
    InvalidStateError,
    PreflightError,
    ValidationError,
)
from hub.faults import crash_point
from hub.services import audit
from hub.services.agents import agent_target
from hub.services.approval_export import approvals_hold_until, bundle_approvals
from hub.services.approvals import approvals_for_manifest
from hub.services.chain import chain_for, chains_for
from hub.services.context import ServiceContext
from hub.services.deployments import (
    allocate_sequences,
    mark_exported,
    mark_exported_many,
    pending_exports,
)
from hub.services.environments import get_environment
from hub.services.export_claims import (
    STALE_CLAIM,
    claim,
    claim_is_live,
    claim_many,
    claims_judge,
    my_token,
    show_loaded,
    stale_claims,
    take_over,
)
from hub.services.import_files import sync_copies
from hub.services.preflight import check_deployment
from hub.services.site_secrets import seal_for_agents, sealed_names, secret_recipients
from hub.services.users import require_ctx
from hub.services.windows import gates_for, hold_back
from signing.envelope import parse_envelope
from signing.fileio import fsync_dir
from signing.roots import RootDocument

__all__ = [
    "DEFAULT_EXPIRY",
    "SENT",
    "ExportReport",
    "ExportedBundle",
    "ProgressFn",
    "export_agents",
    "export_environment",
    "make_spool_dirs",
]

DEFAULT_EXPIRY = timedelta(days=14)
#: the shortest validity a bundle may get when its approvals cut ``--expires`` short (less
#: than that is refused: a stick that expires on the way is no use); at most what was asked
MIN_CAPPED_VALIDITY = timedelta(hours=1)
ProgressFn = Callable[[str, int, int], None]
#: + the claim token, "~" and a random run id: one export's private spool directory (the run id:
#: two exports of one process at once, the live server's threads, each remove only their own)
#: seconds between two looks of :func:`export_agents` for what killed exports left in the live
#: spool root (per root and process): the root holds a directory per agent, and listing it for
#: every export call of a burst cost 6 ms each at 10,000 agents, about 0.6 s of the export
#: worker's CPU a burst (docs/benchmarks.md, "Session 11 (later): a burst's first export");
#: what a killed export left there (a scratch directory) waits this long at most
ROOT_CLEAN_SECONDS = 10.0
_root_cleaned: dict[str, float] = {}  # spool root -> time.monotonic() of its last look
_root_cleaned_lock = threading.Lock()
SPOOL_PREFIX = ".tiangong-export-"
RUN_MARK = "~"  # never in a token as a file-name part (_token_name)
#: a live spool agent directory's subdirectory of the bundles its agent confirmed
#: (hub.live_hub moves them there); made with the agent's directory by export_agents
SENT = "sent"
#: Queued deployments claimed in one transaction and recorded in another (one audit-head
#: lock, one commit each, every deployment still its own audit events)
EXPORT_BATCH = 200
FRAMES_DIR = ".frames"  # in the release store: compressed payload frames (bundle.frame_cache)
WRITER_SPOOL_PREFIX = ".tiangong-spool-"  # the writer's own default spool (older hubs)
IN_CHUNK = 500  # ids in one SQL IN list (well under every driver's parameter limit)


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
    #: SHA-256 of the whole bundle file as written (what a live OFFER carries); None for a
    #: bundle the writer streamed (large or split). Also kept in the deployment's
    #: ``export_intent["file_sha256"]`` (with ``"file_size"``) for other processes.
    sha256: str | None = None


@dataclass
class ExportReport:
    environment: str
    written: list[ExportedBundle] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (deployment id, reason)
    #: queued deployments another export claimed first (it writes them, not this one)
    taken: list[int] = field(default_factory=list)
    #: deployments whose killed export this run completed (also in ``written``)
    recovered: list[int] = field(default_factory=list)
    #: leftovers of killed exports removed from the output directory (names)
    cleaned: list[str] = field(default_factory=list)
    #: queued deployments a freeze (or, live, a window) holds: (deployment id, why)
    held: list[tuple[int, str]] = field(default_factory=list)
    #: preflight warnings (unknown inventory) and, with force, the problems overridden:
    #: (deployment id, message) (hub.services.preflight)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    #: bundles whose expiry the approvals they carry cut short of the one asked for:
    #: (deployment id, expiry, Unix time)
    capped: list[tuple[int, int]] = field(default_factory=list)
    index: Path | None = None
    #: why the index could not be written (read-only or full media): the bundles in
    #: ``written`` are written and recorded all the same
    index_error: str | None = None
    #: (export_agents) deployment id -> agent id, for every deployment in ``failed``
    failed_agents: dict[int, str] = field(default_factory=dict)

    def capped_lines(self, asked: str) -> list[str]:
        """``capped`` as operators read it (``hub export``, the Media page); ``asked`` names
        the validity asked for (``--expires 14d``)."""
        return [f"deployment {d}: its bundle expires {utc_text(until)}, before {asked}: its "
                "release's approvals stop counting then" for d, until in self.capped]


def utc_text(unix: int) -> str:
    """A bundle's expiry (Unix time) as operators read it."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bundle_name(product: str, version: str, target: str, seq: int) -> str:
    return f"{_file_safe(f'{product}-{version}')}-{_file_safe(target)}-{seq:06d}.tgb"


@functools.lru_cache(maxsize=4096)
def _file_safe(text: str) -> str:
    """``text`` with every character but letters, digits, ``.``, ``_`` and ``-`` made ``-``
    (a rollout names a release and each agent again and again: worked out once each)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def export_environment(
    ctx: ServiceContext,
    environment: str,
    out_dir: Path,
    *,
    agent_id: str | None = None,
    expires_in: timedelta = DEFAULT_EXPIRY,
    split_size: int | None = None,
    progress: ProgressFn | None = None,
    live: bool = False,
    force: bool = False,
) -> ExportReport:
    """Write a bundle for every queued deployment of ``environment`` into ``out_dir``, and
    complete exports of it that were killed (see the module docstring).

    Before a deployment's sequence is used, its release is checked against each target's
    last known inventory (:mod:`hub.services.preflight`): a problem (a missing connection,
    step kind or disk space) refuses it — it is reported in ``failed`` and stays queued —
    unless ``force``, which exports it anyway and records the problems in the
    ``bundle.claimed`` event; warnings (an unknown inventory) are listed in ``warnings``.

    A queued deployment a freeze holds is not exported (``held``), unless a hub override
    lifts it; outside its windows it is, for media (the agent holds the bundle), but not
    for the live server (``live``), which pushes it when its window opens
    (:mod:`hub.services.windows`).

    Commits after each step of each bundle. Raises PermissionDeniedError (operator) before
    writing anything, ConfigError when the release key is not loaded, DestinationError
    (naming ``out_dir``) when the directory cannot be made or looked into; other per-deployment
    problems are collected in ``failed`` (and audited) so one bad release does not block
    the rest.
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "bundle.export", env)
    if ctx.keys is None or ctx.keys.release_key is None:
        raise ConfigError("the release key is not loaded; it lives in <data_dir>/keys/")
    out_dir = Path(out_dir)
    report = ExportReport(environment)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        report.cleaned = _clean_leftovers(ctx, out_dir)
    except OSError as exc:  # the media, before any deployment (each one's are reported)
        raise DestinationError(f"cannot export to {out_dir}: {exc}") from exc
    stale = stale_claims(ctx.session, env, agent_id, ctx.now())
    pending = pending_exports(ctx.session, env, agent_id)
    if pending:
        pending, report.held = hold_back(ctx.session, pending, ctx.now(), live=live)
    ctx.session.commit()  # end the read; every claim is its own transaction
    if not stale and not pending:
        return report  # nothing to write: no checkpoint either (the live server asks often)
    run = _Run(ctx, env, out_dir, expires_in, split_size, progress, live, force, report)
    run.run_all(stale, pending, report)
    if report.written or report.failed:
        try:
            report.index = _write_index(out_dir, environment, report, ctx)
        except OSError as exc:
            report.index_error = (f"cannot write the index INDEX-{environment}.txt in "
                                  f"{out_dir}: {exc}")
    return report


def export_agents(
    ctx: ServiceContext,
    environment: str,
    spool_root: Path,
    agent_ids: Collection[str],
    *,
    expires_in: timedelta = DEFAULT_EXPIRY,
    live: bool = True,
) -> ExportReport:
    """:func:`export_environment` for many agents of ``environment`` at once, each agent's
    bundles into its own directory ``spool_root/<agent id>`` (the live server's spools):
    the queued deployments of all of them are claimed, written and recorded in batches of
    :data:`EXPORT_BATCH` (two commits a batch). No media index is written.

    Raises as :func:`export_environment`.
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "bundle.export", env)
    if ctx.keys is None or ctx.keys.release_key is None:
        raise ConfigError("the release key is not loaded; it lives in <data_dir>/keys/")
    spool_root = Path(spool_root)
    wanted = set(agent_ids)
    report = ExportReport(environment)
    now = ctx.now()
    stale = stale_claims(ctx.session, env, None, now, agent_ids=wanted)
    pending = pending_exports(ctx.session, env, agent_ids=wanted)
    # Their agents and releases in one query each (not a lazy load each deployment).
    _load_related(ctx.session, [*stale, *pending], env)
    if pending:
        pending, report.held = hold_back(ctx.session, pending, now, live=live)
    ctx.session.commit()
    if not stale and not pending:
        return report
    spool_root.mkdir(parents=True, exist_ok=True)
    run = _Run(ctx, env, spool_root, expires_in, None, None, live, False, report,
               per_agent=True)
    for agent_id in sorted({d.agent.agent_id for d in [*stale, *pending] if d.agent}):
        agent_dir = run.agent_dirs[agent_id] = spool_root / agent_id
        try:
            os.mkdir(agent_dir)  # one call for a directory that exists already, too
        except FileExistsError:
            report.cleaned += _clean_leftovers(ctx, agent_dir)
        else:  # made just now, so empty: nothing left over in it; its entry is synced with
            run.new_dirs.add(agent_dir)  # its first bundle (make_durable), as is sent/'s
            # with the bundle's rename into agent_dir
            os.mkdir(agent_dir / SENT)
    if _root_due(spool_root):
        report.cleaned += _clean_leftovers(ctx, spool_root)
    # Before the run: its commits and rollbacks expire these rows.
    owners = {d.id: d.agent.agent_id for d in [*stale, *pending] if d.agent is not None}
    run.run_all(stale, pending, report)
    report.failed_agents = {dep_id: owners[dep_id] for dep_id, _ in report.failed
                            if dep_id in owners}
    return report


def make_spool_dirs(spool_root: Path, agent_ids: Collection[str]) -> list[str]:
    """Make the live spool directories of ``agent_ids`` that do not exist yet —
    ``spool_root/<agent id>`` and its :data:`SENT` — durable: the new agent directories are
    fsynced (for ``sent/``; in parallel, :func:`~hub.services.import_files.sync_copies`),
    then ``spool_root`` once (for the new directories' entries).
    Returns the agent ids whose directory was made; existing directories are left as they
    are.

    The live server calls this as agents connect, so that a rollout's exports
    (:func:`export_agents`) find the directories there: two directory creations per agent
    fewer on the burst's path (on ext4 each costs 0.1–0.4 ms of system CPU;
    docs/benchmarks.md, "Session 10"). Without it, :func:`export_agents` makes them with the
    agent's first bundle, as before.

    Raises:
        OSError: a directory cannot be made or synced; the directories this call made are
            removed again (an unsynced directory must not look ready: the export would put
            a bundle in it and sync only the directory itself), so the export makes them.
    """
    made: list[Path] = []
    try:
        new_root = not spool_root.is_dir()
        if new_root:
            spool_root.mkdir(parents=True, exist_ok=True)
        for agent_id in agent_ids:
            agent_dir = spool_root / agent_id
            try:
                os.mkdir(agent_dir)
            except FileExistsError:
                continue
            made.append(agent_dir)
            os.mkdir(agent_dir / SENT)
        if made:
            sync_copies(made, fsync_dir)  # in parallel
            fsync_dir(spool_root)
            if new_root:
                fsync_dir(spool_root.parent)
    except OSError:
        for agent_dir in made:
            with contextlib.suppress(OSError):
                (agent_dir / SENT).rmdir()
            with contextlib.suppress(OSError):
                agent_dir.rmdir()
        raise
    return [d.name for d in made]


class _Run:
    """One call of :func:`export_environment`: its settings and the checkpoint it carries."""

    def __init__(
        self,
        ctx: ServiceContext,
        env: Environment,
        out_dir: Path,
        expires_in: timedelta,
        split_size: int | None,
        progress: ProgressFn | None,
        live: bool = False,
        force: bool = False,
        report: ExportReport | None = None,
        *,
        per_agent: bool = False,
    ) -> None:
        self.ctx = ctx
        self.per_agent = per_agent  # each agent's bundles into out_dir/<agent id>
        self.live = live
        self.force = force
        self.report = report
        self.env = env
        self.out_dir = out_dir
        self.expires_in = expires_in
        self.split_size = split_size
        self.progress = progress
        self.checkpoint: dict[str, Any] | None = None
        self.checkpoint_done = False
        self.frames: FrameCache | None = None
        self.prepared: dict[int, PreparedPayloads | None] = {}  # release id -> its payloads
        self.roots: dict[int, tuple[bytes, ...]] = {}  # root version -> the updates carried
        #: (release id, environment id, prepared) -> the manifest its bundles derive from
        self.templates: dict[tuple[int, int, bool], Manifest] = {}
        self.spool_made = False
        # agent directories this run made whose entry in out_dir is not yet fsynced
        self.new_dirs: set[Path] = set()
        self.agent_dirs: dict[str, Path] = {}  # per_agent: agent id -> out_dir/<agent id>
        #: deployment id -> (its intent, as claimed by this run, its chain and approvals)
        self.claimed: dict[int, tuple[dict[str, Any], ChainInfo, tuple[bytes, ...]]] = {}
        self.spool = out_dir / (SPOOL_PREFIX + _token_name(my_token()) + RUN_MARK
                                + secrets.token_hex(6))

    def run_all(self, stale: list[Deployment], pending: list[Deployment],
                report: ExportReport) -> None:
        """Complete the killed exports of ``stale``, then export ``pending`` in batches of
        :data:`EXPORT_BATCH`; the run's spool directory is removed at the end."""
        try:
            for dep in stale:
                self.resume(dep, report)
            for start in range(0, len(pending), EXPORT_BATCH):
                self.export_batch(pending[start:start + EXPORT_BATCH], report)
        finally:
            if self.spool_made:
                shutil.rmtree(self.spool, ignore_errors=True)

    def dir_for(self, dep: Deployment) -> Path:
        """Where ``dep``'s bundle goes."""
        if self.per_agent and dep.agent is not None:
            agent_id = dep.agent.agent_id
            found = self.agent_dirs.get(agent_id)
            if found is None:  # one Path an agent, not one each time it is asked
                found = self.agent_dirs[agent_id] = self.out_dir / agent_id
            return found
        return self.out_dir

    # -- new exports ---------------------------------------------------------------------

    def export(self, dep: Deployment, report: ExportReport) -> None:
        """Claim ``dep``, record its intent, write its bundle, record it."""
        ctx = self.ctx
        dep_id = dep.id
        try:
            intent = self._claim(dep)
        except (HubError, BundleError, OSError) as exc:
            ctx.session.rollback()  # the claim too: the deployment stays queued
            self._failed(report, dep_id, exc)
            return
        if intent is None:
            report.taken.append(dep_id)
            return
        crash_point("hub.export-claimed")
        self._write_and_record(dep, intent, report)

    def export_batch(self, deps: list[Deployment], report: ExportReport) -> None:
        """:meth:`export` for many deployments with two commits in all: every claim and
        intent in one transaction, then every bundle written, then every ``exported`` in
        one transaction. Each deployment keeps its own ``bundle.claimed`` and
        ``bundle.written`` events (appended under one lock of the audit head).

        What depends only on the release, the environment and the rules (release files,
        approvals, windows and freezes, sealed secret names) is worked out once per batch
        (:class:`_Facts`), and the database is asked with one query per kind of row for the
        whole batch, not once per deployment. Every check that may refuse a deployment
        runs before it is claimed, so one that fails is simply not claimed (it stays
        queued) and is reported in ``failed``; nothing else of the batch is rolled back."""
        if len(deps) == 1:
            self.export(deps[0], report)  # the plain path: one deployment, same commits
            return
        session = self.ctx.session
        self._ensure_checkpoint()
        with audit.held_head(session):
            claimed = self._claim_batch(deps, report)
        session.commit()
        if not claimed:
            return
        crash_point("hub.export-claimed")
        written: list[tuple[_Done, dict[str, Any], WrittenBundle]] = []
        unwritten: list[tuple[int, BaseException]] = []
        facts = _Facts(self.ctx, [], self.ctx.now())  # the write's: release files, approvals
        for dep, intent in claimed:
            try:
                # Under temporary names; made durable, re-read and renamed all at once below.
                bundle = self._write(dep, intent, facts, durable=False)
            except (HubError, BundleError, OSError) as exc:
                unwritten.append((dep.id, exc))
                continue
            # What the record needs, as plain values: the rollback below expires the rows.
            written.append((_Done.of(dep), intent, bundle))
        errors = make_durable([bundle for _, _, bundle in written],
                              synced=lambda: crash_point("hub.export-synced"),
                              new_dirs=self.new_dirs)
        self.new_dirs -= {bundle.paths[0].parent for (_, _, bundle), exc
                          in zip(written, errors, strict=True) if exc is None}
        unwritten += [(done.id, exc) for (done, _, _), exc in zip(written, errors, strict=True)
                      if exc is not None]
        written = [w for w, exc in zip(written, errors, strict=True) if exc is None]
        if written:
            crash_point("hub.export-renamed")
        # _write only reads: end its transaction, and start the recording one afresh (a
        # commit keeps the loaded rows the next batch checks; a rollback would expire them)
        session.commit()
        report.written.extend(self._record_batch(written, unwritten, report))
        crash_point("hub.export-recorded")

    def _record_batch(self, written: list[tuple[_Done, dict[str, Any], WrittenBundle]],
                      unwritten: list[tuple[int, BaseException]],
                      report: ExportReport) -> list[ExportedBundle]:
        """The recording transaction of :meth:`export_batch`, committed: every written
        deployment still ``exporting`` marked ``exported`` with one executemany UPDATE, the
        claims of the unwritten ones released with another, and every event
        (``deployment.exported`` and ``bundle.written`` each, ``bundle.export_failed``)
        appended with one INSERT, under one lock of the audit head."""
        ctx, session = self.ctx, self.ctx.session
        done: list[ExportedBundle] = []
        events: list[audit.NewEvent] = []
        with audit.held_head(session):
            ids = [d.id for d, _, _ in written]
            states: dict[int, str] = {}
            for start in range(0, len(ids), IN_CHUNK):
                states.update((dep_id, state) for dep_id, state in session.execute(
                    _STATES, {"ids": ids[start:start + IN_CHUNK]}))
            rows: list[dict[str, Any]] = []
            after: list[audit.NewEvent] = []  # each one's bundle.written, after its move
            for d, intent, bundle in written:
                state = states.get(d.id)
                if state != "exporting":
                    # Moved on while it was written (see _write_and_record).
                    events.append(self._failure(report, d.id, InvalidStateError(
                        f"deployment {d.id} is {state or 'gone'}, not queued")))
                    continue
                if bundle.file_sha256 is not None:
                    intent = {**intent, "file_sha256": bundle.file_sha256,
                              "file_size": bundle.size}
                rows.append({"id": d.id, "bundle_id": intent["bundle_id"],
                             "bundle_path": str(bundle.paths[0]),
                             "sequence": intent["sequence"],
                             "root_version": intent["root_version"], "export_intent": intent})
                after.append(("bundle.written", "deployment", str(d.id), _written_details(
                    intent, bundle.paths, bundle.size, bundle.envelope_sha256,
                    bundle.manifest.target.to_json())))  # _target_json's, as written
                done.append(ExportedBundle(d.id, d.agent_id, d.product, d.version,
                                           intent["sequence"], intent["bundle_id"],
                                           bundle.paths, bundle.size, bundle.file_sha256))
            for moved, written_event in zip(mark_exported_many(ctx, self.env, rows), after,
                                            strict=True):
                events += [moved, written_event]
            if unwritten:
                # The claims are released: the next export writes the recorded bundles again.
                table = Deployment.__table__
                session.execute(
                    update(table).where(table.c.id == bindparam("b_id"))
                    .values(claimed_by=None)
                    .execution_options(synchronize_session=False),
                    [{"b_id": dep_id} for dep_id, _ in unwritten])
                for dep_id, _ in unwritten:
                    show_loaded(session, dep_id, claimed_by=None)
                events += [self._failure(report, dep_id, why) for dep_id, why in unwritten]
            audit.record_many(ctx, events)
        session.commit()
        return done

    def _claim_batch(self, deps: list[Deployment],
                     report: ExportReport) -> list[tuple[Deployment, dict[str, Any]]]:
        """The claim transaction of :meth:`export_batch` (the audit head held): read the
        deployments again, check each, claim those that pass with one conditional update,
        allocate their sequences, record their intents and events."""
        ctx, session = self.ctx, self.ctx.session
        now = ctx.now()
        queued = _still_queued(session, deps)
        still = {dep.id for dep in queued}
        report.taken.extend(dep.id for dep in deps if dep.id not in still)
        facts = _Facts(ctx, queued, now)
        checked: list[tuple[Deployment, _Checked]] = []
        for dep in queued:
            try:
                checked.append((dep, self._check(dep, now, facts)))
            except (HubError, BundleError, OSError) as exc:
                self._failed_event(report, dep.id, exc)  # not claimed: stays queued
        mine = claim_many(session, [dep.id for dep, _ in checked], now)
        report.taken.extend(dep.id for dep, _ in checked if dep.id not in mine)
        checked = [(dep, c) for dep, c in checked if dep.id in mine]
        seqs = allocate_sequences(session, [(c.counter, dep.agent) for dep, c in checked])
        keys = ctx.keys
        assert keys is not None
        root_version = keys.root.version  # verifies the root: once a batch, not a bundle
        counters = Counter(c.counter for _, c in checked)
        # Before any of them records its sequence: the chains of agents with one bundle in
        # this batch at once; the others (and whatever chains_for leaves) one by one, in
        # order, so each sees the one before it.
        chains = chains_for(session, [(dep, seq) for (dep, c), seq in zip(checked, seqs,
                                                                          strict=True)
                                      if counters[c.counter] == 1], root_version)
        out = []
        events: list[audit.NewEvent] = []
        rows: list[dict[str, Any]] = []  # written at once: no chain_for below reads them
        for (dep, c), seq in zip(checked, seqs, strict=True):
            chain = chains.get(dep.id)
            out.append((dep, self._record_intent(dep, c, seq, root_version, chain, events,
                                                 rows if chain is not None else None)))
        if rows:
            session.execute(_RECORD_INTENTS, rows)
        audit.record_many(ctx, events)
        return out

    def _ensure_checkpoint(self) -> None:
        """Sign the run's audit checkpoint (once, in its own commit) before a batch holds
        the audit head; a failure is left for each claim to report, as one at a time."""
        if self.checkpoint_done:
            return
        try:
            self.checkpoint = _checkpoint_json(self.ctx, self.env)
        except HubError:
            self.ctx.session.rollback()
            return
        self.checkpoint_done = True
        self.ctx.session.commit()

    def _claim(self, dep: Deployment) -> dict[str, Any] | None:
        """Claim ``dep`` and record the bundle to write, in one committed transaction;
        None when another export claimed it first.

        Raises:
            HubError (validation: release, agent), BundleError, OSError: nothing recorded.
        """
        session = self.ctx.session
        # Lock order everywhere: audit head, then deployment, then sequence counter (the
        # importer holds the head while it moves deployments).
        audit.lock_head(session)
        intent = self._claim_one(dep)
        if intent is None:
            session.rollback()
            return None
        session.commit()
        return intent

    def _claim_one(self, dep: Deployment) -> dict[str, Any] | None:
        """The body of :meth:`_claim` inside the caller's transaction (the audit head
        locked): claim ``dep``, check it, allocate its sequence, record its intent and its
        ``bundle.claimed`` event; None (nothing written) when another export has it."""
        now = self.ctx.now()
        if not claim(self.ctx.session, dep.id, now):
            return None
        self.ctx.session.refresh(dep)
        checked = self._check(dep, now, _Facts(self.ctx, [dep], now))
        seq = allocate_sequences(self.ctx.session, [(checked.counter, dep.agent)])[0]
        assert self.ctx.keys is not None
        return self._record_intent(dep, checked, seq, self.ctx.keys.root.version)

    def _check(self, dep: Deployment, now: datetime, facts: _Facts) -> _Checked:
        """Everything that may refuse ``dep``'s export, before any sequence is used: its
        release (approved, files unchanged), freezes (and, live, windows) added since the
        queue was read, its agent, the preflight, the approvals a site will check
        (bundle-format §6.10). Writes nothing but the report's warnings.

        Raises:
            HubError (validation, preflight, approvals), BundleError, OSError.
        """
        release = dep.release
        if release.state != "approved":
            raise ValidationError(f"release {release.label} is {release.state}, not approved")
        facts.release_files(release)
        gate, policy = facts.gates[dep.id]  # a freeze added since the list was read
        if not gate.export_allowed(live=self.live):
            raise ValidationError(f"held: {gate.freeze if gate.frozen else gate.window}")
        env = dep.environment
        if dep.agent is not None:
            if dep.agent.status != "enrolled":
                raise ValidationError(f"agent {dep.agent.agent_id} is {dep.agent.status}")
            counter, who = agent_target(dep.agent.agent_id), dep.agent.agent_id
        else:
            counter, who = f"env:{env.name}", env.name
        forced = self._preflight(dep)
        created = int(now.timestamp())
        expires = created + int(self.expires_in.total_seconds())
        # Before any sequence is used: the approvals a site will check (bundle-format §6.10);
        # the bundle never outlives them.
        asked = expires
        approvals, expires = facts.approvals(release, env, created, expires)
        if expires < asked:
            self._capped(dep, created, expires)
        if not self.checkpoint_done:
            self.checkpoint = _checkpoint_json(self.ctx, env)
            self.checkpoint_done = True
        return _Checked(counter, who, created, expires, policy, approvals, forced,
                        facts.sealed_names(env, release))

    def _capped(self, dep: Deployment, created: int, expires: int) -> None:
        """Note that ``dep``'s bundle expires at ``expires``, before the asked validity,
        because its approvals stop counting then; refuse it when that leaves less than
        :data:`MIN_CAPPED_VALIDITY` (or what was asked, if less).

        Raises:
            ValidationError: too short a validity (nothing claimed, no sequence used).
        """
        floor = int(min(MIN_CAPPED_VALIDITY, self.expires_in).total_seconds())
        when = utc_text(expires + 1)
        if expires - created < floor:
            raise ValidationError(
                f"release {dep.release.label}: its approvals for {dep.environment.name} stop "
                f"counting at {when}, {max(expires + 1 - created, 0)} s from now: a bundle "
                f"would be valid under the minimum of {floor // 60} min (nothing exported, "
                "no sequence used; renew the approvals, then export again)")
        if self.report is not None:
            self.report.capped.append((dep.id, expires))

    def _record_intent(self, dep: Deployment, checked: _Checked, seq: int, root_version: int,
                       chain: ChainInfo | None = None,
                       events: list[audit.NewEvent] | None = None,
                       rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Record the bundle ``dep`` (claimed and checked) will be, at sequence ``seq``
        under root ``root_version``, with its ``bundle.claimed`` event (in the caller's
        transaction; added to ``events`` for the caller to append, if given; the row's new
        values added to ``rows`` for the caller to write, if given, else set on ``dep``).
        ``chain``: found already (:func:`chains_for`), else asked here."""
        release = dep.release
        if chain is None:
            chain = chain_for(self.ctx.session, dep, root_version, seq)  # bundle-format §6.8
        name = _bundle_name(release.product.name, release.version, checked.who, seq)
        intent: dict[str, Any] = {
            "bundle_id": f"{release.product.name}-{release.version}-{checked.who}-{seq}"[:128],
            "sequence": seq,
            "root_version": root_version,
            "created": checked.created,
            "expires": checked.expires,
            "file": name,
            "split_size": self.split_size,
            "checkpoint": self.checkpoint,
            "chain": chain.to_json(),
            "policy": checked.policy.to_json() if checked.policy is not None else None,
            # the exact envelopes, so a re-write after a crash gives the same bytes
            "approvals": [base64.b64encode(e).decode("ascii") for e in checked.approvals],
            # site secrets the steps reference and the environment stores: sealed at writing
            "secrets": checked.secrets,
        }
        out = self.dir_for(dep) / name
        # for _write_file: the chain and approvals as made, not parsed back from the intent
        self.claimed[dep.id] = (intent, chain, tuple(checked.approvals))
        if rows is not None:
            rows.append({"b_id": dep.id, "b_sequence": seq, "b_bundle_id": intent["bundle_id"],
                         "b_root_version": root_version, "b_bundle_path": str(out),
                         "b_export_intent": intent})
        else:
            dep.sequence, dep.bundle_id = seq, intent["bundle_id"]
            dep.root_version, dep.bundle_path = intent["root_version"], str(out)
            dep.export_intent = intent
        event: audit.NewEvent = (
            "bundle.claimed",
            "deployment",
            str(dep.id),
            {
                "bundle_id": intent["bundle_id"],
                "sequence": seq,
                "file": str(out),
                "claimed_by": my_token(),
                **({"secrets": intent["secrets"]} if intent["secrets"] else {}),
                **({"preflight_forced": checked.forced} if checked.forced else {}),
            },
        )
        if events is not None:
            events.append(event)
        else:
            audit.record(self.ctx, *event)
        return intent

    def _preflight(self, dep: Deployment) -> list[str]:
        """Check ``dep`` against its targets' inventories (before its sequence is used);
        returns the problems ``force`` overrode.

        Raises:
            PreflightError: a target lacks something the release needs (not forced).
        """
        findings = check_deployment(self.ctx.session, dep)
        problems = [f.message for f in findings if f.blocking]
        if self.report is not None:
            self.report.warnings.extend((dep.id, f.message) for f in findings
                                        if not f.blocking or self.force)
        if problems and not self.force:
            raise PreflightError(f"preflight: {'; '.join(problems)} (nothing exported, no "
                                 "sequence used; fix the site or export with --force)")
        return problems

    # -- killed exports ------------------------------------------------------------------

    def resume(self, dep: Deployment, report: ExportReport) -> None:
        """Complete the export of ``dep`` that a killed (or failed) export claimed."""
        ctx = self.ctx
        dep_id = dep.id
        if not take_over(ctx.session, dep, ctx.now()):
            ctx.session.rollback()
            report.taken.append(dep_id)
            return
        ctx.session.commit()
        ctx.session.refresh(dep)
        intent = dict(dep.export_intent or {})
        if not intent:
            self._failed(report, dep_id, ValidationError("its export recorded no bundle"))
            return
        report.recovered.append(dep_id)
        recorded = Path(dep.bundle_path or "")
        head = part_path(recorded, 0) if intent.get("split_size") else recorded
        expired = intent["expires"] <= int(ctx.now().timestamp())
        if dep.bundle_path and not expired and head.is_file():
            # The final name reached the media before the export died: record it once it
            # reads back as the bundle of this intent (else it is written again). One whose
            # validity ended is written again below (every agent would refuse it).
            paths = _written_paths(recorded, bool(intent.get("split_size")))
            found = _check_found(paths, intent)
            if found is not None:
                self._record(dep, intent, paths, found.size, found.envelope_sha256, report,
                             file_sha256=found.file_sha256)
                return
        if expired:
            # A copy that reached some media has expired there: a fresh validity period,
            # with the approvals that count now (the intent's may have expired with it) and
            # the expiry they allow, checked as a new export checks them.
            created = int(ctx.now().timestamp())
            facts = _Facts(ctx, [dep], ctx.now())
            try:
                asked = created + int(self.expires_in.total_seconds())
                envelopes, expires = facts.approvals(dep.release, dep.environment, created,
                                                     asked)
                if expires < asked:
                    self._capped(dep, created, expires)
            except (HubError, BundleError) as exc:
                ctx.session.rollback()
                audit.lock_head(ctx.session)
                dep.claimed_by = None  # the next export tries again
                self._failed(report, dep_id, exc)
                return
            intent.update(created=created, expires=expires,
                          approvals=[base64.b64encode(e).decode("ascii") for e in envelopes])
        self._write_and_record(dep, intent, report)

    # -- writing -------------------------------------------------------------------------

    def _write_and_record(
        self, dep: Deployment, intent: dict[str, Any], report: ExportReport
    ) -> None:
        ctx = self.ctx
        dep_id = dep.id
        try:
            written = self._write(dep, intent)
        except (HubError, BundleError, OSError) as exc:
            ctx.session.rollback()
            audit.lock_head(ctx.session)
            # The claim is released: the next export writes the recorded bundle again.
            dep.claimed_by = None
            self._failed(report, dep_id, exc)
            return
        crash_point("hub.export-renamed")
        try:
            self._record(
                dep, intent, written.paths, written.size, written.envelope_sha256, report,
                file_sha256=written.file_sha256,
            )
        except HubError as exc:
            # Moved on while it was written (declared lost, or a result arrived): the file
            # stays on the media, as recorded in the intent; say why it is not "written".
            ctx.session.rollback()
            self._failed(report, dep_id, exc)

    def _write(self, dep: Deployment, intent: dict[str, Any],
               facts: _Facts | None = None, *, durable: bool = True) -> WrittenBundle:
        """``dep``'s bundle written (:meth:`_write_file`); an OSError that names no file (a
        write or fsync of an open one: "No space left on device") names the bundle's."""
        try:
            bundle = self._write_file(dep, intent, facts, durable=durable)
            directory = self.dir_for(dep)
            if durable and directory in self.new_dirs:
                # a directory this run made: its entry in out_dir too (make_durable does
                # this for a batch)
                sync_placed(bundle.paths, directory.parent)
                self.new_dirs.discard(directory)
            return bundle
        except OSError as exc:
            name_file(exc, self.dir_for(dep) / intent["file"])
            raise

    def _write_file(self, dep: Deployment, intent: dict[str, Any],
                    facts: _Facts | None = None, *, durable: bool = True) -> WrittenBundle:
        keys = self.ctx.keys
        assert keys is not None and keys.release_key is not None
        facts = facts or _Facts(self.ctx, [], self.ctx.now())
        release = dep.release
        source = facts.release_files(release)
        env = dep.environment
        if dep.agent is not None:
            target = Target(agents=(dep.agent.agent_id,), environment=env.name)
        else:
            target = Target(environment=env.name)
        # The payload section framed once a run for every bundle of the release (a split
        # bundle is cut by the writer): each bundle is then its manifest, signed, and a write.
        prepared = None if intent.get("split_size") else self._prepared(release, source)
        sealed: tuple[SecretEntry, ...] = ()
        if intent.get("secrets"):  # sealed now, to each target agent's box key
            sealed = seal_for_agents(self.ctx, env.name, intent["secrets"],
                                     secret_recipients(self.ctx.session, dep),
                                     intent["bundle_id"])
        # What differs between the bundles of the release in this environment, on the
        # manifest made (and validated) once for all of them.
        claimed = self.claimed.get(dep.id)
        if claimed is not None and claimed[0] is intent:  # claimed by this run: as made
            chain: ChainInfo | None = claimed[1]
            approvals = claimed[2]
        else:  # from the database: the intent recorded
            chain = ChainInfo.from_json(intent["chain"]) if intent.get("chain") else None
            approvals = tuple(base64.b64decode(e) for e in intent.get("approvals", ()))
        manifest = self._template(release, env, source, prepared, target, intent, facts).derive(
            bundle_id=intent["bundle_id"],
            target=target,
            root_version=intent["root_version"],
            sequence=intent["sequence"],
            created=intent["created"],
            expires=intent["expires"],
            checkpoint=intent.get("checkpoint"),
            chain=chain,
            approvals=approvals,
            # windows, freezes, override (bundle-format §6.9)
            policy=Policy.from_json(intent["policy"]) if intent.get("policy") else None,
            secrets=sealed,
        )
        out = self.dir_for(dep) / intent["file"]
        roots = self._roots(intent["root_version"])
        if prepared is not None:
            return write_prepared(out, manifest, prepared, [keys.release_key], roots=roots,
                                  progress=_with_crash_point(self.progress), durable=durable)
        return write_bundle(
            out,
            manifest,
            release_payloads(source),
            [keys.release_key],
            roots=roots,
            split_size=intent.get("split_size"),
            spool_dir=self._spool(),
            progress=_with_crash_point(self.progress),
            frames=self._frames(),
            durable=durable,
        )

    def _prepared(self, release: Release, source: ReleaseSource) -> PreparedPayloads | None:
        """The payload section of ``release``'s bundles (:mod:`bundle.prepared`), framed at
        its first bundle of this run; None when it is too large to hold (write_bundle
        streams those).

        Raises:
            BundleError, OSError: as :func:`prepare_payloads` (nothing kept: the next
                bundle tries again).
        """
        if release.id not in self.prepared:
            key = (release.stored_path, release.content_hash)
            with _prepared_lock:
                known = _prepared.get(key)
            if known is not None and known[0] is source:
                self.prepared[release.id] = known[1]  # framed by an earlier run, same files
            else:
                made = prepare_payloads(release_payloads(source), self._spool(),
                                        frames=self._frames())
                with _prepared_lock:
                    _prepared.pop(key, None)
                    while len(_prepared) >= PREPARED_KEPT:
                        del _prepared[next(iter(_prepared))]  # the oldest
                    _prepared[key] = (source, made)
                self.prepared[release.id] = made
        return self.prepared[release.id]

    def _spool(self) -> Path:
        """The run's spool directory (made when first needed: a release whose payload
        section an earlier run framed needs none)."""
        if not self.spool_made:
            self.spool.mkdir(exist_ok=True)
            self.spool_made = True
        return self.spool

    def _template(self, release: Release, env: Environment, source: ReleaseSource,
                  prepared: PreparedPayloads | None, target: Target, intent: dict[str, Any],
                  facts: _Facts) -> Manifest:
        """The manifest of ``release``'s bundles in ``env`` (made with the values of the
        first one: each bundle's own come by :meth:`Manifest.derive`), once a run; its
        ``files`` the prepared entries, or none for :func:`write_bundle` to fill in.

        Raises:
            ManifestError: a field breaks a manifest rule.
        """
        key = (release.id, env.id, prepared is not None)
        found = self.templates.get(key)
        if found is None:
            keys = self.ctx.keys
            assert keys is not None and keys.release_key is not None
            found, _ = release_manifest(
                source,
                bundle_id=intent["bundle_id"],
                issuer=keys.release_key.key_id,
                target=target,
                root_version=intent["root_version"],
                sequence=intent["sequence"],
                created=intent["created"],
                expires=intent["expires"],
                counter=release.id,
                author=release.author.username,
                approvals=facts.manifest_approvals(release, env),
                entries=prepared.entries if prepared is not None else (),
            )
            self.templates[key] = found
        return found

    def _roots(self, version: int) -> tuple[bytes, ...]:
        """:func:`_roots_up_to` ``version``, once a run."""
        found = self.roots.get(version)
        if found is None:
            assert self.ctx.keys is not None
            found = self.roots[version] = _roots_up_to(self.ctx.keys.root_updates, version)
        return found

    def _frames(self) -> FrameCache | None:
        """The release store's cache of compressed payload frames (bundle-format §12.4):
        each release file is compressed once, whatever the number of agents."""
        if self.ctx.releases_dir is None:
            return None
        if self.frames is None:
            self.frames = FrameCache(Path(self.ctx.releases_dir) / FRAMES_DIR,
                                     crash=lambda _: crash_point("hub.export-frame-caching"))
            self.frames.clean()  # what a killed export left half made
        return self.frames

    def _record(
        self,
        dep: Deployment,
        intent: dict[str, Any],
        paths: tuple[Path, ...],
        size: int,
        envelope_sha256: str | None,
        report: ExportReport,
        *,
        file_sha256: str | None = None,
    ) -> None:
        """Mark ``dep`` exported with its ``bundle.written`` event, and commit."""
        audit.lock_head(self.ctx.session)  # lock order: audit head, then the deployment
        exported = self._record_one(dep, intent, paths, size, envelope_sha256, file_sha256)
        self.ctx.session.commit()
        crash_point("hub.export-recorded")
        report.written.append(exported)

    def _record_one(
        self,
        dep: Deployment,
        intent: dict[str, Any],
        paths: tuple[Path, ...],
        size: int,
        envelope_sha256: str | None,
        file_sha256: str | None = None,
    ) -> ExportedBundle:
        """Mark ``dep`` exported with its ``bundle.written`` event, in the caller's
        transaction (the audit head locked); the whole file's SHA-256 and size, when known,
        go into its ``export_intent`` (``file_sha256``, ``file_size``)."""
        ctx = self.ctx
        release = dep.release
        mark_exported(
            ctx,
            dep,
            bundle_id=intent["bundle_id"],
            bundle_path=str(paths[0]),
            sequence=intent["sequence"],
            root_version=intent["root_version"],
            flush=False,  # all of a batch's rows in one flush, at its commit
        )
        dep.claimed_by = None
        if file_sha256 is not None:
            dep.export_intent = {**intent, "file_sha256": file_sha256, "file_size": size}
        audit.record(ctx, "bundle.written", "deployment", str(dep.id),
                     _written_details(intent, paths, size, envelope_sha256, _target_json(dep)))
        return ExportedBundle(
            dep.id,
            dep.agent.agent_id if dep.agent else None,
            release.product.name,
            release.version,
            intent["sequence"],
            intent["bundle_id"],
            paths,
            size,
            file_sha256,
        )

    def _failure(self, report: ExportReport, dep_id: int,
                 exc: BaseException) -> audit.NewEvent:
        """Report ``dep_id`` failed; its ``bundle.export_failed`` event, to append."""
        reason = f"{type(exc).__name__}: {exc}"
        report.failed.append((dep_id, reason))
        return ("bundle.export_failed", "deployment", str(dep_id), {"reason": reason[:2000]})

    def _failed(self, report: ExportReport, dep_id: int, exc: BaseException) -> None:
        self._failed_event(report, dep_id, exc)
        self.ctx.session.commit()

    def _failed_event(self, report: ExportReport, dep_id: int, exc: BaseException) -> None:
        """Report ``dep_id`` failed and append its ``bundle.export_failed`` event (the
        caller commits)."""
        reason = f"{type(exc).__name__}: {exc}"
        report.failed.append((dep_id, reason))
        audit.record(
            self.ctx, "bundle.export_failed", "deployment", str(dep_id),
            {"reason": reason[:2000]}
        )


@dataclass(frozen=True)
class _Done:
    """What recording a written deployment needs of its row, as plain values."""

    id: int
    agent_id: str | None
    product: str
    version: str

    @classmethod
    def of(cls, dep: Deployment) -> _Done:
        release = dep.release
        return cls(dep.id, dep.agent.agent_id if dep.agent is not None else None,
                   release.product.name, release.version)


def _written_details(intent: dict[str, Any], paths: tuple[Path, ...], size: int,
                     envelope_sha256: str | None, target: dict[str, Any]) -> dict[str, Any]:
    """The details of a ``bundle.written`` event."""
    return {
        "bundle_id": intent["bundle_id"],
        "envelope_sha256": envelope_sha256,
        "files": [p.name for p in paths],
        "size": size,
        "sequence": intent["sequence"],
        "target": target,
    }


@dataclass(frozen=True)
class _Checked:
    """What :meth:`_Run._check` found for one deployment: its sequence counter and target
    name, the bundle's times, policy, approval envelopes, the problems ``force`` overrode,
    and the names of the site secrets it carries."""

    counter: str
    who: str
    created: int
    expires: int
    policy: Policy | None
    approvals: list[bytes]
    forced: list[str]
    secrets: list[str]


class _Facts:
    """What an export batch works out once, not once per deployment: the windows, freezes
    and overrides of all its deployments (:func:`hub.services.windows.gates_for`), each
    release's checked files, and per release and environment the approval envelopes, the
    manifest's approvals and the sealed secrets' names."""

    def __init__(self, ctx: ServiceContext, deps: list[Deployment], now: datetime) -> None:
        self.ctx = ctx
        self.gates = gates_for(ctx.session, deps, now) if deps else {}
        self._sources: dict[int, ReleaseSource] = {}
        self._approvals: dict[tuple[int, int, int, int], tuple[list[bytes], int]] = {}
        self._manifest_approvals: dict[tuple[int, int], tuple[ManifestApproval, ...]] = {}
        self._sealed: dict[tuple[int, int], list[str]] = {}

    def release_files(self, release: Release) -> ReleaseSource:
        """:func:`_check_release_files` of ``release``, once a batch."""
        source = self._sources.get(release.id)
        if source is None:
            source = _check_release_files(release.label, release.stored_path,
                                          release.content_hash)
            self._sources[release.id] = source
        return source

    def approvals(self, release: Release, env: Environment, created: int,
                  expires: int) -> tuple[list[bytes], int]:
        """:func:`bundle_approvals` (raises as it does) and the bundle's expiry, at most
        ``expires``, while they hold (:func:`approvals_hold_until`); once per release,
        environment and validity period."""
        key = (release.id, env.id, created, expires)
        found = self._approvals.get(key)
        if found is None:
            envelopes = bundle_approvals(self.ctx, release, env, created=created,
                                         expires=expires)
            found = (envelopes, approvals_hold_until(self.ctx, release, env, envelopes,
                                                     created, expires))
            self._approvals[key] = found
        return list(found[0]), found[1]

    def manifest_approvals(self, release: Release,
                           env: Environment) -> tuple[ManifestApproval, ...]:
        """The manifest's ``approvals`` (who approved, when), once per release and
        environment."""
        key = (release.id, env.id)
        found = self._manifest_approvals.get(key)
        if found is None:
            found = tuple(
                ManifestApproval(by=a["by"], at=_unix(a["at"]), comment=a.get("comment", ""))
                for a in approvals_for_manifest(release, env))
            self._manifest_approvals[key] = found
        return found

    def sealed_names(self, env: Environment, release: Release) -> list[str]:
        """:func:`sealed_names` of the release's steps in ``env``, once per pair."""
        key = (env.id, release.id)
        found = self._sealed.get(key)
        if found is None:
            found = sealed_names(self.ctx, env.name, release.steps)
            self._sealed[key] = found
        return list(found)


def _still_queued(session: Session, deps: list[Deployment]) -> list[Deployment]:
    """Those of ``deps`` that are still queued, read now as plain rows with their agents'
    status (one query per :data:`IN_CHUNK`, no ORM objects built): the loaded objects are
    given the values read (state, agent status), in the order of ``deps``. What else the
    claim checks is read by its own queries (windows, approvals, preflight), and the claim
    itself is conditional (:func:`claim_many`)."""
    ids = [dep.id for dep in deps]
    now: dict[int, tuple[str, str | None]] = {}
    for start in range(0, len(ids), IN_CHUNK):
        now.update((dep_id, (state, status)) for dep_id, state, status in session.execute(
            _STATES_AND_AGENTS, {"ids": ids[start:start + IN_CHUNK]}))
    out = []
    for dep in deps:
        found = now.get(dep.id)
        if found is None:
            continue  # gone
        state, status = found
        if dep.state != state:
            set_committed_value(dep, "state", state)  # another export took it meanwhile
        agent = dep.agent
        if agent is not None and status is not None and agent.status != status:
            set_committed_value(agent, "status", status)
        if state == "queued":
            out.append(dep)
    return out


def _load_related(session: Session, deps: list[Deployment], env: Environment) -> None:
    """Give each of ``deps`` its agent and its release, loaded with one query per
    :data:`IN_CHUNK` (held by the deployment: the session's identity map holds rows
    weakly) and, of ``env``, ``env``: ``dep.agent``, ``dep.release`` and ``dep.environment``
    are no lazy load each."""
    agents = _by_id(session, Agent, {dep.agent_id for dep in deps if dep.agent_id is not None})
    releases = _by_id(session, Release, {dep.release_id for dep in deps})
    for dep in deps:
        if dep.agent_id in agents:
            set_committed_value(dep, "agent", agents[dep.agent_id])
        if dep.release_id in releases:
            set_committed_value(dep, "release", releases[dep.release_id])
        if dep.environment_id == env.id:
            set_committed_value(dep, "environment", env)


_Row = TypeVar("_Row", Agent, Release)


def _by_id(session: Session, model: type[_Row], ids: Collection[int]) -> dict[int, _Row]:
    """The rows of ``model`` with ``ids``, by id: one query per :data:`IN_CHUNK`."""
    wanted = sorted(ids)
    found: dict[int, _Row] = {}
    for start in range(0, len(wanted), IN_CHUNK):
        found.update((row.id, row) for row in session.scalars(
            _BY_ID[model], {"ids": wanted[start:start + IN_CHUNK]}))
    return found


# The statements every export call runs, made once (a statement built per call costs its
# construction and cache key again: 40-90 us each; the live server makes a call per 5 to 100
# agents).
_TABLE = Deployment.__table__
_IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)
_STATES = select(Deployment.id, Deployment.state).where(Deployment.id.in_(_IDS))
_STATES_AND_AGENTS = (select(Deployment.id, Deployment.state, Agent.status)
                      .outerjoin(Agent, Deployment.agent_id == Agent.id)
                      .where(Deployment.id.in_(_IDS)))
#: a release with its product and author in the same query: the manifest names both (each
#: would be a lazy load of its own every export call)
_BY_ID: dict[type[Agent] | type[Release], Any] = {
    Agent: select(Agent).where(Agent.id.in_(_IDS)),
    Release: (select(Release).where(Release.id.in_(_IDS))
              .options(joinedload(Release.product), joinedload(Release.author)))}
#: a claimed deployment's intent (executemany; Core: no session object to synchronise)
_RECORD_INTENTS = (
    update(_TABLE).where(_TABLE.c.id == bindparam("b_id"))
    .values(sequence=bindparam("b_sequence"), bundle_id=bindparam("b_bundle_id"),
            root_version=bindparam("b_root_version"), bundle_path=bindparam("b_bundle_path"),
            export_intent=bindparam("b_export_intent", type_=_TABLE.c.export_intent.type))
)


def _roots_up_to(updates: tuple[bytes, ...], version: int) -> tuple[bytes, ...]:
    """The root updates (versions 2..N, bundle-format §5.2) up to ``version``, the root
    version recorded in the bundle's intent: a bundle written again after a root was
    installed meanwhile keeps its bytes."""
    out = []
    for envelope in updates:
        if RootDocument.from_bytes(parse_envelope(envelope).payload).version <= version:
            out.append(envelope)
    return tuple(out)


def _checkpoint_json(ctx: ServiceContext, env: Environment) -> dict[str, Any] | None:
    """A fresh signed audit checkpoint for the bundles of this run (in the caller's
    transaction), as the manifest carries it; None without the audit key."""
    if ctx.keys is None or ctx.keys.audit_key is None:
        return None
    cp = audit.checkpoint_for_export(ctx, env)
    return {
        "seq": cp.seq,
        "head_hash": cp.head_hash,
        "at": int(cp.at.timestamp()),
        "envelope": base64.b64encode(cp.envelope).decode("ascii"),
    }


def _target_json(dep: Deployment) -> dict[str, Any]:
    env = dep.environment.name
    if dep.agent is not None:
        return Target(agents=(dep.agent.agent_id,), environment=env).to_json()
    return Target(environment=env).to_json()


#: (stored release directory, content hash) -> (the release loaded from its files, its
#: payload section framed from that, or None when too large to hold): a rollout's export
#: calls frame it once, not once a call. Used only while :func:`_check_release_files`
#: gives the very same loaded release (its files unchanged since).
_prepared: dict[tuple[str, str], tuple[ReleaseSource, PreparedPayloads | None]] = {}
_prepared_lock = threading.Lock()
PREPARED_KEPT = 2  # releases whose payload sections are kept (each at most ASSEMBLE_BYTES)

#: stored release directory -> (what its files looked like, the release loaded from them)
_loaded: dict[str, tuple[tuple[tuple[str, int, int, int, int], ...], ReleaseSource]] = {}
_loaded_lock = threading.Lock()


def _stamp(root: Path) -> tuple[tuple[str, int, int, int, int], ...]:
    """What every file and directory under ``root`` looks like to ``stat`` (name, inode,
    size, modification and change time): any write, rename, addition or removal changes it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [".", *sorted(filenames)]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out.append((path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _check_release_files(label: str, stored_path: str, content_hash: str) -> ReleaseSource:
    """The release's stored files, loaded; they must still have the approved content hash.

    Hashing them is done once per process while no file of the release directory changes
    (its ``stat`` stamp is compared at every call): exporting a release to a thousand
    agents reads its files once, and a file changed after approval is still caught.

    Raises:
        ValidationError: they changed on disk.
    """
    root = Path(stored_path)
    try:
        stamp = _stamp(root)
    except OSError:
        stamp = ()
    with _loaded_lock:
        known = _loaded.get(stored_path)
    if stamp and known is not None and known[0] == stamp:
        source = known[1]
    else:
        source = load_release(root)
        if stamp and _stamp(root) == stamp:
            with _loaded_lock:
                _loaded[stored_path] = (stamp, source)
    if source.content_hash != content_hash:
        raise ValidationError(
            f"the stored files of {label} changed on disk "
            f"(content hash {source.content_hash[:16]} ≠ approved {content_hash[:16]});"
            " refusing to export"
        )
    return source


@dataclass(frozen=True)
class _Found:
    """A bundle a killed export left under its final name, read back whole."""

    size: int
    envelope_sha256: str
    file_sha256: str | None


def _check_found(paths: tuple[Path, ...], intent: dict[str, Any]) -> _Found | None:
    """Read back the bundle ``paths`` that a killed export left under its final name(s):
    it is recorded only if it is the bundle of ``intent`` (bundle id and sequence) and every
    member, digest and part reads back as its signed manifest says
    (:func:`bundle.inspect.verify_written`). Otherwise its files are removed and None is
    returned: the caller writes it again from the intent (the same bytes)."""
    from bundle.container import ContainerReader, read_head
    from bundle.inspect import verify_written
    from bundle.manifest import peek_manifest

    label = strip_part_suffix(paths[0].name)
    try:
        size = sum(p.stat().st_size for p in paths)
        with paths[0].open("rb") as fh:
            head = read_head(ContainerReader(fh, label), max_roots_bytes=2**30,
                             max_envelope_bytes=2**30)
        manifest = peek_manifest(head.envelope, len(head.envelope))
        if (manifest.bundle_id, manifest.sequence) != (intent["bundle_id"],
                                                       intent["sequence"]):
            raise BundleError(f"bundle {label} is {manifest.bundle_id} "
                              f"(sequence {manifest.sequence}), not the one recorded")
        written = WrittenBundle(paths, manifest, head.envelope,
                                hashlib.sha256(head.envelope).hexdigest(), size)
        verify_written(written)
        file_sha256 = None
        if len(paths) == 1:
            digest = hashlib.sha256()
            with paths[0].open("rb") as fh:
                while block := fh.read(1024 * 1024):
                    digest.update(block)
            file_sha256 = digest.hexdigest()
    except (BundleError, OSError):
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
        return None
    return _Found(size, written.envelope_sha256, file_sha256)


def _written_paths(out: Path, split: bool) -> tuple[Path, ...]:
    """The files of a bundle already under its final name(s): the file, or its parts."""
    if not split:
        return (out,)
    paths = [part_path(out, 0)]
    index = 1
    while part_path(out, index).is_file():
        paths.append(part_path(out, index))
        index += 1
    return tuple(paths)


def _with_crash_point(progress: ProgressFn | None) -> ProgressFn:
    """``progress`` plus crash point ``hub.export-writing`` once the writer starts writing
    the bundle file (its spool and a temporary file exist on the media)."""

    def report(phase: str, done: int, total: int) -> None:
        if phase == "write":
            crash_point("hub.export-writing")
        if progress is not None:
            progress(phase, done, total)

    return report


def _root_due(spool_root: Path) -> bool:
    """Whether :func:`export_agents` looks for leftovers in ``spool_root`` now: the first
    time in this process, then once every :data:`ROOT_CLEAN_SECONDS`."""
    key, now = str(spool_root), time.monotonic()
    with _root_cleaned_lock:
        last = _root_cleaned.get(key)
        if last is not None and now - last < ROOT_CLEAN_SECONDS:
            return False
        _root_cleaned[key] = now
        return True


def _token_name(token: str) -> str:
    """A claim token as a file-name part (``:`` is not portable to FAT media)."""
    return "".join(c if c.isalnum() or c in ".-_" else "+" for c in token)


def _clean_leftovers(ctx: ServiceContext, out_dir: Path) -> list[str]:
    """Remove what killed exports left in ``out_dir``: their spool directories, the
    temporary files of bundles they were writing, and the lock file and temporary copy of
    a media index they were rewriting. Returns the names removed.

    A leftover is removed only when the export that made it is gone: a spool directory
    carries its export's claim token; a temporary file ``.<bundle file>.<random>.tmp`` goes
    when that bundle file is claimed by an export that is gone, and stays while a running
    export has claimed it. Other temporary files and spools of ours go once older than
    :data:`~hub.services.export_claims.STALE_CLAIM`. An index's lock file and temporary
    copy go when nobody holds that lock (a running export holds it while they exist).
    """
    now = ctx.now()
    found: list[os.DirEntry[str]] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(out_dir) as entries:
        found = [e for e in entries if e.name.startswith(".")]
    if not found:
        return []
    claims: tuple[set[str], set[str]] | None = None  # read when a temporary file is seen
    mine = _token_name(my_token())
    removed = _clean_index_leftovers(out_dir, [e.name for e in found])
    for entry in found:
        name = entry.name
        if name in removed:
            continue
        try:
            age = now.timestamp() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        old = age > STALE_CLAIM.total_seconds()
        if name.startswith(SPOOL_PREFIX) and entry.is_dir(follow_symlinks=False):
            owner = name[len(SPOOL_PREFIX) :].partition(RUN_MARK)[0]
            gone = owner != mine and not _token_alive(owner, entry, now)
            if gone or old:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(name)
        elif name.startswith(WRITER_SPOOL_PREFIX) and entry.is_dir(follow_symlinks=False):
            if old:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(name)
        elif name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            final = _final_of_temp(name)
            if final is None or final.startswith("INDEX-"):
                continue
            if claims is None:
                claims = _exporting_files(ctx, now)
            live, dead = claims
            if final in live:
                continue
            if final not in dead and not old:
                continue  # not ours to judge yet (another tool's, or an index being written)
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(name)
    ctx.session.commit()
    return sorted(removed)


def _exporting_files(ctx: ServiceContext, now: datetime) -> tuple[set[str], set[str]]:
    """The bundle file names of ``exporting`` deployments: (those a running export is
    writing, those of claims whose export is gone). Read AFTER listing the directory: a
    temporary file seen there belongs to a claim committed before the file was made, so
    it is among these."""
    live: set[str] = set()
    dead: set[str] = set()
    alive = claims_judge(now)
    rows = ctx.session.execute(
        select(Deployment.bundle_path, Deployment.claimed_by, Deployment.claimed_at).where(
            Deployment.state == "exporting"
        )
    ).all()
    for path, token, at in rows:
        if path:
            (live if alive(token, at) else dead).add(Path(path).name)
    return live, dead


def _token_alive(owner: str, entry: os.DirEntry[str], now: datetime) -> bool:
    """Whether the export whose token (as a file-name part) is ``owner`` may be running."""
    host, _, rest = owner.partition("+")
    pid, _, start = rest.partition("+")
    token = f"{host}:{pid}:{start}"
    at = datetime.fromtimestamp(entry.stat(follow_symlinks=False).st_mtime, UTC)
    return claim_is_live(token, at, now)


def _final_of_temp(name: str) -> str | None:
    """``.hello-1.0-a-000003.tgb.x1y2.tmp`` → ``hello-1.0-a-000003.tgb`` (parts to their
    bundle file); None for a name that is not one of the writer's temporary files."""
    if not name.startswith(".") or name.count(".") < 3:
        return None
    inner = name[1:].rsplit(".", 2)[0]  # drop ".<random>.tmp"
    if not (".tgb" in inner or inner.startswith("INDEX-")):
        return None
    return strip_part_suffix(inner)


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
    # Concurrent exports to one directory each add their lines: one at a time.
    lock = _lock_index(out_dir, path.name, wait=True)
    assert lock is not None
    try:
        _remove_index_temporaries(out_dir, path.name)  # of a killed export, under the lock
        previous = path.read_text(encoding="utf-8") if path.exists() else ""
        text = "\n".join(lines) + "\n"
        if previous:
            text += f"\n--- earlier exports ---\n{previous}"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=out_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        crash_point("hub.export-indexing")
        os.replace(tmp, path)
    finally:
        _unlock_index(out_dir, path.name, lock)
    return path


def _index_lock_name(index: str) -> str:
    return f".{index}.lock"


def _lock_index(out_dir: Path, index: str, *, wait: bool) -> int | None:
    """Lock the media index ``index`` (``INDEX-<env>.txt``) through its lock file
    ``.INDEX-<env>.txt.lock``; the open descriptor, or None when ``wait`` is false and
    another export holds it.

    The holder removes the lock file when it is done (nothing stays on the media), so a
    lock taken on a file that was removed meanwhile is worthless: it is taken again on
    the file now under that name.
    """
    lock_path = out_dir / _index_lock_name(index)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            named = os.stat(lock_path)
        except FileNotFoundError:
            named = None
        held = os.fstat(fd)
        if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


def _unlock_index(out_dir: Path, index: str, fd: int) -> None:
    """Remove the index's lock file (still holding it), then release it."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out_dir / _index_lock_name(index))
    finally:
        os.close(fd)


def _remove_index_temporaries(out_dir: Path, index: str) -> list[str]:
    """Remove the temporary copies of ``index`` (``.INDEX-<env>.txt.<random>.tmp``); only
    the holder of the index's lock writes one, so call this holding it. Returns the names."""
    removed = []
    for tmp in out_dir.glob(f".{glob.escape(index)}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp.name)
    return removed


def _clean_index_leftovers(out_dir: Path, names: list[str]) -> list[str]:
    """Remove the lock files and temporary copies of media indexes (among ``names``, the
    hidden entries of ``out_dir``) that a killed export left: those whose lock nobody
    holds. Returns the names removed."""
    indexes = set()
    for name in names:
        if name.startswith(".INDEX-") and name.endswith(".lock"):
            indexes.add(name[1 : -len(".lock")])
        elif name.startswith(".INDEX-") and name.endswith(".tmp"):
            final = _final_of_temp(name)
            if final is not None and final.startswith("INDEX-"):
                indexes.add(final)
    removed: list[str] = []
    for index in sorted(indexes):
        try:
            fd = _lock_index(out_dir, index, wait=False)
        except OSError:
            continue  # read-only media or the like: leave it, the export itself will say
        if fd is None:
            continue  # an export is writing this index now
        removed += _remove_index_temporaries(out_dir, index)
        if _index_lock_name(index) in names:
            removed.append(_index_lock_name(index))
        _unlock_index(out_dir, index, fd)
    return removed
