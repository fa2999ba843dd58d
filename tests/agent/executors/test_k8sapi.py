"""KubeApi and friends against the real kube-apiserver, through the real ``kubernetes`` client.

Requests go to the session's API server directly (TLS, token), or through ``kube_proxy``
where the test must see what was sent or inject a fault.
"""

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
    MAX_WARNING_TEXT,
    K8sStatusError,
    K8sStepError,
    KubeApi,
    Resource,
    load_configuration,
    warning_texts,
)
from tests.agent.executors.k8scase import deployment
from tests.fixtures.kube import KubeProxy, KubeServer

HELD_DEADLINE_S = 2.0  # seconds a request may take in the test of an answer that never comes


def configuration_for(kubeconfig: Path, workdir: Path) -> Configuration:
    connection = Connection("cluster", "kubernetes", {"kubeconfig": str(kubeconfig)})
    return load_configuration(connection, workdir)


@pytest.fixture
def configuration(tmp_path: Path, kube_server: KubeServer) -> Configuration:
    return configuration_for(kube_server.kubeconfig, tmp_path)


@pytest.fixture
def api(configuration: Configuration) -> Iterator[KubeApi]:
    with ApiClient(configuration) as client:
        yield KubeApi(client, time.monotonic() + 60, threading.Event(), time.monotonic)


@pytest.fixture
def proxied_api(tmp_path: Path, kube_proxy: KubeProxy) -> Iterator[KubeApi]:
    configuration = configuration_for(kube_proxy.write_kubeconfig(tmp_path / "proxied"), tmp_path)
    with ApiClient(configuration) as client:
        yield KubeApi(client, time.monotonic() + 60, threading.Event(), time.monotonic)


def test_configuration_is_fresh_and_not_the_global_default(
    configuration: Configuration, kube_server: KubeServer
) -> None:
    assert configuration.host == kube_server.url
    assert Configuration.get_default_copy().host != kube_server.url


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


def test_resolve_namespaced_and_cluster_scoped(proxied_api: KubeApi, kube_proxy: KubeProxy) -> None:
    assert proxied_api.resolve("apps/v1", "Deployment", "m") == Resource(
        "apps", "v1", "Deployment", "deployments", True
    )
    assert proxied_api.resolve("v1", "Namespace", "m").is_namespace
    assert not proxied_api.resolve("rbac.authorization.k8s.io/v1", "ClusterRole", "m").namespaced
    proxied_api.resolve("apps/v1", "StatefulSet", "m")
    discovery = [r.path for r in kube_proxy.requests]
    assert discovery == ["/apis/apps/v1", "/api/v1", "/apis/rbac.authorization.k8s.io/v1"]


@pytest.mark.parametrize(
    ("api_version", "kind", "message"),
    [
        ("example.com/v1", "Widget", "a.yaml: apiVersion example.com/v1 is not served by "),
        ("v2", "ConfigMap", "a.yaml: apiVersion v2 is not served by "),
        ("apps/v1", "ConfigMap", "a.yaml: kind ConfigMap is not served in apps/v1 by "),
        # a subresource is no kind of its own
        ("apps/v1", "Scale", "a.yaml: kind Scale is not served in apps/v1 by "),
    ],
)
def test_resolve_unknown(
    api: KubeApi, kube_server: KubeServer, api_version: str, kind: str, message: str
) -> None:
    with pytest.raises(K8sStepError) as info:
        api.resolve(api_version, kind, "a.yaml")
    assert str(info.value) == message + kube_server.url


def test_get_missing_object_is_none(api: KubeApi, kube_namespace: str) -> None:
    assert api.get(f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/nothing") is None


def test_apply_and_dry_run(api: KubeApi, kube_server: KubeServer, kube_namespace: str) -> None:
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/web"
    body = deployment("web", namespace=kube_namespace)

    would_be = api.apply(path, body, dry_run=True)
    assert would_be["metadata"]["name"] == "web"
    assert kube_server.get(path) is None

    created = api.apply(path, body, dry_run=False)
    assert created["metadata"]["resourceVersion"]
    assert api.get(path) == created


def test_apply_keeps_characters_beyond_the_basic_plane(api: KubeApi,
                                                       kube_namespace: str) -> None:
    """An emoji (beyond U+FFFF) in an object applies and reads back as sent (the client's
    JSON wrote it as a surrogate pair, which the server's YAML decoder refused)."""
    path = f"/api/v1/namespaces/{kube_namespace}/configmaps/notes"
    data = {"note": "ship it 😀 — ü \"q\" \n# not a comment", "empty": ""}
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "notes", "namespace": kube_namespace}, "data": data}
    assert api.apply(path, body, dry_run=True)["data"] == data
    assert api.apply(path, body, dry_run=False)["data"] == data
    got = api.get(path)
    assert got is not None and got["data"] == data


def test_apply_sends_strict_field_validation(
    proxied_api: KubeApi, kube_proxy: KubeProxy, kube_namespace: str
) -> None:
    path = f"/api/v1/namespaces/{kube_namespace}/configmaps/c"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}

    proxied_api.apply(path, body, dry_run=True)
    proxied_api.apply(path, body, dry_run=False)

    queries = [r.query for r in kube_proxy.patches()]
    assert queries == [
        {
            "fieldManager": ("tiangong",),
            "force": ("true",),
            "fieldValidation": ("Strict",),
            "dryRun": ("All",),
        },
        {"fieldManager": ("tiangong",), "force": ("true",), "fieldValidation": ("Strict",)},
    ]


def test_rejection_carries_status_message_and_causes(api: KubeApi, kube_namespace: str) -> None:
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/web"
    with pytest.raises(K8sStatusError) as info:
        api.apply(path, deployment("web", namespace=kube_namespace, image=None), dry_run=True)
    error = info.value
    assert (error.code, error.reason) == (422, "Invalid")
    assert error.message == (
        'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value'
    )
    assert error.causes == ("spec.template.spec.containers[0].image: Required value",)
    assert str(error) == error.message


def test_unknown_field_is_refused(
    api: KubeApi, kube_server: KubeServer, kube_namespace: str
) -> None:
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/web"
    body = deployment("web", namespace=kube_namespace)
    body["spec"]["replcas"] = 3
    for dry_run in (True, False):
        with pytest.raises(K8sStatusError) as info:
            api.apply(path, body, dry_run=dry_run)
        assert info.value.code == 500  # the server's own answer to an untypable apply
        assert ".spec.replcas: field not declared in schema" in info.value.message
    assert kube_server.get(path) is None


def test_conflict_unless_forced(api: KubeApi, kube_server: KubeServer, kube_namespace: str) -> None:
    # Another manager applies replicas without forcing: 409 naming the owner; the agent's
    # forced apply takes the field back.
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/web"
    api.apply(path, deployment("web", namespace=kube_namespace, replicas=2), dry_run=False)
    other = deployment("web", namespace=kube_namespace, replicas=4)
    query = {"fieldManager": "ops"}
    conflict = kube_server.request(
        "PATCH", path, other, content_type="application/apply-patch+yaml", query=query
    )
    assert (conflict.status, conflict.body["reason"]) == (409, "Conflict")
    assert 'conflict with "tiangong"' in conflict.body["message"]
    assert kube_server.get(path)["spec"]["replicas"] == 2  # type: ignore[index]
    forced = kube_server.request(
        "PATCH",
        path,
        other,
        content_type="application/apply-patch+yaml",
        query=query | {"force": "true"},
    )
    assert forced.status == 200

    taken_back = api.apply(path, deployment("web", namespace=kube_namespace), dry_run=False)

    assert taken_back["spec"]["replicas"] == 2


def test_warnings_are_collected(api: KubeApi, kube_namespace: str) -> None:
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/web"
    body = deployment("web", namespace=kube_namespace)
    body["spec"]["template"]["spec"]["nodeSelector"] = {"beta.kubernetes.io/arch": "amd64"}
    warnings: list[str] = []

    api.apply(path, body, dry_run=True, warnings=warnings)
    api.apply(path, body, dry_run=False, warnings=warnings)

    assert len(warnings) == 2
    assert warnings[0] == warnings[1]
    assert "beta.kubernetes.io/arch" in warnings[0] and "deprecated" in warnings[0]


@pytest.mark.parametrize(
    ("values", "texts"),
    [
        (['299 - "a \\"quoted\\" word"'], ['a "quoted" word']),
        (['299 - "one"', '299 - "two, with a comma"'], ["one", "two, with a comma"]),
        (["not the usual form"], ["not the usual form"]),
        (['299 - "line\none"'], ["line one"]),
        (['299 - "' + "w" * 1000 + '"'], ["w" * MAX_WARNING_TEXT]),
    ],
)
def test_warning_texts(values: list[str], texts: list[str]) -> None:
    assert warning_texts(values) == texts


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
    tmp_path: Path, kube_proxy: KubeProxy
) -> None:
    configuration = configuration_for(kube_proxy.write_kubeconfig(tmp_path / "k"), tmp_path)
    cancel = threading.Event()
    with ApiClient(configuration) as client:
        cancelled = KubeApi(client, time.monotonic() + 60, cancel, time.monotonic)
        late = KubeApi(client, time.monotonic() - 1, threading.Event(), time.monotonic)
        cancel.set()
        with pytest.raises(K8sStepError, match=r"^cancelled$"):
            cancelled.request("GET", "/version")
        with pytest.raises(K8sStepError, match=r"^the step's time limit ran out$"):
            late.request("GET", "/version")
    assert kube_proxy.requests == []


def test_an_answer_that_never_comes_ends_at_the_step_deadline(
    tmp_path: Path, kube_proxy: KubeProxy
) -> None:
    kube_proxy.inject(lambda r: r.path == "/version", hold=True)
    configuration = configuration_for(kube_proxy.write_kubeconfig(tmp_path / "k"), tmp_path)
    with ApiClient(configuration) as client:
        api = KubeApi(client, time.monotonic() + HELD_DEADLINE_S, threading.Event(), time.monotonic)
        with pytest.raises(K8sStepError) as info:
            api.request("GET", "/version")
    assert str(info.value) == (
        f"cannot reach the Kubernetes API server at {kube_proxy.url}: no answer in time"
    )
    assert [r.path for r in kube_proxy.requests] == ["/version"]  # not sent again


def test_a_cut_connection_is_not_retried(tmp_path: Path, kube_proxy: KubeProxy) -> None:
    kube_proxy.inject(lambda r: r.path == "/version", drop=True)
    configuration = configuration_for(kube_proxy.write_kubeconfig(tmp_path / "k"), tmp_path)
    with ApiClient(configuration) as client:
        api = KubeApi(client, time.monotonic() + 60, threading.Event(), time.monotonic)
        with pytest.raises(K8sStepError) as info:
            api.request("GET", "/version")
    assert str(info.value).startswith(f"cannot reach the Kubernetes API server at {kube_proxy.url}")
    assert [r.path for r in kube_proxy.requests] == ["/version"]


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
