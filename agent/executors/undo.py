"""The ``undo`` step: reverse one step of an earlier bundle from the undo data this agent
recorded before that step changed anything (docs/agent.md, "Undo data"; docs/rollouts.md,
"Rollback").

A rollback bundle built by the hub holds one ``undo`` step per ``k8s`` and ``file`` step of the
bundle it undoes (naming that bundle's id and the step's number), in reverse order; SQL
``down`` and shell ``rollback`` scripts travel as ordinary ``sql`` and ``shell`` steps.

* ``file``: the previous file is put back (bytes, mode, owner), or the file the step created
  is removed.
* ``k8s``: in reverse apply order, each object the step applied over is put back as recorded
  (``PUT`` of the recorded object without its server-set metadata and status, or ``POST`` if
  it has been deleted since), and each object the step created is deleted (a Namespace it
  created with everything in it).
* No record: the step never reached the point of recording here, so it changed nothing;
  the undo step succeeds and says so.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from agent.executors import get_executor
from agent.executors.base import StepContext, StepOutcome
from agent.executors.errors import StepSpecError
from agent.executors.file import FileStepError, SchemaValidated, restore_file
from agent.executors.k8sapi import K8sStatusError, K8sStepError, KubeApi, load_configuration
from agent.executors.undodata import read_record, step_undo_dir

__all__ = ["UndoExecutor", "restorable"]

#: Metadata the API server sets; a restored object is sent without it.
_SERVER_SET = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields",
               "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")


def restorable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as recorded, less its status and the metadata the server sets."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in _SERVER_SET}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


_SCRIPT_KEYS = {"sql": ("engine", "connection", "script"),
                "shell": ("script", "interpreter", "env", "args", "secrets_via")}


def _run_script(ctx: StepContext, what: str, kind: str, recorded: object) -> StepOutcome:
    """Run the sql ``down`` or shell ``rollback`` script the undo step carries, with the
    executor of that kind, as a step of that kind."""
    needed = "engine" if kind == "sql" else "interpreter"
    script = "down" if kind == "sql" else "rollback"
    if recorded is None:
        summary = (f"not undone: {what} ran here and cannot be undone (a {kind} step without "
                   f"a {script} script)")
        ctx.log.write(summary, "undo")
        return StepOutcome("failed", summary, details={"undone": False, "kind": kind})
    if needed not in ctx.step:
        return StepOutcome("failed", f"{what} ran here, but this undo step carries no "
                           f"{script} script to undo it")
    step: dict[str, Any] = {key: ctx.step[key] for key in ("name", "timeout_s", "on_failure",
                                                            "secrets")}
    step["kind"] = kind
    step.update({key: ctx.step[key] for key in _SCRIPT_KEYS[kind] if key in ctx.step})
    if kind == "shell":
        step.setdefault("env", {})
        step.setdefault("args", [])
        step.setdefault("secrets_via", "env")
    executor = get_executor(kind)
    executor.validate(step)
    ctx.log.write(f"running {step['script']} to undo {what}", "undo")
    outcome = executor.run(dataclasses.replace(ctx, step=step, undo_dir=None))
    return dataclasses.replace(outcome, summary=f"{what}: {step['script']} {outcome.status}: "
                               f"{outcome.summary}", details={**outcome.details,
                                                             "undone": outcome.status ==
                                                             "succeeded", "kind": kind})


class UndoExecutor(SchemaValidated):
    """Runs ``undo`` steps."""

    kind: ClassVar[str] = "undo"

    def run(self, ctx: StepContext) -> StepOutcome:
        bundle, number = str(ctx.step["bundle"]), int(ctx.step["step"])
        what = f"step {number} of bundle {bundle}"
        if ctx.undo_dir is None:
            return StepOutcome("failed", "this agent keeps no undo data; nothing was undone")
        undo_dir = step_undo_dir(ctx.undo_dir.parent.parent, bundle, number)
        try:
            record = read_record(undo_dir)
        except ValueError as exc:
            return StepOutcome("failed", f"{what}: {exc}; nothing was undone")
        if record is None:
            summary = (f"nothing to undo: {what} recorded no undo data on this agent, so it "
                       "changed nothing here")
            ctx.log.write(summary, "undo")
            return StepOutcome("succeeded", summary, details={"undone": False})
        try:
            if record["kind"] == "file":
                summary = restore_file(undo_dir, ctx.log)
            elif record["kind"] == "k8s":
                summary = self._restore_k8s(ctx, record)
            elif record["kind"] in ("sql", "shell"):
                return _run_script(ctx, what, str(record["kind"]), record.get("script"))
            else:
                return StepOutcome("failed", f"{what}: undo data of kind {record['kind']!r} "
                                   "is not known to this agent")
        except (FileStepError, K8sStepError, StepSpecError) as exc:
            ctx.log.write(f"error: {exc}", "undo")
            return StepOutcome("failed", f"{what} was not (fully) undone: {exc}")
        ctx.log.write(summary, "undo")
        return StepOutcome("succeeded", f"{what} undone: {summary}",
                           details={"undone": True, "kind": record["kind"]})

    @staticmethod
    def _restore_k8s(ctx: StepContext, record: Mapping[str, Any]) -> str:
        from kubernetes.client import ApiClient  # imported by the first k8s undo (big)

        connection = ctx.connection
        if connection is None or connection.type != "kubernetes":
            raise StepSpecError("undoing a k8s step needs a connection of type kubernetes")
        objects = list(record.get("objects") or [])
        restored = deleted = 0
        with ApiClient(load_configuration(connection, ctx.workdir)) as client:
            api = KubeApi(client, ctx.deadline, ctx.cancel, time.monotonic)
            for obj in reversed(objects):
                path, before = str(obj["path"]), obj.get("before")
                label = f"{obj['kind']} {obj['name']}" + (
                    f" in namespace {obj['namespace']}" if obj.get("namespace") else "")
                try:
                    if before is None:
                        try:
                            api.request("DELETE", path)
                        except K8sStatusError as exc:
                            if exc.code != 404:
                                raise
                        deleted += 1
                        ctx.log.write(f"{label} deleted (the step had created it)", "k8s")
                        continue
                    body = restorable(before)
                    if api.get(path) is None:
                        api.request("POST", path.rsplit("/", 1)[0], body=body)
                    else:
                        api.request("PUT", path, body=body)
                    restored += 1
                    ctx.log.write(f"{label} restored to its state before the step", "k8s")
                except K8sStatusError as exc:
                    raise K8sStepError(f"{label}: the API server refused: {exc.message} "
                                       f"({restored} restored, {deleted} deleted before "
                                       "it)") from exc
        return f"{restored} object(s) restored, {deleted} deleted on {api.host}"
