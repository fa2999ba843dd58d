"""The Kubernetes step executor: server-side apply of staged manifests, dry run first.

A k8s step names a site connection of type ``kubernetes`` and a list of staged manifest
payloads. In order ("verify, then parse, then act"):

1. **Parse** every manifest (:mod:`agent.executors.k8smanifest`: multi-document YAML, at
   most :data:`MAX_MANIFEST_BYTES` per file). A malformed document fails the step, naming
   the file and the document's 1-based position; the API server is not contacted.
2. **Connect** (:mod:`agent.executors.k8sapi`: a fresh client ``Configuration`` from the
   connection, no global client state) and resolve each ``apiVersion``/``kind`` to its REST
   resource by discovery, which also says whether the kind is namespaced. Namespaced objects
   without ``metadata.namespace`` go to the step's ``namespace``, else ``default``. An object
   named twice in one step fails the step.
3. **Dry run** every object (server-side apply with ``dryRun=All``). Every object is tried; if
   the server rejects any, the step fails, every rejection is reported (``Status`` message and
   causes) and nothing is applied. One exception is forced by the API: an object in a
   namespace that this step creates and that does not exist yet cannot be dry-run (the server
   answers 404), so such objects are dry-run right after the step's Namespace objects are
   applied, before anything else is; if they are rejected, only those new namespaces are left
   behind, and the summary says so.
4. **Apply** for real, Namespace objects first, then the rest in file order: ``PATCH`` with
   ``application/apply-patch+yaml``, field manager ``tiangong``, ``force=true`` and
   ``fieldValidation=Strict`` (the dry run too). Strict: a field the kind does not have
   (``replcas``), a value of the wrong type (``replicas: "two"``) or a duplicated field fails
   the step (400 BadRequest, reported like any rejection) instead of being dropped by the
   server with a warning and the step reported succeeded. Forcing is
   deliberate: the signed release is the source of truth for every field its manifests set,
   so a field last changed by hand (``kubectl edit``) or by another tool is taken over rather
   than blocking the release halfway through a site's rollout. Fields a manifest does not set
   keep their owners (leave ``replicas`` out to let an autoscaler own it). Each object is
   logged kubectl-style on stream ``k8s`` as created, configured or unchanged (its
   ``resourceVersion`` read before the apply compared with the one after). Every warning
   the API server sends about an object (deprecated API versions, ...) is logged as
   ``warning: <object> (<namespace>, <phase>, <file> document <n>): <text>``, listed in the
   outcome's ``details["warnings"]``, and counted in the summary. Fields that an earlier
   release applied and this one no longer sets are removed by the server (server-side apply
   with the same field manager), unless another manager also owns them.
5. **Wait** (``wait: true``) for every Deployment, StatefulSet and DaemonSet applied to finish
   rolling out (rules in :mod:`agent.executors.k8srollout`), polling at a growing interval up
   to :data:`POLL_INTERVAL_MAX_S`, until ``wait_timeout_s`` or the step's deadline.

Cancel and the step deadline are checked before every request and during waits. Failures are
outcomes, not exceptions: rejected objects, missing namespaces, kinds the server does not
serve, an unreachable server (the summary names its URL), time limits, cancel.

Deliberately not done: pruning (objects dropped from a release stay on the cluster); ``kind:
List`` expansion or templating; waiting for other kinds (Jobs, CRDs being established before
their custom resources are applied); the kubeconfig context's default namespace; retrying a
rejected apply; reading anything but the staged files.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agent.executors.base import Connection, StepContext, StepOutcome
from agent.executors.errors import StepSpecError
from agent.executors.k8sapi import (
    FIELD_MANAGER,
    K8sStatusError,
    K8sStepError,
    KubeApi,
    Resource,
    load_configuration,
)
from agent.executors.k8smanifest import ManifestObject, parse_manifest
from agent.executors.k8srollout import WAITABLE_KINDS, rollout_state
from agent.executors.undodata import write_record

__all__ = ["KubernetesExecutor"]

LOG_STREAM = "k8s"
DEFAULT_NAMESPACE = "default"
ON_FAILURE = ("stop", "continue")
MAX_MANIFEST_BYTES = 8 * 1024 * 1024  # bytes per manifest file
MAX_OBJECTS = 1000  # objects per step
POLL_INTERVAL_MIN_S = 0.5  # seconds between rollout checks, at first
POLL_INTERVAL_MAX_S = 5.0  # seconds between rollout checks, at most
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ACTIONS = ("created", "configured", "unchanged")

#: ``pause(cancel, seconds)`` waits up to ``seconds``; returns True if ``cancel`` got set.
Pause = Callable[[threading.Event, float], bool]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass
class _Item:
    """One object on its way through dry run, apply and wait."""

    obj: ManifestObject
    resource: Resource
    namespace: str  # "" when cluster-scoped
    before: dict[str, Any] | None = None  # as read before the dry run; None: did not exist
    deferred: bool = False  # in a namespace this step creates: dry-run after it exists
    action: str = "not applied"

    @property
    def ref(self) -> str:
        """kubectl's name for it: ``deployment.apps/web``."""
        group = f".{self.resource.group}" if self.resource.group else ""
        return f"{self.resource.kind.lower()}{group}/{self.obj.name}"

    @property
    def label(self) -> str:
        """``deployment.apps/web in namespace shop``."""
        return f"{self.ref} in namespace {self.namespace}" if self.namespace else self.ref

    def line(self, action: str, *notes: str) -> str:
        """A kubectl-style log line: ``deployment.apps/web created (namespace shop)``."""
        parts = ([f"namespace {self.namespace}"] if self.namespace else []) + list(notes)
        head = f"{self.ref} {action}" if action else self.ref
        return head + (f" ({', '.join(parts)})" if parts else "")

    def path(self) -> str:
        return self.resource.path(self.namespace, self.obj.name)

    def body(self) -> dict[str, Any]:
        """The object as applied: its namespace set (namespaced) or dropped (cluster-scoped)."""
        meta = {k: v for k, v in self.obj.body["metadata"].items() if k != "namespace"}
        if self.namespace:
            meta["namespace"] = self.namespace
        return {**self.obj.body, "metadata": meta}

    def origin(self, phase: str) -> dict[str, Any]:
        """Which object, from where, in which phase: the head of an error or warning record."""
        return {
            "kind": self.obj.kind,
            "namespace": self.namespace or None,
            "name": self.obj.name,
            "source": self.obj.source,
            "document": self.obj.document,
            "phase": phase,
        }

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.obj.kind,
            "api_version": self.obj.api_version,
            "namespace": self.namespace or None,
            "name": self.obj.name,
            "source": self.obj.source,
            "document": self.obj.document,
            "action": self.action,
        }


@dataclass
class _Report:
    """What a run did, for the outcome's ``details`` (filled as the run goes)."""

    server: str = ""
    items: list[_Item] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)

    def applied(self) -> list[_Item]:
        return [it for it in self.items if it.action != "not applied"]

    def details(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "field_manager": FIELD_MANAGER,
            "objects": [it.record() for it in self.items],
            "errors": self.errors,
            "warnings": self.warnings,
            "rollouts": self.rollouts,
        }


def _without_versions(obj: Mapping[str, Any] | None) -> Any:
    """The object less what changes on every write, to tell configured from unchanged."""
    if obj is None:
        return None
    meta = obj.get("metadata", {})
    meta = {k: v for k, v in meta.items() if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


def _resource_version(obj: Mapping[str, Any] | None) -> Any:
    return None if obj is None else obj.get("metadata", {}).get("resourceVersion")


class _Run:
    """One run of one k8s step: plan, dry run, apply, wait; fills ``report`` as it goes."""

    def __init__(
        self,
        ctx: StepContext,
        api: KubeApi,
        report: _Report,
        clock: Callable[[], float],
        pause: Pause,
    ) -> None:
        self.ctx = ctx
        self.api = api
        self.report = report
        self.clock = clock
        self.pause = pause

    def log(self, text: str) -> None:
        self.ctx.log.write(text, LOG_STREAM)

    def execute(self, objects: list[ManifestObject]) -> str:
        """Run the step; returns the summary of a successful run.

        Raises:
            K8sStepError: the step failed; the message says why.
        """
        items = self._survey(objects)
        self._record_undo(items)
        self._dry_run([it for it in items if not it.deferred], "")
        for it in items:
            if it.resource.is_namespace:
                self._apply(it)
        deferred = [it for it in items if it.deferred]
        if deferred:
            self._dry_run(deferred, ", ".join(sorted({it.namespace for it in deferred})))
        for it in items:
            if not it.resource.is_namespace:
                self._apply(it)
        counts = ", ".join(f"{sum(it.action == a for it in items)} {a}" for a in _ACTIONS)
        summary = f"applied {_count(len(items), 'object')} to {self.api.host}: {counts}"
        warned = {
            (w["kind"], w["namespace"], w["name"], w["message"]) for w in self.report.warnings
        }
        if warned:
            summary += f" ({_count(len(warned), 'warning')} from the API server in the step log)"
        if self.ctx.step.get("wait", False):
            summary += "; " + self._wait(items)
        return summary

    def _survey(self, objects: list[ManifestObject]) -> list[_Item]:
        """Connect, resolve every object and read it as it is now; an object in a Namespace
        the step creates is ``deferred`` (it cannot be read nor dry-run before that exists).

        Raises:
            K8sStepError: the server is unreachable, or a kind is not served.
        """
        version = self.api.request("GET", "/version").get("gitVersion", "unknown version")
        self.log(f"connected to {self.api.host} (Kubernetes {version})")
        items = self._plan(objects)
        new_namespaces: set[str] = set()
        for it in items:  # Namespaces come first, so new_namespaces is complete in time
            if it.resource.namespaced and it.namespace in new_namespaces:
                it.deferred = True
                continue
            it.before = self.api.get(it.path())
            if it.resource.is_namespace and it.before is None:
                new_namespaces.add(it.obj.name)
        return items

    def dry_run_only(self, objects: list[ManifestObject]) -> str:
        """A preflight plan's check (docs/rollouts.md, "Preflight bundles"): the server-side
        dry run (``dryRun=All``) of every object, and nothing else — no undo data, no apply,
        no wait. Returns the summary.

        Raises:
            K8sStepError: unreachable, a kind not served, or the server rejected an object.
        """
        items = self._survey(objects)
        checked = [it for it in items if not it.deferred]
        self._dry_run(checked, "")
        summary = (f"server dry run accepted {_count(len(checked), 'object')} on "
                   f"{self.api.host}")
        deferred = sorted({it.namespace for it in items if it.deferred})
        if deferred:
            summary += (f"; {_count(len(items) - len(checked), 'object')} in namespaces the "
                        f"release creates ({', '.join(deferred)}) cannot be dry-run before "
                        "those exist")
        return summary

    def _record_undo(self, items: list[_Item]) -> None:
        """Record, before anything is applied, each object as it is now (or its absence), in
        apply order: a rollback puts them back in reverse (docs/agent.md, "Undo data")."""
        if self.ctx.undo_dir is None:
            return
        doc = {"kind": "k8s", "server": self.api.host, "objects": [
            {"path": it.path(), "kind": it.obj.kind, "api_version": it.obj.api_version,
             "namespace": it.namespace or None, "name": it.obj.name, "before": it.before}
            for it in items]}  # items are in apply order (_plan)
        try:
            fresh = write_record(self.ctx.undo_dir, doc)
        except OSError as exc:
            raise K8sStepError(f"cannot record undo data in {self.ctx.undo_dir}: "
                               f"{exc.strerror or exc}; nothing was applied") from exc
        self.log(f"undo data {'recorded' if fresh else 'already recorded'}: "
                 f"{_count(len(items), 'object')} as they are before the step")

    def _plan(self, objects: list[ManifestObject]) -> list[_Item]:
        """Resolve every object; order Namespaces first, the rest as in the files.

        Raises:
            K8sStepError: a kind is not served, or an object is in the step twice.
        """
        default_ns = self.ctx.step.get("namespace", DEFAULT_NAMESPACE)
        seen: dict[tuple[str, str, str, str], ManifestObject] = {}
        items = []
        for obj in objects:
            resource = self.api.resolve(obj.api_version, obj.kind, f"manifest {obj.where}")
            namespace = ""
            if resource.namespaced:
                namespace = obj.body["metadata"].get("namespace") or default_ns
            key = (resource.group, resource.plural, namespace, obj.name)
            if key in seen:
                raise K8sStepError(
                    f"{obj.kind} {obj.name!r} is in the step twice: {seen[key].where} and "
                    f"{obj.where}"
                )
            seen[key] = obj
            items.append(_Item(obj, resource, namespace))
        items.sort(key=lambda it: not it.resource.is_namespace)  # stable: keeps file order
        self.report.items = items
        return items

    def _rejected(self, it: _Item, exc: K8sStatusError, phase: str) -> None:
        self.log(f"error: {it.line('rejected', phase, it.obj.where)}: {exc.message}")
        for cause in exc.causes:
            self.log(f"  - {cause}")
        self.report.errors.append(
            {
                **it.origin(phase),
                "code": exc.code,
                "reason": exc.reason,
                "message": exc.message,
                "causes": list(exc.causes),
            }
        )

    def _warned(self, it: _Item, texts: list[str], phase: str) -> None:
        """Log and record the API server's warnings about one request for ``it``."""
        for text in texts:
            self.log(f"warning: {it.line('', phase, it.obj.where)}: {text}")
            self.report.warnings.append({**it.origin(phase), "message": text})

    def _dry_run(self, items: list[_Item], new_namespaces: str) -> None:
        """Dry-run every item (all of them, to report every rejection at once).

        Raises:
            K8sStepError: the server rejected at least one.
        """
        rejected: list[tuple[_Item, K8sStatusError]] = []
        for it in items:
            warnings: list[str] = []
            try:
                after = self.api.apply(it.path(), it.body(), dry_run=True, warnings=warnings)
            except K8sStatusError as exc:
                self._warned(it, warnings, "server dry run")
                self._rejected(it, exc, "server dry run")
                rejected.append((it, exc))
                continue
            self._warned(it, warnings, "server dry run")
            if it.before is None:
                action = "created"
            elif _without_versions(after) == _without_versions(it.before):
                action = "unchanged"
            else:
                action = "configured"
            self.log(it.line(action, "server dry run"))
        if rejected:
            first, error = rejected[0]
            scope = f" in the new namespaces {new_namespaces}" if new_namespaces else ""
            rest = "nothing else" if new_namespaces else "nothing"
            raise K8sStepError(
                f"server dry run rejected {len(rejected)} of {_count(len(items), 'object')}"
                f"{scope}, so {rest} was applied; {first.label} ({first.obj.where}): "
                f"{error.message}"
            )

    def _apply(self, it: _Item) -> None:
        """Apply one item for real and log what it did.

        Raises:
            K8sStepError: the server rejected it (after its dry run had passed).
        """
        warnings: list[str] = []
        try:
            after = self.api.apply(it.path(), it.body(), dry_run=False, warnings=warnings)
        except K8sStatusError as exc:
            self._warned(it, warnings, "apply")
            self._rejected(it, exc, "apply")
            raise K8sStepError(
                f"the API server rejected {it.label} ({it.obj.where}) after its dry run had "
                f"passed: {exc.message}"
            ) from exc
        if it.before is None:
            it.action = "created"
        elif _resource_version(after) == _resource_version(it.before):
            it.action = "unchanged"
        else:
            it.action = "configured"
        self.log(it.line(it.action))
        self._warned(it, warnings, "apply")

    def _wait(self, items: list[_Item]) -> str:
        """Wait for every applied workload to roll out; returns the summary's last part.

        Raises:
            K8sStepError: a rollout failed or did not complete in time, or the step was
                cancelled.
        """
        pending = [
            it for it in items if it.resource.group == "apps" and it.obj.kind in WAITABLE_KINDS
        ]
        total = len(pending)
        if not pending:
            self.log("nothing to wait for: no Deployment, StatefulSet or DaemonSet applied")
            return "no rollouts to wait for"
        left = self.ctx.deadline - self.clock()
        limit = max(0.0, min(float(self.ctx.step.get("wait_timeout_s", left)), left))
        deadline = self.clock() + limit
        interval = POLL_INTERVAL_MIN_S
        last: dict[int, str] = {}
        while True:
            for it in list(pending):
                obj = self.api.get(it.path())
                if obj is None:
                    raise K8sStepError(f"{it.label} disappeared while waiting for its rollout")
                state = rollout_state(obj)
                if state.message != last.get(id(it)):
                    verb = "rolled out" if state.done else "rolling out"
                    self.log(f"{it.line(verb)}: {state.message}")
                last[id(it)] = state.message
                if state.failed:
                    self._record_rollout(it, state.message, complete=False)
                    raise K8sStepError(f"rollout of {it.label} failed: {state.message}")
                if state.done:
                    pending.remove(it)
                    self._record_rollout(it, state.message, complete=True)
            if not pending:
                return f"{_count(total, 'rollout')} complete"
            remaining = deadline - self.clock()
            if remaining <= 0:
                for it in pending:
                    self._record_rollout(it, last[id(it)], complete=False)
                more = f" (and {len(pending) - 1} more)" if len(pending) > 1 else ""
                raise K8sStepError(
                    f"rollout of {pending[0].label}{more} did not complete within "
                    f"{limit:.0f} s: {last[id(pending[0])]}"
                )
            if self.pause(self.ctx.cancel, min(interval, remaining)):
                raise K8sStepError("cancelled while waiting for rollouts")
            interval = min(interval * 2, POLL_INTERVAL_MAX_S)

    def _record_rollout(self, it: _Item, message: str, *, complete: bool) -> None:
        self.report.rollouts.append(
            {
                "kind": it.obj.kind,
                "namespace": it.namespace,
                "name": it.obj.name,
                "complete": complete,
                "message": message,
            }
        )


class KubernetesExecutor:
    """Runs ``kind: k8s`` steps; see the module docstring for what a run does.

    ``clock`` and ``pause`` are injectable so that tests of rollout waits need not sleep:
    ``pause(cancel, seconds)`` waits and returns True if ``cancel`` got set; the default is
    ``cancel.wait``. ``clock`` must be the clock of :attr:`StepContext.deadline`.
    """

    kind: ClassVar[str] = "k8s"

    def __init__(self, clock: Callable[[], float] = time.monotonic, pause: Pause | None = None):
        self._clock = clock
        self._pause: Pause = pause or (lambda event, seconds: event.wait(seconds))

    def validate(self, step: Mapping[str, Any]) -> None:
        """Check a k8s step's fields; called for every step before any step runs.

        Raises:
            StepSpecError: a field is missing or malformed; the message names the step and the
                field.
        """
        name = step.get("name")
        if not isinstance(name, str) or not name.strip():
            raise StepSpecError(f"k8s step: field 'name' must be a non-empty string, got {name!r}")

        def bad(key: str, rule: str) -> StepSpecError:
            got = repr(step.get(key))
            got = got if len(got) <= 60 else got[:57] + "..."
            return StepSpecError(f"step {name!r}: field {key!r} {rule}, got {got}")

        def positive_int(key: str) -> bool:
            value = step.get(key)
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        if step.get("kind") != self.kind:
            raise bad("kind", f"must be {self.kind!r}")
        if not positive_int("timeout_s"):
            raise bad("timeout_s", "must be a positive integer (seconds)")
        if step.get("on_failure") not in ON_FAILURE:
            raise bad("on_failure", f"must be one of {', '.join(ON_FAILURE)}")
        secrets = step.get("secrets", [])
        if not isinstance(secrets, list) or not all(isinstance(s, str) and s for s in secrets):
            raise bad("secrets", "must be a list of secret names")
        if not isinstance(step.get("connection"), str) or not step["connection"]:
            raise bad("connection", "must name a site connection of type kubernetes")
        manifests = step.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise bad("manifests", "must be a non-empty list of payload names")
        if not all(isinstance(m, str) and m for m in manifests):
            raise bad("manifests", "must hold only payload names (non-empty strings)")
        if len(set(manifests)) != len(manifests):
            raise bad("manifests", "must not name a payload twice")
        namespace = step.get("namespace", DEFAULT_NAMESPACE)
        if not isinstance(namespace, str) or not _DNS1123_LABEL.fullmatch(namespace):
            raise bad("namespace", "must be a namespace name (a lowercase RFC 1123 label)")
        if not isinstance(step.get("wait", False), bool):
            raise bad("wait", "must be true or false")
        if "wait_timeout_s" in step and not positive_int("wait_timeout_s"):
            raise bad("wait_timeout_s", "must be a positive integer (seconds)")

    def _with_run(self, ctx: StepContext, report: _Report,
                  work: Callable[[_Run, list[ManifestObject]], str]) -> str:
        """Load the step's manifests, connect, and do ``work`` (a :class:`_Run` method).

        Raises:
            StepSpecError, K8sStepError: as ``work`` and the loading do.
        """
        from kubernetes.client import ApiClient  # imported by the first k8s step (big)

        objects = _load(ctx)
        configuration = load_configuration(_connection(ctx), ctx.workdir)
        report.server = configuration.host
        with ApiClient(configuration) as client:
            api = KubeApi(client, ctx.deadline, ctx.cancel, self._clock)
            return work(_Run(ctx, api, report, self._clock, self._pause), objects)

    def dry_run(self, ctx: StepContext) -> StepOutcome:
        """Only the server-side dry run of the step's manifests (a preflight plan's check):
        nothing is created, changed or recorded. Call only with a validated step."""
        report = _Report()
        try:
            summary = self._with_run(ctx, report, _Run.dry_run_only)
        except (StepSpecError, K8sStepError) as exc:
            ctx.log.write(f"error: {exc}", LOG_STREAM)
            return StepOutcome("failed", str(exc), details=report.details())
        return StepOutcome("succeeded", summary, details=report.details())

    def run(self, ctx: StepContext) -> StepOutcome:
        """Dry-run, apply and (with ``wait``) wait for the step's manifests.

        Call only with a validated step. Failures of the step are returned as outcomes with
        ``status="failed"``; ``details`` lists every object with its action, every rejection
        and every rollout waited for.
        """
        report = _Report()
        try:
            summary = self._with_run(ctx, report, _Run.execute)
        except (StepSpecError, K8sStepError) as exc:
            summary = str(exc)
            applied = report.applied()
            if applied:
                verb = "was" if len(applied) == 1 else "were"
                summary += (
                    f" ({len(applied)} of {_count(len(report.items), 'object')} {verb} applied)"
                )
            ctx.log.write(f"error: {summary}", LOG_STREAM)
            return StepOutcome("failed", summary, details=report.details())
        return StepOutcome("succeeded", summary, details=report.details())


def _load(ctx: StepContext) -> list[ManifestObject]:
    """Read and parse the step's staged manifests.

    Raises:
        StepSpecError: a manifest is missing, too large, not YAML or holds a malformed object.
    """
    objects: list[ManifestObject] = []
    for name in ctx.step["manifests"]:
        path = ctx.files.get(name)
        if path is None:
            raise StepSpecError(f"manifest {name}: not among the staged payloads of the bundle")
        try:
            with Path(path).open("rb") as fh:
                data = fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise StepSpecError(f"manifest {name}: cannot read the staged file: {exc}") from exc
        if len(data) > MAX_MANIFEST_BYTES:
            raise StepSpecError(f"manifest {name}: larger than {MAX_MANIFEST_BYTES} bytes")
        objects.extend(parse_manifest(name, data))
        if len(objects) > MAX_OBJECTS:
            raise StepSpecError(f"step {ctx.step['name']!r}: more than {MAX_OBJECTS} objects")
    if not objects:
        raise StepSpecError(f"step {ctx.step['name']!r}: its manifests hold no objects")
    return objects


def _connection(ctx: StepContext) -> Connection:
    """The step's connection, which must be of type kubernetes.

    Raises:
        StepSpecError: no connection, or one of another type.
    """
    connection = ctx.connection
    if connection is None or connection.type != "kubernetes":
        got = "none" if connection is None else f"{connection.name!r} of type {connection.type}"
        raise StepSpecError(
            f"step {ctx.step['name']!r}: needs a connection of type kubernetes, got {got}"
        )
    return connection
