"""Has a Deployment, StatefulSet or DaemonSet finished rolling out? Judged from the object alone.

The rules are the ones ``kubectl rollout status`` applies, written afresh here:

* nothing counts until the controller has observed the object's current ``generation``
  (``status.observedGeneration``);
* Deployment: a ``Progressing`` condition with reason ``ProgressDeadlineExceeded`` is a failure;
  otherwise done when every desired replica is updated, no old replica is left and every
  updated replica is available;
* StatefulSet: every desired replica ready; then, with a ``rollingUpdate`` partition, the
  replicas above the partition updated, otherwise ``currentRevision == updateRevision``;
* DaemonSet: every scheduled pod updated and available.

StatefulSets and DaemonSets with the ``OnDelete`` update strategy are reported done at once
(their pods change only when someone deletes them; there is no rollout to wait for).

This module does no I/O: it takes the object as the API server returned it (a dict) and returns
a :class:`RolloutState`. It does not look at pods, ReplicaSets or events, and judges no other
kinds; polling and time limits are the executor's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["WAITABLE_KINDS", "RolloutState", "rollout_state"]

#: apps/v1 kinds whose rollout can be waited for.
WAITABLE_KINDS: tuple[str, ...] = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout stands.

    ``done``: complete, stop waiting. ``failed``: it will not complete by waiting longer.
    ``message``: one line for the operator, e.g. ``"1 of 2 replicas updated"``.
    """

    done: bool
    message: str
    failed: bool = False


def _int(mapping: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = mapping.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _map(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, Mapping) else {}


def rollout_state(obj: Mapping[str, Any]) -> RolloutState:
    """Judge the rollout of one apps/v1 Deployment, StatefulSet or DaemonSet.

    Raises:
        ValueError: ``obj`` is of another kind.
    """
    kind = obj.get("kind")
    spec, status = _map(obj, "spec"), _map(obj, "status")
    generation = _int(_map(obj, "metadata"), "generation")
    observed = _int(status, "observedGeneration")
    if kind not in WAITABLE_KINDS:
        raise ValueError(f"rollout status is defined for {', '.join(WAITABLE_KINDS)}, not {kind}")
    strategy = _map(spec, "updateStrategy")
    if kind != "Deployment" and strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return RolloutState(True, f"update strategy {strategy.get('type')}: nothing to wait for")
    if observed == 0 or generation > observed:
        return RolloutState(False, f"waiting for the controller to observe generation {generation}")
    if kind == "Deployment":
        return _deployment(spec, status)
    if kind == "StatefulSet":
        return _statefulset(spec, status, strategy)
    return _daemonset(status)


def _deployment(spec: Mapping[str, Any], status: Mapping[str, Any]) -> RolloutState:
    for condition in status.get("conditions") or ():
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "Progressing"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            detail = condition.get("message") or "no progress"
            return RolloutState(False, f"exceeded its progress deadline: {detail}", failed=True)
    desired = _int(spec, "replicas", 1)
    updated = _int(status, "updatedReplicas")
    if updated < desired:
        return RolloutState(False, f"{updated} of {desired} replicas updated")
    old = _int(status, "replicas") - updated
    if old > 0:
        return RolloutState(False, f"{old} old replicas pending termination")
    available = _int(status, "availableReplicas")
    if available < updated:
        return RolloutState(False, f"{available} of {updated} updated replicas available")
    return RolloutState(True, f"{updated} of {desired} replicas updated and available")


def _statefulset(
    spec: Mapping[str, Any], status: Mapping[str, Any], strategy: Mapping[str, Any]
) -> RolloutState:
    desired = _int(spec, "replicas", 1)
    ready = _int(status, "readyReplicas")
    if ready < desired:
        return RolloutState(False, f"{ready} of {desired} pods ready")
    updated = _int(status, "updatedReplicas")
    rolling = strategy.get("rollingUpdate")
    if isinstance(rolling, Mapping):
        partition = _int(rolling, "partition")
        wanted = max(desired - partition, 0)
        if updated < wanted:
            return RolloutState(
                False, f"{updated} of {wanted} pods updated (partition {partition})"
            )
        return RolloutState(True, f"{updated} of {wanted} pods updated (partition {partition})")
    revision = status.get("updateRevision")
    if revision != status.get("currentRevision"):
        return RolloutState(False, f"{updated} of {desired} pods at revision {revision}")
    return RolloutState(True, f"{desired} pods ready at revision {revision}")


def _daemonset(status: Mapping[str, Any]) -> RolloutState:
    desired = _int(status, "desiredNumberScheduled")
    updated = _int(status, "updatedNumberScheduled")
    if updated < desired:
        return RolloutState(False, f"{updated} of {desired} pods updated")
    available = _int(status, "numberAvailable")
    if available < desired:
        return RolloutState(False, f"{available} of {desired} updated pods available")
    return RolloutState(True, f"{desired} pods updated and available")
