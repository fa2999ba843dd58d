"""KubeApi and friends against FakeKubeAPI, through the real ``kubernetes`` client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, Configuration

from agent.executors.base import Connection
from agent.executors.k8sapi import (
    K8sStatusError,
    K8sStepError,
    KubeApi,
    Resource,
    load_configuration,
)
from tests.fakekube.fake_kube_api import FakeKubeAPI
from tests.fakekube.fixtures import deployment


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def configuration(tmp_path: Path, fake: FakeKubeAPI) -> Configuration:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    connection = Connection("cluster", "kubernetes", {"kubeconfig": str(kubeconfig)})
    return load_configuration(connection, tmp_path)


@pytest.fixture
def api(configuration: Configuration) -> Iterator[KubeApi]:
    with ApiClient(configuration) as client:
        yield KubeApi(client, time.monotonic() + 60, threading.Event(), time.monotonic)


def test_configuration_is_fresh_and_not_the_global_default(
    configuration: Configuration, fake: FakeKubeAPI
) -> None:
    assert configuration.host == fake.url
    assert Configuration.get_default_copy().host != fake.url


@pytest.mark.parametrize(
    ("group", "namespaced", "path"),
    [
        ("", True, "/api/v1/namespaces/shop/configmaps/a.b"),
        ("apps", True, "/apis/apps/v1/namespaces/shop/configmaps/a.b"),
        ("rbac.authorization.k8s.io", False, "/apis/rbac.authorization.k8s.io/v1/configmaps/a.b"),
    ],
)
def test_resource_paths(group: str, namespaced: bool, path: str) -> None:
    resource = Resource(group, "v1", "ConfigMap", "configmaps", namespaced)
    assert resource.path("shop", "a.b") == path


def test_resource_path_quotes_what_is_not_a_name() -> None:
    resource = Resource("", "v1", "ConfigMap", "configmaps", True)
    assert resource.path("a/b", "c?d") == "/api/v1/namespaces/a%2Fb/configmaps/c%3Fd"


def test_resolve_namespaced_and_cluster_scoped(api: KubeApi, fake: FakeKubeAPI) -> None:
    assert api.resolve("apps/v1", "Deployment", "m") == Resource(
        "apps", "v1", "Deployment", "deployments", True
    )
    assert api.resolve("v1", "Namespace", "m").is_namespace
    assert not api.resolve("rbac.authorization.k8s.io/v1", "ClusterRole", "m").namespaced
    api.resolve("apps/v1", "StatefulSet", "m")
    discovery = [r.path for r in fake.requests]
    assert discovery == ["/apis/apps/v1", "/api/v1", "/apis/rbac.authorization.k8s.io/v1"]


@pytest.mark.parametrize(
    ("api_version", "kind", "message"),
    [
        ("example.com/v1", "Widget", "a.yaml: apiVersion example.com/v1 is not served by "),
        ("v2", "ConfigMap", "a.yaml: apiVersion v2 is not served by "),
        ("apps/v1", "ConfigMap", "a.yaml: kind ConfigMap is not served in apps/v1 by "),
    ],
)
def test_resolve_unknown(
    api: KubeApi, fake: FakeKubeAPI, api_version: str, kind: str, message: str
) -> None:
    with pytest.raises(K8sStepError) as info:
        api.resolve(api_version, kind, "a.yaml")
    assert str(info.value) == message + fake.url


def test_get_missing_object_is_none(api: KubeApi) -> None:
    assert api.get("/apis/apps/v1/namespaces/default/deployments/nothing") is None


def test_apply_and_dry_run(api: KubeApi, fake: FakeKubeAPI) -> None:
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    body = deployment("web", namespace="default")

    would_be = api.apply(path, body, dry_run=True)
    assert would_be["metadata"]["name"] == "web"
    assert fake.get_object("Deployment", "default", "web") is None

    created = api.apply(path, body, dry_run=False)
    assert created["metadata"]["resourceVersion"]
    assert api.get(path) == created


def test_rejection_carries_status_message_and_causes(api: KubeApi) -> None:
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    with pytest.raises(K8sStatusError) as info:
        api.apply(path, deployment("web", namespace="default", image=None), dry_run=True)
    error = info.value
    assert (error.code, error.reason) == (422, "Invalid")
    assert error.message == (
        'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value'
    )
    assert error.causes == ("spec.template.spec.containers[0].image: Required value",)
    assert str(error) == error.message


@pytest.mark.parametrize(
    ("body", "code", "reason", "message", "causes"),
    [
        (json.dumps({"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
                     "message": 'deployments.apps "web" is forbidden: User "x" cannot patch'}),
         403, "Forbidden", 'deployments.apps "web" is forbidden: User "x" cannot patch', ()),
        (json.dumps({"kind": "Status", "reason": "Invalid", "details": {"causes": [
            {"field": "spec.x", "message": "Invalid value"}, {"message": "no field"}, "junk"]}}),
         422, "Invalid", "HTTP 422 Invalid", ("spec.x: Invalid value", "(object): no field")),
        (b"<html>\n  502 Bad Gateway\n</html>", 502, "", "HTTP 502: <html> 502 Bad Gateway </html>",
         ()),
        ("x" * 1000, 500, "", "HTTP 500: " + "x" * 300, ()),
        (None, 503, "", "HTTP 503: ", ()),
    ],
)  # fmt: skip
def test_status_error_from_body(
    body: object, code: int, reason: str, message: str, causes: tuple[str, ...]
) -> None:
    error = K8sStatusError.from_body(code, body)
    assert (error.code, error.reason, error.message, error.causes) == (
        code,
        reason,
        message,
        causes,
    )


def test_cancel_and_deadline_are_checked_before_each_request(
    configuration: Configuration, fake: FakeKubeAPI
) -> None:
    cancel = threading.Event()
    with ApiClient(configuration) as client:
        cancelled = KubeApi(client, time.monotonic() + 60, cancel, time.monotonic)
        late = KubeApi(client, time.monotonic() - 1, threading.Event(), time.monotonic)
        cancel.set()
        with pytest.raises(K8sStepError, match=r"^cancelled$"):
            cancelled.request("GET", "/version")
        with pytest.raises(K8sStepError, match=r"^the step's time limit ran out$"):
            late.request("GET", "/version")
    assert fake.requests == []


def test_kubeconfig_certificates_go_to_the_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', "
        "certificate-authority-data: 'LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=='}}]\n"
        "users: [{name: u, user: {token: t0ken}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    connection = Connection("cluster", "kubernetes", {"kubeconfig": str(kubeconfig)})

    configuration = load_configuration(connection, workdir)

    assert configuration.host == "https://127.0.0.1:6443"
    assert Path(configuration.ssl_ca_cert).parent == workdir
