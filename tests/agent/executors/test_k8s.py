"""KubernetesExecutor against FakeKubeAPI, through the real ``kubernetes`` client over loopback.

Rollouts are driven by hooks in the fake (the test plays the controller when the executor reads
a workload); the rollout-timeout test uses an injected clock, so nothing here sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.executors import get_executor
from agent.executors.base import Connection, StepContext, StepLog, StepOutcome
from agent.executors.errors import StepSpecError
from agent.executors.k8s import KubernetesExecutor
from tests.fakekube.fake_kube_api import FakeKubeAPI, RecordedRequest
from tests.fakekube.fixtures import FakeClock, closed_port, deployment, workload

NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "app-config"},
    "data": {"mode": "live"},
}
CLUSTERROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "shop-reader"},
    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
}


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def kubeconfig(tmp_path: Path, fake: FakeKubeAPI) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


class Harness:
    """Builds StepContexts the way the agent would: staged files, a workdir, a StepLog."""

    def __init__(self, tmp_path: Path, kubeconfig: Path) -> None:
        self.tmp_path = tmp_path
        self.connection = Connection("cluster", "kubernetes", {"kubeconfig": str(kubeconfig)})
        self.files: dict[str, Path] = {}
        self.log = StepLog()
        self.cancel = threading.Event()

    def stage(self, name: str, *docs: Any, text: str | None = None) -> str:
        path = self.tmp_path / "staging" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text is not None else yaml.safe_dump_all(docs), encoding="utf-8")
        self.files[name] = path
        return name

    def step(self, manifests: list[str], **fields: Any) -> dict[str, Any]:
        step = {
            "name": "deploy-shop",
            "kind": "k8s",
            "timeout_s": 60,
            "on_failure": "stop",
            "connection": "cluster",
            "manifests": manifests,
        } | fields
        KubernetesExecutor().validate(step)
        return step

    def run(
        self,
        step: dict[str, Any],
        executor: KubernetesExecutor | None = None,
        deadline: float | None = None,
    ) -> StepOutcome:
        self.log = StepLog()
        workdir = self.tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        if deadline is None:
            deadline = time.monotonic() + step["timeout_s"]
        ctx = StepContext(
            bundle_id="shop-1.0.0",
            release={"product": "shop", "version": "1.0.0"},
            index=0,
            step=step,
            files=self.files,
            workdir=workdir,
            connection=self.connection,
            secrets={},
            log=self.log,
            deadline=deadline,
            cancel=self.cancel,
        )
        return (executor or KubernetesExecutor()).run(ctx)

    def lines(self) -> list[str]:
        return [line.text for line in self.log.lines() if line.stream == "k8s"]


@pytest.fixture
def harness(tmp_path: Path, kubeconfig: Path) -> Harness:
    return Harness(tmp_path, kubeconfig)


def actions(outcome: StepOutcome) -> dict[str, str]:
    return {f"{o['kind']}/{o['name']}": o["action"] for o in outcome.details["objects"]}


def after_real_apply(
    fake: FakeKubeAPI, path_suffix: str, then: Callable[[], None]
) -> Callable[[RecordedRequest], None]:
    """A hook for ``fake.on_request``: on the first GET of ``path_suffix`` after a real apply
    of it, call ``then`` (the test playing the workload's controller)."""
    fired = threading.Event()

    def hook(request: RecordedRequest) -> None:
        if request.method != "GET" or not request.path.endswith(path_suffix) or fired.is_set():
            return
        if any(r.path.endswith(path_suffix) for r in fake.applies(dry_run=False)):
            fired.set()
            then()

    return hook


# -- applying ----------------------------------------------------------------------------------


def test_apply_creates_objects_after_a_dry_run_of_each(fake: FakeKubeAPI, harness: Harness) -> None:
    step = harness.step([harness.stage("app.yaml", CONFIGMAP, deployment("web"))])

    outcome = harness.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary == (
        f"applied 2 objects to {fake.url}: 2 created, 0 configured, 0 unchanged"
    )
    assert actions(outcome) == {"ConfigMap/app-config": "created", "Deployment/web": "created"}
    stored = fake.get_object("Deployment", "default", "web")
    assert stored is not None
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert fake.get_object("ConfigMap", "default", "app-config")["data"] == {"mode": "live"}
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert [r.dry_run for r in patches] == [True, True, False, False]
    for request in patches:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == ("tiangong",)
        assert request.query["force"] == ("true",)
    assert harness.lines()[1:] == [
        "configmap/app-config created (namespace default, server dry run)",
        "deployment.apps/web created (namespace default, server dry run)",
        "configmap/app-config created (namespace default)",
        "deployment.apps/web created (namespace default)",
    ]


def test_reapply_changes_nothing(fake: FakeKubeAPI, harness: Harness) -> None:
    step = harness.step([harness.stage("app.yaml", CONFIGMAP, deployment("web"))])
    assert harness.run(step).status == "succeeded"
    first = fake.get_object("Deployment", "default", "web")

    outcome = harness.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.endswith("0 created, 0 configured, 2 unchanged")
    assert set(actions(outcome).values()) == {"unchanged"}
    again = fake.get_object("Deployment", "default", "web")
    assert again is not None and first is not None
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == first["metadata"]["generation"] == 1
    assert "deployment.apps/web unchanged (namespace default, server dry run)" in harness.lines()
    assert "deployment.apps/web unchanged (namespace default)" in harness.lines()


def test_changed_spec_is_configured(fake: FakeKubeAPI, harness: Harness) -> None:
    harness.stage("app.yaml", deployment("web"))
    assert harness.run(harness.step(["app.yaml"])).status == "succeeded"
    harness.stage("app.yaml", deployment("web", image="nginx:1.27"))

    outcome = harness.run(harness.step(["app.yaml"]))

    assert outcome.status == "succeeded", outcome.summary
    assert actions(outcome) == {"Deployment/web": "configured"}
    stored = fake.get_object("Deployment", "default", "web")
    assert stored is not None and stored["metadata"]["generation"] == 2
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert "deployment.apps/web configured (namespace default)" in harness.lines()


def test_multi_document_namespace_first_then_file_order(
    fake: FakeKubeAPI, harness: Harness
) -> None:
    # The Namespace comes last in the file and the Deployment has no namespace of its own:
    # the step's namespace applies, and the Namespace is applied before anything in it.
    text = "---\n" + yaml.safe_dump_all([deployment("web"), CLUSTERROLE]) + "---\n---\n"
    text += yaml.safe_dump(NAMESPACE)
    step = harness.step([harness.stage("shop.yaml", text=text)], namespace="shop")

    outcome = harness.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert [(o["kind"], o["namespace"], o["document"]) for o in outcome.details["objects"]] == [
        ("Namespace", None, 4),  # the empty third document counts
        ("Deployment", "shop", 1),
        ("ClusterRole", None, 2),
    ]
    assert fake.get_object("Deployment", "shop", "web") is not None
    assert fake.get_object("ClusterRole", None, "shop-reader") is not None
    patches = [(r.path, r.dry_run) for r in fake.requests if r.method == "PATCH"]
    assert patches == [
        ("/api/v1/namespaces/shop", True),
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles/shop-reader", True),
        ("/api/v1/namespaces/shop", False),
        # shop did not exist: its contents could only be dry-run once it did
        ("/apis/apps/v1/namespaces/shop/deployments/web", True),
        ("/apis/apps/v1/namespaces/shop/deployments/web", False),
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles/shop-reader", False),
    ]
    assert "clusterrole.rbac.authorization.k8s.io/shop-reader created" in harness.lines()


def test_object_in_an_existing_namespace_is_dry_run_before_anything_is_applied(
    fake: FakeKubeAPI, harness: Harness
) -> None:
    step = harness.step(
        [harness.stage("shop.yaml", NAMESPACE, deployment("web"))], namespace="shop"
    )
    assert harness.run(step).status == "succeeded"
    before = len(fake.requests)

    assert harness.run(step).status == "succeeded"

    patches = [r.dry_run for r in fake.requests[before:] if r.method == "PATCH"]
    assert patches == [True, True, False, False]


# -- rejections: nothing applied -------------------------------------------------------------


def without_selector(obj: dict[str, Any]) -> dict[str, Any]:
    del obj["spec"]["selector"]
    return obj


INVALID = [
    pytest.param(
        deployment("web", image=None),
        'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value',
        ["spec.template.spec.containers[0].image: Required value"],
        id="container-without-image",
    ),
    pytest.param(
        deployment("web", selector={"app": "other"}),
        'Deployment.apps "web" is invalid: spec.template.metadata.labels: Invalid value',
        [
            'spec.template.metadata.labels: Invalid value: {"app": "web"}: `selector` does not '
            "match template `labels`"
        ],
        id="selector-does-not-match-template",
    ),
    pytest.param(
        without_selector(deployment("web")),
        'Deployment.apps "web" is invalid: spec.selector: Required value',
        ["spec.selector: Required value"],
        id="no-selector",
    ),
    pytest.param(
        CONFIGMAP | {"metadata": {"name": "App_Config"}},
        'ConfigMap "App_Config" is invalid: metadata.name: Invalid value: "App_Config"',
        [],
        id="name-not-dns-1123",
    ),
]


@pytest.mark.parametrize(("bad", "message", "causes"), INVALID)
def test_invalid_object_fails_the_dry_run_and_nothing_is_applied(
    fake: FakeKubeAPI, harness: Harness, bad: dict[str, Any], message: str, causes: list[str]
) -> None:
    harness.stage("good.yaml", CLUSTERROLE, deployment("api"))
    harness.stage("bad.yaml", bad)
    step = harness.step(["good.yaml", "bad.yaml"])
    objects_before = fake.get_object("Namespace", None, "default")

    outcome = harness.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.startswith("server dry run rejected 1 of 3 objects, so nothing was ")
    assert "(bad.yaml document 1): " + message in outcome.summary
    assert fake.applies(dry_run=False) == []
    assert len(fake.applies(dry_run=True)) == 3  # every object was tried
    assert fake.get_object("ClusterRole", None, "shop-reader") is None
    assert fake.get_object("Deployment", "default", "api") is None
    assert fake.get_object("Namespace", None, "default") == objects_before
    (error,) = outcome.details["errors"]
    assert (error["code"], error["reason"], error["source"]) == (422, "Invalid", "bad.yaml")
    assert error["phase"] == "server dry run"
    for cause in causes:
        assert cause in error["causes"]
        assert f"  - {cause}" in harness.lines()
    assert set(actions(outcome).values()) == {"not applied"}


def test_namespace_that_does_not_exist_is_reported(fake: FakeKubeAPI, harness: Harness) -> None:
    cm = CONFIGMAP | {"metadata": {"name": "app-config", "namespace": "nowhere"}}
    step = harness.step([harness.stage("app.yaml", CLUSTERROLE, cm)])

    outcome = harness.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.endswith('(app.yaml document 2): namespaces "nowhere" not found')
    assert outcome.details["errors"][0]["code"] == 404
    assert fake.applies(dry_run=False) == []


def test_rejected_contents_of_a_new_namespace_leave_only_the_namespace(
    fake: FakeKubeAPI, harness: Harness
) -> None:
    bad = deployment("web", namespace="shop", image=None)
    step = harness.step([harness.stage("shop.yaml", NAMESPACE, bad, CONFIGMAP)])

    outcome = harness.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        "server dry run rejected 1 of 1 object in the new namespaces shop, so nothing else "
        "was applied; deployment.apps/web in namespace shop (shop.yaml document 2): "
    )
    assert outcome.summary.endswith("(1 of 3 objects was applied)")
    assert [r.path for r in fake.applies(dry_run=False)] == ["/api/v1/namespaces/shop"]
    assert fake.get_object("ConfigMap", "default", "app-config") is None
    assert actions(outcome)["Namespace/shop"] == "created"


@pytest.mark.parametrize(
    ("doc", "summary"),
    [
        (
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
            "manifest app.yaml document 2: apiVersion example.com/v1 is not served by ",
        ),
        (
            {"apiVersion": "apps/v1", "kind": "Widget", "metadata": {"name": "w"}},
            "manifest app.yaml document 2: kind Widget is not served in apps/v1 by ",
        ),
    ],
)
def test_kind_the_server_does_not_serve(
    fake: FakeKubeAPI, harness: Harness, doc: dict[str, Any], summary: str
) -> None:
    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP, doc)]))

    assert outcome.status == "failed"
    assert outcome.summary == summary + fake.url
    assert [r for r in fake.requests if r.method == "PATCH"] == []


def test_object_named_twice_fails_before_anything_is_sent(
    fake: FakeKubeAPI, harness: Harness
) -> None:
    harness.stage("a.yaml", CONFIGMAP)
    harness.stage("b.yaml", CLUSTERROLE, CONFIGMAP)

    outcome = harness.run(harness.step(["a.yaml", "b.yaml"]))

    assert outcome.status == "failed"
    assert outcome.summary == (
        "ConfigMap 'app-config' is in the step twice: a.yaml document 1 and b.yaml document 2"
    )
    assert [r for r in fake.requests if r.method == "PATCH"] == []


# -- malformed manifests: the API server is never contacted ----------------------------------

MALFORMED = [
    pytest.param(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nmetadata: {name: [x\n",
        "manifest bad.yaml: invalid YAML in document 2 at line 6, column 1: expected ',' or ']'",
        id="syntax",
    ),
    pytest.param(
        "- just\n- a list\n",
        "manifest bad.yaml document 1: is a list, not a mapping",
        id="not-a-mapping",
    ),
    pytest.param(
        "---\n---\napiVersion: v1\nmetadata: {name: x}\n",
        "manifest bad.yaml document 2: needs apiVersion and kind (non-empty strings)",
        id="no-kind",
    ),
    pytest.param(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: a}\n",
        "manifest bad.yaml document 1: needs metadata.name (a string)",
        id="no-name",
    ),
    pytest.param(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: [a]}\n",
        "manifest bad.yaml document 1: has a metadata.namespace that is not a string",
        id="namespace-not-a-string",
    ),
    pytest.param(
        "# nothing here\n---\n", "step 'deploy-shop': its manifests hold no objects", id="empty"
    ),
]


@pytest.mark.parametrize(("text", "summary"), MALFORMED)
def test_malformed_manifest_fails_without_contacting_the_server(
    fake: FakeKubeAPI, harness: Harness, text: str, summary: str
) -> None:
    step = harness.step([harness.stage("bad.yaml", text=text)])

    outcome = harness.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(summary)
    assert fake.requests == []
    assert harness.lines() == [f"error: {outcome.summary}"]


# -- connection trouble ----------------------------------------------------------------------


def test_unreachable_api_server_is_a_clear_failure(tmp_path: Path) -> None:
    port = closed_port()
    server = f"http://127.0.0.1:{port}"
    kubeconfig = FakeKubeAPI().write_kubeconfig(tmp_path / "kubeconfig", server=server)
    harness = Harness(tmp_path, kubeconfig)

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary == (
        f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}: connection refused"
    )
    assert outcome.details["server"] == f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("params", "summary"),
    [
        (
            {"kubeconfig": "/nonexistent/kubeconfig"},
            "connection 'cluster': cannot load /nonexistent/kubeconfig: ",
        ),
        ({}, "connection 'cluster': no kubeconfig and not in_cluster"),
    ],
)
def test_kubeconfig_that_cannot_be_loaded(
    harness: Harness, params: dict[str, Any], summary: str
) -> None:
    harness.connection = Connection("cluster", "kubernetes", params)

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary.startswith(summary)


def test_unknown_kubeconfig_context(harness: Harness, kubeconfig: Path) -> None:
    params = {"kubeconfig": str(kubeconfig), "context": "elsewhere"}
    harness.connection = Connection("cluster", "kubernetes", params)

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary.startswith(f"connection 'cluster': cannot load {kubeconfig}: ")
    assert "elsewhere" in outcome.summary


def test_connection_of_another_type(fake: FakeKubeAPI, harness: Harness) -> None:
    harness.connection = Connection("db", "postgres", {"dsn": "postgresql://x@h/db"})

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary == (
        "step 'deploy-shop': needs a connection of type kubernetes, got 'db' of type postgres"
    )
    assert fake.requests == []


def test_cancelled_before_start_sends_nothing(fake: FakeKubeAPI, harness: Harness) -> None:
    harness.cancel.set()

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert (outcome.status, outcome.summary) == ("failed", "cancelled")
    assert fake.requests == []


def test_step_out_of_time_sends_nothing(fake: FakeKubeAPI, harness: Harness) -> None:
    step = harness.step([harness.stage("app.yaml", CONFIGMAP)])

    outcome = harness.run(step, deadline=time.monotonic() - 1)

    assert (outcome.status, outcome.summary) == ("failed", "the step's time limit ran out")
    assert fake.requests == []


# -- rollout wait ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural"),
    [("Deployment", "deployments"), ("StatefulSet", "statefulsets"), ("DaemonSet", "daemonsets")],
)
def test_wait_succeeds_when_the_rollout_completes(
    fake: FakeKubeAPI, harness: Harness, kind: str, plural: str
) -> None:
    complete = lambda: fake.complete_rollout(kind, "default", "web")  # noqa: E731
    fake.on_request = after_real_apply(fake, f"/{plural}/web", complete)
    step = harness.step([harness.stage("app.yaml", workload(kind, "web"))], wait=True)

    outcome = harness.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.endswith("; 1 rollout complete")
    (rollout,) = outcome.details["rollouts"]
    assert (rollout["kind"], rollout["name"], rollout["complete"]) == (kind, "web", True)
    ref = f"{kind.lower()}.apps/web"
    assert any(
        line.startswith(f"{ref} rolled out (namespace default): ") for line in harness.lines()
    )


def test_wait_with_nothing_to_wait_for(harness: Harness) -> None:
    step = harness.step([harness.stage("app.yaml", CONFIGMAP)], wait=True)

    outcome = harness.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.endswith("; no rollouts to wait for")


def test_wait_times_out_when_the_rollout_does_not_progress(
    fake: FakeKubeAPI, harness: Harness
) -> None:
    stuck = {"observedGeneration": 1, "replicas": 0, "updatedReplicas": 0}
    fake.on_request = after_real_apply(
        fake, "/deployments/web", lambda: fake.set_status("Deployment", "default", "web", stuck)
    )
    clock = FakeClock()
    executor = KubernetesExecutor(clock=clock, pause=clock.pause)
    step = harness.step([harness.stage("app.yaml", deployment("web"))], wait=True, wait_timeout_s=5)

    outcome = harness.run(step, executor=executor, deadline=clock.now + 60)

    assert outcome.status == "failed"
    assert outcome.summary == (
        "rollout of deployment.apps/web in namespace default did not complete within 5 s: "
        "0 of 2 replicas updated (1 of 1 object was applied)"
    )
    assert clock.pauses == [0.5, 1.0, 2.0, 1.5]  # growing interval, cut at the time limit
    assert outcome.details["rollouts"] == [
        {
            "kind": "Deployment",
            "namespace": "default",
            "name": "web",
            "complete": False,
            "message": "0 of 2 replicas updated",
        }
    ]
    assert "deployment.apps/web rolling out (namespace default): 0 of 2 replicas updated" in (
        harness.lines()
    )


def test_wait_fails_at_once_when_the_progress_deadline_is_exceeded(
    fake: FakeKubeAPI, harness: Harness
) -> None:
    condition = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "web-5d8f" has timed out progressing.',
    }
    failed = {
        "observedGeneration": 1,
        "replicas": 2,
        "updatedReplicas": 1,
        "conditions": [condition],
    }
    fake.on_request = after_real_apply(
        fake, "/deployments/web", lambda: fake.set_status("Deployment", "default", "web", failed)
    )
    clock = FakeClock()
    executor = KubernetesExecutor(clock=clock, pause=clock.pause)
    step = harness.step([harness.stage("app.yaml", deployment("web"))], wait=True)

    outcome = harness.run(step, executor=executor, deadline=clock.now + 60)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        "rollout of deployment.apps/web in namespace default failed: exceeded its progress "
        'deadline: ReplicaSet "web-5d8f" has timed out progressing.'
    )
    assert clock.pauses == []


def test_cancel_while_waiting(fake: FakeKubeAPI, harness: Harness) -> None:
    clock = FakeClock()

    def pause(cancel: threading.Event, seconds: float) -> bool:
        cancel.set()  # the operator cancels during the first pause
        return clock.pause(cancel, seconds)

    executor = KubernetesExecutor(clock=clock, pause=pause)
    step = harness.step([harness.stage("app.yaml", deployment("web"))], wait=True)

    outcome = harness.run(step, executor=executor, deadline=clock.now + 60)

    assert outcome.status == "failed"
    assert outcome.summary == "cancelled while waiting for rollouts (1 of 1 object was applied)"


# -- validation ------------------------------------------------------------------------------

VALID_STEP = {
    "name": "deploy",
    "kind": "k8s",
    "timeout_s": 60,
    "on_failure": "stop",
    "connection": "cluster",
    "manifests": ["a.yaml"],
}


def test_valid_steps_pass_validation() -> None:
    executor = KubernetesExecutor()
    executor.validate(VALID_STEP)
    executor.validate(
        VALID_STEP
        | {
            "namespace": "shop",
            "wait": True,
            "wait_timeout_s": 30,
            "secrets": ["token"],
            "on_failure": "continue",
        }
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "name"),
        ({"kind": "shell"}, "kind"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": True}, "timeout_s"),
        ({"timeout_s": "60"}, "timeout_s"),
        ({"on_failure": "retry"}, "on_failure"),
        ({"connection": ""}, "connection"),
        ({"connection": None}, "connection"),
        ({"manifests": []}, "manifests"),
        ({"manifests": "a.yaml"}, "manifests"),
        ({"manifests": ["a.yaml", ""]}, "manifests"),
        ({"manifests": ["a.yaml", "a.yaml"]}, "manifests"),
        ({"namespace": "Shop"}, "namespace"),
        ({"namespace": ""}, "namespace"),
        ({"wait": "yes"}, "wait"),
        ({"wait_timeout_s": -1}, "wait_timeout_s"),
        ({"wait_timeout_s": 1.5}, "wait_timeout_s"),
        ({"secrets": "token"}, "secrets"),
    ],
)
def test_invalid_step_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(StepSpecError, match=rf"field '{field}'"):
        KubernetesExecutor().validate(VALID_STEP | change)


def test_registered_as_kind_k8s() -> None:
    executor = get_executor("k8s")
    assert isinstance(executor, KubernetesExecutor)
    assert executor.kind == "k8s"
