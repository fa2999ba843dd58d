"""FakeKubeAPI's own behaviour over raw HTTP, and the real kubectl against it.

The kubectl tests are what keeps the fake honest: the paths, discovery documents, apply
semantics and Status errors it serves must be what a real client expects.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.fakekube.fake_kube_api import APPLY_PATCH, FakeKubeAPI
from tests.fakekube.fixtures import deployment, workload

KUBECTL = "/usr/bin/kubectl"
KUBECTL_TIMEOUT_S = 120  # seconds; kubectl's first run may pick and start a versioned binary
DEPLOY = "/apis/apps/v1/namespaces/default/deployments/web"


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


def call(
    fake: FakeKubeAPI,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = APPLY_PATCH,
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    connection = http.client.HTTPConnection(urlsplit(fake.url).netloc, timeout=10)
    try:
        headers = {"Content-Type": content_type} if data is not None else {}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def apply(fake: FakeKubeAPI, path: str, body: Any, query: str = "") -> tuple[int, dict[str, Any]]:
    return call(fake, "PATCH", f"{path}?fieldManager=test{query}", body)


# -- discovery -------------------------------------------------------------------------------


def test_discovery_documents(fake: FakeKubeAPI) -> None:
    assert call(fake, "GET", "/version")[1]["gitVersion"].startswith("v1.30.")
    assert call(fake, "GET", "/api")[1]["versions"] == ["v1"]
    groups = call(fake, "GET", "/apis")[1]
    assert groups["kind"] == "APIGroupList"
    assert [g["name"] for g in groups["groups"]] == ["apps", "rbac.authorization.k8s.io"]
    apps = call(fake, "GET", "/apis/apps/v1")[1]
    assert apps["groupVersion"] == "apps/v1"
    assert {(r["kind"], r["name"], r["namespaced"]) for r in apps["resources"]} == {
        ("Deployment", "deployments", True),
        ("StatefulSet", "statefulsets", True),
        ("DaemonSet", "daemonsets", True),
    }
    core = {r["kind"]: r["namespaced"] for r in call(fake, "GET", "/api/v1")[1]["resources"]}
    assert core == {"Namespace": False, "ConfigMap": True, "Secret": True, "Service": True,
                    "ServiceAccount": True}  # fmt: skip


# -- apply semantics -------------------------------------------------------------------------


def test_apply_creates_then_reapply_changes_nothing(fake: FakeKubeAPI) -> None:
    code, created = apply(fake, DEPLOY, deployment("web"))
    assert code == 201
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["namespace"] == "default"
    assert created["spec"]["replicas"] == 2
    assert created["status"] == {}

    code, again = apply(fake, DEPLOY, deployment("web"))
    assert code == 200
    assert again == created


def test_spec_change_bumps_generation_metadata_change_does_not(fake: FakeKubeAPI) -> None:
    _, first = apply(fake, DEPLOY, deployment("web"))
    _, scaled = apply(fake, DEPLOY, deployment("web", replicas=3))
    assert scaled["metadata"]["generation"] == 2
    assert int(scaled["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])

    labelled = deployment("web", replicas=3)
    labelled["metadata"]["labels"] = {"tier": "front"}
    _, relabelled = apply(fake, DEPLOY, labelled)
    assert relabelled["metadata"]["generation"] == 2
    assert relabelled["metadata"]["resourceVersion"] != scaled["metadata"]["resourceVersion"]


def test_replicas_default_to_one(fake: FakeKubeAPI) -> None:
    body = deployment("web")
    del body["spec"]["replicas"]
    assert apply(fake, DEPLOY, body)[1]["spec"]["replicas"] == 1


def test_dry_run_persists_nothing(fake: FakeKubeAPI) -> None:
    code, would_be = apply(fake, DEPLOY, deployment("web"), "&dryRun=All")
    assert code == 201
    assert would_be["metadata"]["name"] == "web"
    assert fake.get_object("Deployment", "default", "web") is None

    apply(fake, DEPLOY, deployment("web"))
    stored = fake.get_object("Deployment", "default", "web")
    code, would_be = apply(fake, DEPLOY, deployment("web", replicas=5), "&dryRun=All")
    assert (code, would_be["spec"]["replicas"], would_be["metadata"]["generation"]) == (200, 5, 2)
    assert fake.get_object("Deployment", "default", "web") == stored


def test_status_in_an_applied_body_is_ignored(fake: FakeKubeAPI) -> None:
    body = deployment("web") | {"status": {"availableReplicas": 2}}
    assert apply(fake, DEPLOY, body)[1]["status"] == {}


def test_rollout_controls(fake: FakeKubeAPI) -> None:
    apply(fake, DEPLOY, deployment("web"))
    before = fake.get_object("Deployment", "default", "web")
    fake.complete_rollout("Deployment", "default", "web")
    after = fake.get_object("Deployment", "default", "web")
    assert before is not None and after is not None
    assert after["status"] == {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                               "readyReplicas": 2, "availableReplicas": 2}  # fmt: skip
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    with pytest.raises(KeyError):
        fake.set_status("Deployment", "default", "missing", {})


def test_cluster_scoped_and_delete(fake: FakeKubeAPI) -> None:
    path = "/apis/rbac.authorization.k8s.io/v1/clusterroles/reader"
    body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "reader", "namespace": "ignored"}, "rules": []}  # fmt: skip
    code, created = apply(fake, path, body)
    assert code == 201 and "namespace" not in created["metadata"]
    code, gone = call(fake, "DELETE", path)
    assert (code, gone["kind"], gone["status"]) == (200, "Status", "Success")
    assert call(fake, "GET", path)[0] == 404


def test_deleting_a_namespace_drops_its_objects(fake: FakeKubeAPI) -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    apply(fake, "/api/v1/namespaces/shop", ns)
    apply(fake, "/apis/apps/v1/namespaces/shop/deployments/web", deployment("web"))
    assert call(fake, "DELETE", "/api/v1/namespaces/shop")[0] == 200
    assert fake.get_object("Deployment", "shop", "web") is None


def test_requests_are_recorded(fake: FakeKubeAPI) -> None:
    apply(fake, DEPLOY, deployment("web"), "&dryRun=All")
    (request,) = fake.requests
    assert (request.method, request.path, request.content_type) == ("PATCH", DEPLOY, APPLY_PATCH)
    assert request.query == {"fieldManager": ("test",), "dryRun": ("All",)}
    assert request.dry_run
    assert fake.applies(dry_run=True) == [request]
    assert fake.applies(dry_run=False) == []


# -- errors: real-shaped Status objects, and nothing stored -----------------------------------


def no_selector() -> dict[str, Any]:
    body = deployment("web")
    del body["spec"]["selector"]
    return body


INVALID = [
    (deployment("web", image=None),
     'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value',
     [("FieldValueRequired", "spec.template.spec.containers[0].image")]),
    (no_selector(), 'Deployment.apps "web" is invalid: spec.selector: Required value',
     [("FieldValueRequired", "spec.selector")]),
    (deployment("web", selector={"app": "api"}),
     'Deployment.apps "web" is invalid: spec.template.metadata.labels: Invalid value: '
     '{"app": "web"}: `selector` does not match template `labels`',
     [("FieldValueInvalid", "spec.template.metadata.labels")]),
    (deployment("web", image=None, selector={"app": "api"}),
     'Deployment.apps "web" is invalid: [spec.template.metadata.labels: Invalid value: '
     '{"app": "web"}: `selector` does not match template `labels`, '
     "spec.template.spec.containers[0].image: Required value]",
     [("FieldValueInvalid", "spec.template.metadata.labels"),
      ("FieldValueRequired", "spec.template.spec.containers[0].image")]),
    (workload("DaemonSet", "web", image=None),
     'DaemonSet.apps "web" is invalid: spec.template.spec.containers[0].image: Required value',
     [("FieldValueRequired", "spec.template.spec.containers[0].image")]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message", "causes"), INVALID)
def test_invalid_workloads_get_422(
    fake: FakeKubeAPI, body: dict[str, Any], message: str, causes: list[tuple[str, str]]
) -> None:
    plural = body["kind"].lower() + "s"
    code, status = apply(fake, f"/apis/apps/v1/namespaces/default/{plural}/web", body)
    assert code == 422
    assert status["kind"] == "Status" and status["apiVersion"] == "v1"
    assert (status["status"], status["reason"], status["code"]) == ("Failure", "Invalid", 422)
    assert status["message"] == message
    assert status["details"]["name"] == "web"
    assert status["details"]["kind"] == body["kind"]
    assert [(c["reason"], c["field"]) for c in status["details"]["causes"]] == causes
    assert fake.get_object(body["kind"], "default", "web") is None


@pytest.mark.parametrize(
    ("path", "name", "field_message"),
    [
        ("/api/v1/namespaces/default/configmaps/Bad_Name", "Bad_Name", "RFC 1123 subdomain"),
        ("/api/v1/namespaces/Bad", "Bad", "RFC 1123 label"),
        ("/api/v1/namespaces/default/configmaps/" + "a" * 254, "a" * 254, "at most 253"),
    ],
)
def test_names_must_be_dns_1123(
    fake: FakeKubeAPI, path: str, name: str, field_message: str
) -> None:
    kind = "Namespace" if "/configmaps/" not in path else "ConfigMap"
    body = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
    code, status = apply(fake, path, body)
    assert (code, status["reason"]) == (422, "Invalid")
    assert status["details"]["causes"][0]["field"] == "metadata.name"
    assert field_message in status["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "code", "reason", "message"),
    [
        ("GET", "/apis/batch/v1/namespaces/default/jobs/x", None, "", 404, "NotFound",
         "the server could not find the requested resource"),
        ("GET", "/api/v1/namespaces/default/widgets/x", None, "", 404, "NotFound",
         "the server could not find the requested resource"),
        ("GET", "/api/v1/configmaps/x", None, "", 404, "NotFound",
         "the server could not find the requested resource"),
        ("GET", DEPLOY, None, "", 404, "NotFound", 'deployments.apps "web" not found'),
        ("DELETE", DEPLOY, None, "", 404, "NotFound", 'deployments.apps "web" not found'),
        ("PATCH", "/apis/apps/v1/namespaces/nowhere/deployments/web?fieldManager=t",
         deployment("web"), APPLY_PATCH, 404, "NotFound", 'namespaces "nowhere" not found'),
        ("PATCH", DEPLOY + "?fieldManager=t", deployment("web"),
         "application/strategic-merge-patch+json", 415, "UnsupportedMediaType",
         "the body of the request was in an unknown format - accepted media types include: "
         "application/apply-patch+yaml"),
        ("PATCH", DEPLOY, deployment("web"), APPLY_PATCH, 422, "Invalid",
         'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required '
         "for apply patch"),
        ("PATCH", DEPLOY + "?fieldManager=t&dryRun=Some", deployment("web"), APPLY_PATCH, 400,
         "BadRequest", "dryRun: Unsupported value: ('Some',): use \"All\""),
        ("PATCH", DEPLOY + "?fieldManager=t", deployment("api"), APPLY_PATCH, 400,
         "BadRequest", "the name of the object (api) does not match the name on the URL (web)"),
        ("PATCH", DEPLOY + "?fieldManager=t", deployment("web", namespace="other"), APPLY_PATCH,
         400, "BadRequest", "the namespace of the provided object does not match the namespace "
         "sent on the request"),
        ("PATCH", DEPLOY + "?fieldManager=t", workload("StatefulSet", "web"), APPLY_PATCH, 400,
         "BadRequest", "apiVersion and kind do not match the URL (apis/apps/v1)"),
        ("PATCH", DEPLOY + "?fieldManager=t", ["a", "list"], APPLY_PATCH, 400, "BadRequest",
         "an apply patch must be an object with metadata"),
        ("POST", "/apis/apps/v1/namespaces/default/deployments", deployment("web"),
         "application/json", 405, "MethodNotAllowed",
         "FakeKubeAPI does not implement lists, collections or subresources"),
        ("PUT", DEPLOY, deployment("web"), "application/json", 405, "MethodNotAllowed",
         "FakeKubeAPI does not implement PUT"),
    ],
)  # fmt: skip
def test_errors_are_status_objects(
    fake: FakeKubeAPI,
    method: str,
    path: str,
    body: Any,
    content_type: str,
    code: int,
    reason: str,
    message: str,
) -> None:
    got_code, status = call(fake, method, path, body, content_type)
    assert (got_code, status["kind"], status["apiVersion"]) == (code, "Status", "v1")
    assert (status["status"], status["reason"], status["code"]) == ("Failure", reason, code)
    assert status["message"] == message
    assert fake.get_object("Deployment", "default", "web") is None


# -- the real kubectl ------------------------------------------------------------------------

MANIFEST = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
    deployment("web", namespace="shop"),
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"},
     "data": {"mode": "live"}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
     "metadata": {"name": "reader"},
     "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
]  # fmt: skip


def kubectl(tmp_path: Path, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "KUBECONFIG": str(kubeconfig)}  # fmt: skip
    return subprocess.run(
        [KUBECTL, "--cache-dir", str(tmp_path / "kube-cache"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_S,
        check=False,
    )


def test_kubectl_server_side_apply(fake: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(yaml.safe_dump_all(MANIFEST))
    expected = [
        "namespace/shop serverside-applied",
        "deployment.apps/web serverside-applied",
        "configmap/cfg serverside-applied",
        "clusterrole.rbac.authorization.k8s.io/reader serverside-applied",
    ]

    first = kubectl(tmp_path, kubeconfig, "apply", "--server-side", "-f", str(manifest))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == expected
    stored = fake.get_object("Deployment", "shop", "web")
    assert stored is not None and stored["spec"]["replicas"] == 2

    again = kubectl(tmp_path, kubeconfig, "apply", "--server-side", "-f", str(manifest))
    assert again.returncode == 0, again.stderr
    assert fake.get_object("Deployment", "shop", "web") == stored  # a no-op re-apply
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert len(patches) == 8
    assert {r.query["fieldManager"] for r in patches} == {("kubectl",)}
    assert {r.content_type for r in patches} == {APPLY_PATCH}

    got = kubectl(tmp_path, kubeconfig, "get", "-n", "shop", "deployment", "web", "-o", "json")
    assert got.returncode == 0, got.stderr
    assert (
        json.loads(got.stdout)["metadata"]["resourceVersion"]
        == (stored["metadata"]["resourceVersion"])
    )


def test_kubectl_sees_422_and_404_status(fake: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment("web", image=None)))

    invalid = kubectl(tmp_path, kubeconfig, "apply", "--server-side", "-f", str(bad))
    assert invalid.returncode != 0
    # kubectl rewrites the message from the Status details (kind, name, causes)
    assert invalid.stderr == (
        'The Deployment "web" is invalid: spec.template.spec.containers[0].image: Required value\n'
    )

    missing = kubectl(tmp_path, kubeconfig, "get", "-n", "default", "configmap", "nothing")
    assert missing.returncode != 0
    assert missing.stderr == 'Error from server (NotFound): configmaps "nothing" not found\n'
    # kubectl looks up the namespace to explain a miss in one that does not exist
    elsewhere = kubectl(tmp_path, kubeconfig, "get", "-n", "shop", "configmap", "nothing")
    assert elsewhere.stderr == 'Error from server (NotFound): namespaces "shop" not found\n'
    assert fake.get_object("Deployment", "default", "web") is None
