"""Rollout rules for Deployments, StatefulSets and DaemonSets, as a table."""

from __future__ import annotations

from typing import Any

import pytest

from agent.executors.k8srollout import RolloutState, rollout_state


def obj(kind: str, spec: dict[str, Any], status: dict[str, Any], generation: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web",
            "generation": generation}, "spec": spec, "status": status}  # fmt: skip


def dep(status: dict[str, Any], replicas: int | None = 3, generation: int = 2) -> dict:
    spec = {} if replicas is None else {"replicas": replicas}
    return obj("Deployment", spec, status, generation)


DONE3 = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}
DEADLINE = {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "timed out"}
ROLLING = {"type": "RollingUpdate"}

CASES = [
    # Deployment
    (dep({}), RolloutState(False, "waiting for the controller to observe generation 2")),
    (dep(DONE3 | {"observedGeneration": 1}),
     RolloutState(False, "waiting for the controller to observe generation 2")),
    (dep(DONE3 | {"updatedReplicas": 1}), RolloutState(False, "1 of 3 replicas updated")),
    (dep(DONE3 | {"replicas": 4}), RolloutState(False, "1 old replicas pending termination")),
    (dep(DONE3 | {"availableReplicas": 2}),
     RolloutState(False, "2 of 3 updated replicas available")),
    (dep(DONE3), RolloutState(True, "3 of 3 replicas updated and available")),
    (dep(DONE3 | {"observedGeneration": 3}), RolloutState(True, "3 of 3 replicas updated and "
                                                                "available")),
    (dep({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
         replicas=None), RolloutState(True, "1 of 1 replicas updated and available")),
    (dep(DONE3 | {"updatedReplicas": 1, "conditions": [DEADLINE]}),
     RolloutState(False, "exceeded its progress deadline: timed out", failed=True)),
    (dep({"observedGeneration": 2, "updatedReplicas": "3"}), RolloutState(False, "0 of 3 "
                                                                          "replicas updated")),
    # StatefulSet
    (obj("StatefulSet", {"replicas": 2}, {"observedGeneration": 2, "readyReplicas": 1}),
     RolloutState(False, "1 of 2 pods ready")),
    (obj("StatefulSet", {"replicas": 2}, {"observedGeneration": 2, "readyReplicas": 2,
                                          "updatedReplicas": 1, "currentRevision": "web-1",
                                          "updateRevision": "web-2"}),
     RolloutState(False, "1 of 2 pods at revision web-2")),
    (obj("StatefulSet", {"replicas": 2}, {"observedGeneration": 2, "readyReplicas": 2,
                                          "currentRevision": "web-2", "updateRevision": "web-2"}),
     RolloutState(True, "2 pods ready at revision web-2")),
    (obj("StatefulSet", {"replicas": 4, "updateStrategy": ROLLING | {"rollingUpdate":
                                                                      {"partition": 2}}},
         {"observedGeneration": 2, "readyReplicas": 4, "updatedReplicas": 1}),
     RolloutState(False, "1 of 2 pods updated (partition 2)")),
    (obj("StatefulSet", {"replicas": 4, "updateStrategy": ROLLING | {"rollingUpdate":
                                                                      {"partition": 2}}},
         {"observedGeneration": 2, "readyReplicas": 4, "updatedReplicas": 2}),
     RolloutState(True, "2 of 2 pods updated (partition 2)")),
    (obj("StatefulSet", {"updateStrategy": {"type": "OnDelete"}}, {}),
     RolloutState(True, "update strategy OnDelete: nothing to wait for")),
    # DaemonSet
    (obj("DaemonSet", {}, {"observedGeneration": 1, "desiredNumberScheduled": 3}),
     RolloutState(False, "waiting for the controller to observe generation 2")),
    (obj("DaemonSet", {}, {"observedGeneration": 2, "desiredNumberScheduled": 3,
                           "updatedNumberScheduled": 2}),
     RolloutState(False, "2 of 3 pods updated")),
    (obj("DaemonSet", {}, {"observedGeneration": 2, "desiredNumberScheduled": 3,
                           "updatedNumberScheduled": 3, "numberAvailable": 1}),
     RolloutState(False, "1 of 3 updated pods available")),
    (obj("DaemonSet", {"updateStrategy": ROLLING}, {"observedGeneration": 2,
         "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}),
     RolloutState(True, "3 pods updated and available")),
    (obj("DaemonSet", {"updateStrategy": {"type": "OnDelete"}}, {}),
     RolloutState(True, "update strategy OnDelete: nothing to wait for")),
]  # fmt: skip


@pytest.mark.parametrize(("workload", "expected"), CASES)
def test_rollout_state(workload: dict[str, Any], expected: RolloutState) -> None:
    assert rollout_state(workload) == expected


def test_other_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="not Job"):
        rollout_state({"kind": "Job", "metadata": {"generation": 1}})
