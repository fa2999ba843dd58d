"""KubernetesExecutor against the real kube-apiserver (``tests/fixtures/kube.py``).

Each test works in its own namespace of the session's API server. Where a test must see what
the executor sent (dry run before apply, query parameters) or inject a fault, the executor
talks to the server through ``kube_proxy``; otherwise directly, over TLS with the token.
What the executor applied is checked with the built ``kubectl``. No controller runs: rollout
tests write the workload's status themselves through the status subresource, from the
executor's pause between two polls (an injected clock, so nothing here sleeps).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.executors import get_executor
from agent.executors.base import Connection
from agent.executors.errors import StepSpecError
from agent.executors.k8s import KubernetesExecutor
from tests.agent.executors.k8scase import FakeClock, Harness, actions, deployment, workload
from tests.fixtures.dbservers import free_port, wait_for
from tests.fixtures.kube import KubeProxy, KubeServer

CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "app-config"},
    "data": {"mode": "live"},
}
WAIT_S = 60.0  # seconds the test waits for the API server to get somewhere (CRD established)


def clusterrole(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deploy_path(ns: str, name: str = "web") -> str:
    return f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"


def cm_path(ns: str, name: str = "app-config") -> str:
    return f"/api/v1/namespaces/{ns}/configmaps/{name}"


@pytest.fixture
def harness(tmp_path: Path, kube_server: KubeServer, kube_namespace: str) -> Harness:
    return Harness(tmp_path, kube_server.kubeconfig, kube_namespace)


@pytest.fixture
def proxied(tmp_path: Path, kube_proxy: KubeProxy, kube_namespace: str) -> Harness:
    """A harness whose steps go through ``kube_proxy``."""
    kubeconfig = kube_proxy.write_kubeconfig(tmp_path / "proxy-kubeconfig")
    return Harness(tmp_path, kubeconfig, kube_namespace)


@pytest.fixture
def new_namespace(kube_server: KubeServer, kube_namespace: str) -> Iterator[str]:
    """A name for a namespace that a step creates (deleted after the test)."""
    name = f"{kube_namespace}-new"
    yield name
    kube_server.delete_namespace(name)


def kubectl_json(kube_server: KubeServer, *args: str) -> dict[str, Any]:
    shown = kube_server.kubectl("get", *args, "-o", "json", "--show-managed-fields")
    got: dict[str, Any] = json.loads(shown.stdout)
    return got


def managers(obj: dict[str, Any]) -> dict[str, str]:
    """``{manager: operation}`` from an object's managedFields."""
    return {m["manager"]: m["operation"] for m in obj["metadata"].get("managedFields", [])}


# -- applying ----------------------------------------------------------------------------------


def test_apply_creates_objects_after_a_dry_run_of_each(
    kube_server: KubeServer, kube_proxy: KubeProxy, proxied: Harness, kube_namespace: str
) -> None:
    step = proxied.step([proxied.stage("app.yaml", CONFIGMAP, deployment("web"))])

    outcome = proxied.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary == (
        f"applied 2 objects to {kube_proxy.url}: 2 created, 0 configured, 0 unchanged"
    )
    assert actions(outcome) == {"ConfigMap/app-config": "created", "Deployment/web": "created"}
    patches = kube_proxy.patches()
    assert [r.dry_run for r in patches] == [True, True, False, False]
    for request in patches:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == ("tiangong",)
        assert request.query["force"] == ("true",)
        assert request.query["fieldValidation"] == ("Strict",)
    ns = kube_namespace
    assert proxied.lines()[1:] == [
        f"configmap/app-config created (namespace {ns}, server dry run)",
        f"deployment.apps/web created (namespace {ns}, server dry run)",
        f"configmap/app-config created (namespace {ns})",
        f"deployment.apps/web created (namespace {ns})",
    ]
    # what kubectl sees is what the release said, applied by the field manager "tiangong"
    stored = kubectl_json(kube_server, "-n", ns, "deployment", "web")
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert stored["spec"]["replicas"] == 2
    assert managers(stored) == {"tiangong": "Apply"}
    assert kubectl_json(kube_server, "-n", ns, "configmap", "app-config")["data"] == {
        "mode": "live"
    }


def test_reapply_changes_nothing(
    kube_server: KubeServer, harness: Harness, kube_namespace: str
) -> None:
    step = harness.step([harness.stage("app.yaml", CONFIGMAP, deployment("web"))])
    assert harness.run(step).status == "succeeded"
    first = kube_server.get(deploy_path(kube_namespace))

    outcome = harness.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.endswith("0 created, 0 configured, 2 unchanged")
    assert set(actions(outcome).values()) == {"unchanged"}
    again = kube_server.get(deploy_path(kube_namespace))
    assert again is not None and first is not None
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == first["metadata"]["generation"] == 1
    ns = kube_namespace
    assert f"deployment.apps/web unchanged (namespace {ns}, server dry run)" in harness.lines()
    assert f"deployment.apps/web unchanged (namespace {ns})" in harness.lines()


def test_changed_spec_is_configured(
    kube_server: KubeServer, harness: Harness, kube_namespace: str
) -> None:
    harness.stage("app.yaml", deployment("web"))
    assert harness.run(harness.step(["app.yaml"])).status == "succeeded"
    harness.stage("app.yaml", deployment("web", image="nginx:1.27"))

    outcome = harness.run(harness.step(["app.yaml"]))

    assert outcome.status == "succeeded", outcome.summary
    assert actions(outcome) == {"Deployment/web": "configured"}
    stored = kubectl_json(kube_server, "-n", kube_namespace, "deployment", "web")
    assert stored["metadata"]["generation"] == 2
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert f"deployment.apps/web configured (namespace {kube_namespace})" in harness.lines()


def test_reapply_without_a_field_removes_it(
    kube_server: KubeServer, harness: Harness, kube_namespace: str
) -> None:
    first = CONFIGMAP | {"data": {"mode": "live", "debug": "true"}}
    web = deployment("web")
    web["metadata"]["annotations"] = {"shop.example/owner": "team-a"}
    assert harness.run(harness.step([harness.stage("app.yaml", first, web)])).status == (
        "succeeded"
    )

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP, deployment("web"))]))

    assert outcome.status == "succeeded", outcome.summary
    assert actions(outcome) == {
        "ConfigMap/app-config": "configured",
        "Deployment/web": "configured",
    }
    ns = kube_namespace
    assert kubectl_json(kube_server, "-n", ns, "configmap", "app-config")["data"] == {
        "mode": "live"
    }
    stored = kubectl_json(kube_server, "-n", ns, "deployment", "web")
    assert "shop.example/owner" not in stored["metadata"].get("annotations", {})


def test_fields_another_manager_set_are_taken_over(
    kube_server: KubeServer, harness: Harness, kube_namespace: str, tmp_path: Path
) -> None:
    # An operator scaled by hand with their own field manager; the release sets replicas
    # again: the forced apply takes the field back (a plain apply would get 409 Conflict).
    step = harness.step([harness.stage("app.yaml", deployment("web", replicas=2))])
    assert harness.run(step).status == "succeeded"
    scaled = tmp_path / "scaled.yaml"
    scaled.write_text(yaml.safe_dump(deployment("web", namespace=kube_namespace, replicas=5)))
    refused = kube_server.kubectl(
        "apply", "--server-side", "--field-manager", "ops", "-f", str(scaled), check=False
    )
    assert refused.returncode != 0
    assert "conflict" in refused.stderr.lower()
    assert 'conflict with "tiangong": .spec.replicas' in refused.stderr
    kube_server.kubectl(
        "apply", "--server-side", "--field-manager", "ops", "--force-conflicts", "-f", str(scaled)
    )
    assert (
        kubectl_json(kube_server, "-n", kube_namespace, "deployment", "web")["spec"]["replicas"]
        == 5
    )

    outcome = harness.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert actions(outcome) == {"Deployment/web": "configured"}
    stored = kubectl_json(kube_server, "-n", kube_namespace, "deployment", "web")
    assert stored["spec"]["replicas"] == 2
    assert managers(stored) == {"tiangong": "Apply", "ops": "Apply"}
    owned_by_ops = next(m for m in stored["metadata"]["managedFields"] if m["manager"] == "ops")
    assert "f:replicas" not in json.dumps(owned_by_ops["fieldsV1"])


def test_multi_document_namespace_first_then_file_order(
    kube_server: KubeServer,
    kube_proxy: KubeProxy,
    proxied: Harness,
    new_namespace: str,
) -> None:
    # The Namespace comes last in the file and the Deployment has no namespace of its own:
    # the step's namespace applies, and the Namespace is applied before anything in it.
    role = clusterrole(f"{new_namespace}-reader")
    text = "---\n" + yaml.safe_dump_all([deployment("web"), role]) + "---\n---\n"
    text += yaml.safe_dump(namespace(new_namespace))
    step = proxied.step([proxied.stage("shop.yaml", text=text)], namespace=new_namespace)

    outcome = proxied.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert [(o["kind"], o["namespace"], o["document"]) for o in outcome.details["objects"]] == [
        ("Namespace", None, 4),  # the empty third document counts
        ("Deployment", new_namespace, 1),
        ("ClusterRole", None, 2),
    ]
    assert kube_server.get(deploy_path(new_namespace)) is not None
    role_path = f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{new_namespace}-reader"
    assert kube_server.get(role_path) is not None
    assert [(r.path, r.dry_run) for r in kube_proxy.patches()] == [
        (f"/api/v1/namespaces/{new_namespace}", True),
        (role_path, True),
        (f"/api/v1/namespaces/{new_namespace}", False),
        # the namespace did not exist: its contents could only be dry-run once it did
        (deploy_path(new_namespace), True),
        (deploy_path(new_namespace), False),
        (role_path, False),
    ]
    assert f"clusterrole.rbac.authorization.k8s.io/{new_namespace}-reader created" in (
        proxied.lines()
    )
    kube_server.must("DELETE", role_path)


def test_object_in_an_existing_namespace_is_dry_run_before_anything_is_applied(
    kube_proxy: KubeProxy, proxied: Harness, kube_namespace: str
) -> None:
    step = proxied.step([proxied.stage("shop.yaml", namespace(kube_namespace), deployment("web"))])

    outcome = proxied.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert actions(outcome) == {
        "Namespace/" + kube_namespace: "unchanged",
        "Deployment/web": "created",
    }
    assert [r.dry_run for r in kube_proxy.patches()] == [True, True, False, False]


# -- rejections: nothing applied -------------------------------------------------------------


def without_selector(obj: dict[str, Any]) -> dict[str, Any]:
    del obj["spec"]["selector"]
    return obj


def with_spec(obj: dict[str, Any], **fields: Any) -> dict[str, Any]:
    obj["spec"] |= fields
    return obj


INVALID = [
    pytest.param(
        deployment("web", image=None),
        422,
        'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value',
        ["spec.template.spec.containers[0].image: Required value"],
        id="container-without-image",
    ),
    pytest.param(
        deployment("web", selector={"app": "other"}),
        422,
        'Deployment.apps "web" is invalid: spec.template.metadata.labels: Invalid value',
        ["spec.template.metadata.labels: Invalid value: "],
        id="selector-does-not-match-template",
    ),
    pytest.param(
        without_selector(deployment("web")),
        422,
        'Deployment.apps "web" is invalid: [spec.selector: Required value',
        ["spec.selector: Required value"],
        id="no-selector",
    ),
    pytest.param(
        CONFIGMAP | {"metadata": {"name": "App_Config"}},
        422,
        'ConfigMap "App_Config" is invalid: metadata.name: Invalid value: "App_Config"',
        [],
        id="name-not-dns-1123",
    ),
    # server-side apply refuses unknown fields and wrong types (as HTTP 500, whatever the
    # fieldValidation): the step fails, naming the field
    pytest.param(
        with_spec(deployment("web"), replcas=3),
        500,
        ".spec.replcas: field not declared in schema",
        [],
        id="unknown-field",
    ),
    pytest.param(
        with_spec(deployment("web"), replicas="two"),
        500,
        ".spec.replicas: expected numeric (int or float), got string",
        [],
        id="wrong-type",
    ),
]


@pytest.mark.parametrize(("bad", "code", "message", "causes"), INVALID)
def test_invalid_object_fails_the_dry_run_and_nothing_is_applied(
    kube_server: KubeServer,
    kube_proxy: KubeProxy,
    proxied: Harness,
    kube_namespace: str,
    bad: dict[str, Any],
    code: int,
    message: str,
    causes: list[str],
) -> None:
    role = clusterrole(f"{kube_namespace}-reader")
    proxied.stage("good.yaml", role, deployment("api"))
    proxied.stage("bad.yaml", bad)
    step = proxied.step(["good.yaml", "bad.yaml"])

    outcome = proxied.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.startswith("server dry run rejected 1 of 3 objects, so nothing was ")
    assert "(bad.yaml document 1): " in outcome.summary
    assert message in outcome.summary
    assert kube_proxy.patches(dry_run=False) == []
    assert len(kube_proxy.patches(dry_run=True)) == 3  # every object was tried
    assert (
        kube_server.get(
            f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role['metadata']['name']}"
        )
        is None
    )
    assert kube_server.get(deploy_path(kube_namespace, "api")) is None
    assert kube_server.get(deploy_path(kube_namespace, "web")) is None
    listed = kube_server.kubectl(
        "get", "-n", kube_namespace, "deployments,configmaps", "-o", "name"
    )
    assert "deployment" not in listed.stdout
    (error,) = outcome.details["errors"]
    assert (error["code"], error["source"], error["phase"]) == (code, "bad.yaml", "server dry run")
    for cause in causes:
        assert any(c.startswith(cause) for c in error["causes"])
        assert any(line.startswith(f"  - {cause}") for line in proxied.lines())
    assert set(actions(outcome).values()) == {"not applied"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            {"replcas": 3}, ".spec.replcas: field not declared in schema", id="unknown-field"
        ),
        pytest.param(
            {"replicas": "two"},
            ".spec.replicas: expected numeric (int or float), got string",
            id="wrong-type",
        ),
    ],
)
def test_strict_validation_leaves_the_deployed_object_as_it_was(
    kube_server: KubeServer,
    harness: Harness,
    kube_namespace: str,
    change: dict[str, Any],
    message: str,
) -> None:
    assert harness.run(harness.step([harness.stage("app.yaml", deployment("web"))])).status == (
        "succeeded"
    )
    before = kubectl_json(kube_server, "-n", kube_namespace, "deployment", "web")

    outcome = harness.run(
        harness.step([harness.stage("app.yaml", with_spec(deployment("web"), **change))])
    )

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        "server dry run rejected 1 of 1 object, so nothing was applied; deployment.apps/web "
        f"in namespace {kube_namespace} (app.yaml document 1): "
    )
    assert message in outcome.summary
    assert f"error: {outcome.summary}" in harness.lines()
    after = kubectl_json(kube_server, "-n", kube_namespace, "deployment", "web")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["replicas"] == 2


def test_namespace_that_does_not_exist_is_reported(
    kube_server: KubeServer, kube_proxy: KubeProxy, proxied: Harness, kube_namespace: str
) -> None:
    cm = CONFIGMAP | {"metadata": {"name": "app-config", "namespace": f"{kube_namespace}-none"}}
    role = clusterrole(f"{kube_namespace}-reader")
    step = proxied.step([proxied.stage("app.yaml", role, cm)])

    outcome = proxied.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.endswith(
        f'(app.yaml document 2): namespaces "{kube_namespace}-none" not found'
    )
    assert outcome.details["errors"][0]["code"] == 404
    assert kube_proxy.patches(dry_run=False) == []
    assert (
        kube_server.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{kube_namespace}-reader")
        is None
    )


def test_rejected_contents_of_a_new_namespace_leave_only_the_namespace(
    kube_server: KubeServer,
    kube_proxy: KubeProxy,
    proxied: Harness,
    kube_namespace: str,
    new_namespace: str,
) -> None:
    bad = deployment("web", namespace=new_namespace, image=None)
    step = proxied.step([proxied.stage("shop.yaml", namespace(new_namespace), bad, CONFIGMAP)])

    outcome = proxied.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"server dry run rejected 1 of 1 object in the new namespaces {new_namespace}, so "
        f"nothing else was applied; deployment.apps/web in namespace {new_namespace} "
        "(shop.yaml document 2): "
    )
    assert outcome.summary.endswith("(1 of 3 objects was applied)")
    assert [r.path for r in kube_proxy.patches(dry_run=False)] == [
        f"/api/v1/namespaces/{new_namespace}"
    ]
    assert kube_server.get(f"/api/v1/namespaces/{new_namespace}") is not None
    assert kube_server.get(cm_path(kube_namespace)) is None
    assert kube_server.get(deploy_path(new_namespace)) is None
    assert actions(outcome)[f"Namespace/{new_namespace}"] == "created"


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
    kube_server: KubeServer,
    kube_proxy: KubeProxy,
    proxied: Harness,
    doc: dict[str, Any],
    summary: str,
    kube_namespace: str,
) -> None:
    outcome = proxied.run(proxied.step([proxied.stage("app.yaml", CONFIGMAP, doc)]))

    assert outcome.status == "failed"
    assert outcome.summary == summary + kube_proxy.url
    assert kube_proxy.patches() == []
    assert kube_server.get(cm_path(kube_namespace)) is None


def test_object_named_twice_fails_before_anything_is_sent(
    kube_proxy: KubeProxy, proxied: Harness
) -> None:
    proxied.stage("a.yaml", CONFIGMAP)
    proxied.stage("b.yaml", deployment("web"), CONFIGMAP)

    outcome = proxied.run(proxied.step(["a.yaml", "b.yaml"]))

    assert outcome.status == "failed"
    assert outcome.summary == (
        "ConfigMap 'app-config' is in the step twice: a.yaml document 1 and b.yaml document 2"
    )
    assert kube_proxy.patches() == []


# -- custom resources --------------------------------------------------------------------------


def widget_crd(group: str) -> dict[str, Any]:
    """A namespaced Widget kind in ``group``: v1 served and stored, v1beta1 deprecated."""
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "minimum": 1},
                    "colour": {"type": "string"},
                },
            }
        },
    }
    version = {"served": True, "schema": {"openAPIV3Schema": schema}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                version | {"name": "v1", "storage": True},
                version
                | {
                    "name": "v1beta1",
                    "storage": False,
                    "deprecated": True,
                    "deprecationWarning": f"{group}/v1beta1 Widget is deprecated; use v1",
                },
            ],
        },
    }


def widget(group: str, version: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/{version}",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": spec,
    }


@pytest.fixture
def widget_group(kube_server: KubeServer, kube_namespace: str) -> Iterator[str]:
    """A group of its own for the test's Widget CRD (deleted after the test)."""
    group = f"{kube_namespace}.example.com"
    yield group
    kube_server.request(
        "DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{group}"
    )


def established(kube_server: KubeServer, group: str) -> bool:
    crd = kube_server.get(
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{group}"
    )
    conditions = (crd or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def await_widgets(kube_server: KubeServer, group: str) -> None:
    """Wait until the Widget CRD is established and its versions are in discovery."""
    wait_for(lambda: established(kube_server, group), WAIT_S, "the CRD to be established")
    for version in ("v1", "v1beta1"):
        path = f"/apis/{group}/{version}"
        wait_for(lambda p=path: kube_server.get(p) is not None, WAIT_S, f"{path} in discovery")


def test_crd_then_custom_resources(
    kube_server: KubeServer, harness: Harness, kube_namespace: str, widget_group: str
) -> None:
    crd_step = harness.step([harness.stage("crd.yaml", widget_crd(widget_group))])
    outcome = harness.run(crd_step)
    assert outcome.status == "succeeded", outcome.summary
    assert actions(outcome) == {f"CustomResourceDefinition/widgets.{widget_group}": "created"}
    await_widgets(kube_server, widget_group)

    outcome = harness.run(
        harness.step([harness.stage("w.yaml", widget(widget_group, "v1", size=3))])
    )

    assert outcome.status == "succeeded", outcome.summary
    assert actions(outcome) == {"Widget/w": "created"}
    assert f"widget.{widget_group}/w created (namespace {kube_namespace})" in harness.lines()
    got = kubectl_json(kube_server, "-n", kube_namespace, f"widgets.{widget_group}", "w")
    assert got["spec"] == {"size": 3}
    assert outcome.details["warnings"] == []


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        pytest.param(
            {"size": 0},
            422,
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1",
            id="schema-minimum",
        ),
        pytest.param({"colour": "red"}, 422, "spec.size: Required value", id="schema-required"),
        pytest.param(
            {"size": 1, "color": "red"},
            500,
            ".spec.color: field not declared in schema",
            id="unknown-field",
        ),
        pytest.param(
            {"size": "big"},
            500,
            ".spec.size: expected numeric (int or float), got string",
            id="wrong-type",
        ),
    ],
)
def test_custom_resource_against_its_schema(
    kube_server: KubeServer,
    harness: Harness,
    kube_namespace: str,
    widget_group: str,
    spec: dict[str, Any],
    code: int,
    message: str,
) -> None:
    assert (
        harness.run(harness.step([harness.stage("crd.yaml", widget_crd(widget_group))])).status
        == "succeeded"
    )
    await_widgets(kube_server, widget_group)

    outcome = harness.run(
        harness.step([harness.stage("w.yaml", widget(widget_group, "v1", **spec))])
    )

    assert outcome.status == "failed"
    assert message in outcome.summary
    assert outcome.details["errors"][0]["code"] == code
    got = kube_server.kubectl("get", "-n", kube_namespace, f"widgets.{widget_group}", "-o", "name")
    assert got.stdout == ""


def test_custom_resource_in_the_step_of_its_crd_is_not_served_yet(
    kube_server: KubeServer, harness: Harness, widget_group: str
) -> None:
    step = harness.step(
        [harness.stage("all.yaml", widget_crd(widget_group), widget(widget_group, "v1", size=1))]
    )

    outcome = harness.run(step)

    assert outcome.status == "failed"
    assert outcome.summary == (
        f"manifest all.yaml document 2: apiVersion {widget_group}/v1 is not served by "
        f"{kube_server.url}"
    )
    assert established(kube_server, widget_group) is False  # nothing was applied


def test_api_warnings_are_in_the_step_log_and_the_details(
    kube_server: KubeServer, harness: Harness, kube_namespace: str, widget_group: str
) -> None:
    assert (
        harness.run(harness.step([harness.stage("crd.yaml", widget_crd(widget_group))])).status
        == "succeeded"
    )
    await_widgets(kube_server, widget_group)
    text = f"{widget_group}/v1beta1 Widget is deprecated; use v1"

    outcome = harness.run(
        harness.step([harness.stage("w.yaml", widget(widget_group, "v1beta1", size=2))])
    )

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.endswith("(1 warning from the API server in the step log)")
    ref = f"widget.{widget_group}/w"
    assert [line for line in harness.lines() if line.startswith("warning: ")] == [
        f"warning: {ref} (namespace {kube_namespace}, server dry run, w.yaml document 1): {text}",
        f"warning: {ref} (namespace {kube_namespace}, apply, w.yaml document 1): {text}",
    ]
    assert [(w["name"], w["phase"], w["message"]) for w in outcome.details["warnings"]] == [
        ("w", "server dry run", text),
        ("w", "apply", text),
    ]


def test_warnings_come_with_a_rejection_too(
    kube_server: KubeServer, harness: Harness, kube_namespace: str, widget_group: str
) -> None:
    crd_step = harness.step([harness.stage("crd.yaml", widget_crd(widget_group))])
    assert harness.run(crd_step).status == "succeeded"
    await_widgets(kube_server, widget_group)
    text = f"{widget_group}/v1beta1 Widget is deprecated; use v1"
    step = harness.step([harness.stage("w.yaml", widget(widget_group, "v1beta1", size=0))])

    outcome = harness.run(step)

    assert outcome.status == "failed"
    ref = f"widget.{widget_group}/w"
    assert harness.lines()[1:3] == [
        f"warning: {ref} (namespace {kube_namespace}, server dry run, w.yaml document 1): {text}",
        f"error: {ref} rejected (namespace {kube_namespace}, server dry run, w.yaml document 1): "
        f'Widget.{widget_group} "w" is invalid: spec.size: Invalid value: 0: spec.size in body '
        "should be greater than or equal to 1",
    ]
    assert [w["message"] for w in outcome.details["warnings"]] == [text]
    assert (
        kube_server.kubectl(
            "get", "-n", kube_namespace, f"widgets.{widget_group}", "-o", "name"
        ).stdout
        == ""
    )


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
    pytest.param(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: '1'}\ndata: {b: '2'}\n",
        "manifest bad.yaml: invalid YAML in document 1 at line 5, column 1: key 'data' appears "
        "twice in one mapping",
        id="key-twice",
    ),
]


@pytest.mark.parametrize(("text", "summary"), MALFORMED)
def test_malformed_manifest_fails_without_contacting_the_server(
    kube_proxy: KubeProxy, proxied: Harness, text: str, summary: str
) -> None:
    step = proxied.step([proxied.stage("bad.yaml", text=text)])

    outcome = proxied.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(summary)
    assert kube_proxy.requests == []
    assert proxied.lines() == [f"error: {outcome.summary}"]


# -- connection trouble and faults -----------------------------------------------------------


def test_unreachable_api_server_is_a_clear_failure(tmp_path: Path) -> None:
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    harness = Harness(tmp_path, kubeconfig)

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary == (
        f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}: connection refused"
    )
    assert outcome.details["server"] == f"http://127.0.0.1:{port}"


def test_wrong_token_is_refused_by_the_server(
    kube_server: KubeServer, harness: Harness, tmp_path: Path, kube_namespace: str
) -> None:
    config = yaml.safe_load(kube_server.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = "not-the-token"
    kubeconfig = tmp_path / "wrong-token"
    kubeconfig.write_text(yaml.safe_dump(config))
    harness.connection = Connection("cluster", "kubernetes", {"kubeconfig": str(kubeconfig)})

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary == "Unauthorized"
    assert kube_server.get(cm_path(kube_namespace)) is None


def test_server_error_on_apply_is_not_retried(
    kube_server: KubeServer, kube_proxy: KubeProxy, proxied: Harness, kube_namespace: str
) -> None:
    kube_proxy.inject(lambda r: r.method == "PATCH" and not r.dry_run, status=500)
    step = proxied.step([proxied.stage("app.yaml", CONFIGMAP, deployment("web"))])

    outcome = proxied.run(step)

    assert outcome.status == "failed"
    assert outcome.summary == (
        f"the API server rejected configmap/app-config in namespace {kube_namespace} "
        "(app.yaml document 1) after its dry run had passed: injected by the test proxy: "
        "HTTP 500"
    )
    assert len(kube_proxy.patches(dry_run=False)) == 1  # never repeated, nothing after it
    assert kube_server.get(cm_path(kube_namespace)) is None
    assert kube_server.get(deploy_path(kube_namespace)) is None
    assert outcome.details["errors"][0]["code"] == 500


def test_dropped_connection_on_apply_is_a_clear_failure(
    kube_server: KubeServer, kube_proxy: KubeProxy, proxied: Harness, kube_namespace: str
) -> None:
    kube_proxy.inject(lambda r: r.method == "PATCH" and not r.dry_run, drop=True)
    step = proxied.step([proxied.stage("app.yaml", CONFIGMAP, deployment("web"))])

    outcome = proxied.run(step)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"cannot reach the Kubernetes API server at {kube_proxy.url}: "
    )
    assert len(kube_proxy.patches(dry_run=False)) == 1
    assert kube_server.get(deploy_path(kube_namespace)) is None


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
    tmp_path: Path, params: dict[str, Any], summary: str
) -> None:
    harness = Harness(tmp_path, tmp_path / "unused")
    harness.connection = Connection("cluster", "kubernetes", params)

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary.startswith(summary)


def test_unknown_kubeconfig_context(kube_server: KubeServer, harness: Harness) -> None:
    params = {"kubeconfig": str(kube_server.kubeconfig), "context": "elsewhere"}
    harness.connection = Connection("cluster", "kubernetes", params)

    outcome = harness.run(harness.step([harness.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"connection 'cluster': cannot load {kube_server.kubeconfig}: "
    )
    assert "elsewhere" in outcome.summary


def test_connection_of_another_type(kube_proxy: KubeProxy, proxied: Harness) -> None:
    proxied.connection = Connection("db", "postgres", {"dsn": "postgresql://x@h/db"})

    outcome = proxied.run(proxied.step([proxied.stage("app.yaml", CONFIGMAP)]))

    assert outcome.status == "failed"
    assert outcome.summary == (
        "step 'deploy-shop': needs a connection of type kubernetes, got 'db' of type postgres"
    )
    assert kube_proxy.requests == []


def test_cancelled_before_start_sends_nothing(kube_proxy: KubeProxy, proxied: Harness) -> None:
    proxied.cancel.set()

    outcome = proxied.run(proxied.step([proxied.stage("app.yaml", CONFIGMAP)]))

    assert (outcome.status, outcome.summary) == ("failed", "cancelled")
    assert kube_proxy.requests == []


def test_step_out_of_time_sends_nothing(kube_proxy: KubeProxy, proxied: Harness) -> None:
    step = proxied.step([proxied.stage("app.yaml", CONFIGMAP)])

    outcome = proxied.run(step, deadline=0.0)

    assert (outcome.status, outcome.summary) == ("failed", "the step's time limit ran out")
    assert kube_proxy.requests == []


# -- rollout wait: the test plays the controller through the status subresource ---------------


def rolled_out(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The status the controller of ``obj`` writes once its rollout is complete."""
    generation = obj["metadata"]["generation"]
    if kind == "DaemonSet":
        return {
            "observedGeneration": generation,
            "desiredNumberScheduled": 2,
            "currentNumberScheduled": 2,
            "updatedNumberScheduled": 2,
            "numberReady": 2,
            "numberAvailable": 2,
            "numberMisscheduled": 0,
        }
    replicas = obj["spec"]["replicas"]
    status = {
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": replicas,
        "availableReplicas": replicas,
    }
    if kind == "StatefulSet":
        status |= {
            "currentReplicas": replicas,
            "currentRevision": "web-1",
            "updateRevision": "web-1",
        }
    return status


@pytest.mark.parametrize(
    ("kind", "plural"),
    [("Deployment", "deployments"), ("StatefulSet", "statefulsets"), ("DaemonSet", "daemonsets")],
)
def test_wait_succeeds_when_the_rollout_completes(
    kube_server: KubeServer, harness: Harness, kube_namespace: str, kind: str, plural: str
) -> None:
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/{plural}/web"
    clock = FakeClock()

    def controller(pause: int) -> None:
        if pause == 1:
            obj = kube_server.get(path)
            assert obj is not None
            kube_server.set_status(path, rolled_out(kind, obj))

    clock.on_pause = controller
    executor = KubernetesExecutor(clock=clock, pause=clock.pause)
    step = harness.step([harness.stage("app.yaml", workload(kind, "web"))], wait=True)

    outcome = harness.run(step, executor=executor, deadline=clock.now + 60)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.endswith("; 1 rollout complete")
    assert clock.pauses == [0.5]
    (rollout,) = outcome.details["rollouts"]
    assert (rollout["kind"], rollout["name"], rollout["complete"]) == (kind, "web", True)
    ref = f"{kind.lower()}.apps/web"
    assert (
        f"{ref} rolling out (namespace {kube_namespace}): waiting for the controller to "
        "observe generation 1" in harness.lines()
    )
    assert any(
        line.startswith(f"{ref} rolled out (namespace {kube_namespace}): ")
        for line in harness.lines()
    )
    # the real client agrees that the status the test wrote is a finished rollout
    done = kube_server.kubectl(
        "rollout", "status", "-n", kube_namespace, f"{plural}/web", "--timeout=30s"
    )
    assert "successfully rolled out" in done.stdout or "roll out complete" in done.stdout


def test_wait_with_nothing_to_wait_for(harness: Harness) -> None:
    step = harness.step([harness.stage("app.yaml", CONFIGMAP)], wait=True)

    outcome = harness.run(step)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.endswith("; no rollouts to wait for")


def test_wait_times_out_when_the_rollout_does_not_progress(
    kube_server: KubeServer, harness: Harness, kube_namespace: str
) -> None:
    path = deploy_path(kube_namespace)
    clock = FakeClock()
    stuck = {"observedGeneration": 1, "replicas": 0, "updatedReplicas": 0}
    clock.on_pause = lambda n: kube_server.set_status(path, stuck) if n == 1 else None
    executor = KubernetesExecutor(clock=clock, pause=clock.pause)
    step = harness.step([harness.stage("app.yaml", deployment("web"))], wait=True, wait_timeout_s=5)

    outcome = harness.run(step, executor=executor, deadline=clock.now + 60)

    assert outcome.status == "failed"
    assert outcome.summary == (
        f"rollout of deployment.apps/web in namespace {kube_namespace} did not complete within "
        "5 s: 0 of 2 replicas updated (1 of 1 object was applied)"
    )
    assert clock.pauses == [0.5, 1.0, 2.0, 1.5]  # growing interval, cut at the time limit
    assert outcome.details["rollouts"] == [
        {
            "kind": "Deployment",
            "namespace": kube_namespace,
            "name": "web",
            "complete": False,
            "message": "0 of 2 replicas updated",
        }
    ]
    assert (
        f"deployment.apps/web rolling out (namespace {kube_namespace}): 0 of 2 replicas updated"
        in harness.lines()
    )
    waited = kube_server.kubectl(
        "rollout", "status", "-n", kube_namespace, "deployment/web", "--timeout=1s", check=False
    )
    assert waited.returncode != 0


def test_wait_fails_at_once_when_the_progress_deadline_is_exceeded(
    kube_server: KubeServer, harness: Harness, kube_namespace: str
) -> None:
    path = deploy_path(kube_namespace)
    condition = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "web-5d8f" has timed out progressing.',
        "lastUpdateTime": "2026-12-01T10:00:00Z",
        "lastTransitionTime": "2026-12-01T10:00:00Z",
    }
    failed = {
        "observedGeneration": 1,
        "replicas": 2,
        "updatedReplicas": 1,
        "conditions": [condition],
    }
    clock = FakeClock()
    clock.on_pause = lambda n: kube_server.set_status(path, failed) if n == 1 else None
    executor = KubernetesExecutor(clock=clock, pause=clock.pause)
    step = harness.step([harness.stage("app.yaml", deployment("web"))], wait=True)

    outcome = harness.run(step, executor=executor, deadline=clock.now + 60)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"rollout of deployment.apps/web in namespace {kube_namespace} failed: exceeded its "
        'progress deadline: ReplicaSet "web-5d8f" has timed out progressing.'
    )
    assert clock.pauses == [0.5]  # failed at the first poll after the status was written
    # kubectl gives up on this rollout as well
    waited = kube_server.kubectl(
        "rollout", "status", "-n", kube_namespace, "deployment/web", "--timeout=30s", check=False
    )
    assert waited.returncode != 0
    assert "exceeded its progress deadline" in waited.stderr


def test_cancel_while_waiting(harness: Harness) -> None:
    clock = FakeClock()
    clock.on_pause = lambda n: harness.cancel.set()  # the operator cancels during the pause
    executor = KubernetesExecutor(clock=clock, pause=clock.pause)
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
