"""The hub's Helm chart (docker/helm/tiangong) checked by the real tools: `helm lint` and
`helm template` (helm.sh/helm/v4, built by `make helm`) for each values file, and every
rendered object sent to the real kube-apiserver (the `kube_server` fixture) as a server-side
dry run, so a field the API does not know, a wrong type or a bad quantity fails here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kube import KubeServer
from tests.helm.chart import (
    CHART,
    VALUES,
    HelmMissingError,
    by_kind,
    documents,
    helm,
    helm_path,
    render,
    values_args,
)

CASES = sorted(VALUES)


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        helm_path()
    except HelmMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="module")
def rendered(helm_home: Path) -> dict[str, str]:
    return {case: render(helm_home, VALUES[case]) for case in CASES}


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(docs)[("Deployment", "hub-tiangong")]["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in spec["containers"] if c["name"] == name)
    return found


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict_passes(helm_home: Path, case: str) -> None:
    proc = helm(helm_home, "lint", "--strict", str(CHART), *values_args(VALUES[case]))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def test_default_values_two_containers_one_volume_non_root(rendered: dict[str, str]) -> None:
    docs = documents(rendered["default"])
    kinds = sorted(by_kind(docs))
    assert kinds == [("Deployment", "hub-tiangong"),
                     ("PersistentVolumeClaim", "hub-tiangong-data"),
                     ("Service", "hub-tiangong-live"), ("Service", "hub-tiangong-web")]
    deployment = by_kind(docs)[("Deployment", "hub-tiangong")]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert [c["name"] for c in spec["initContainers"]] == ["init"]
    assert [c["name"] for c in spec["containers"]] == ["web", "live"]
    web, live = container(spec, "web"), container(spec, "live")
    assert web["args"] == ["hub", "serve", "--bind", "0.0.0.0:8400"]
    assert live["args"] == ["hub", "live", "--bind", "0.0.0.0:8401"]
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http",
                                               "scheme": "HTTP"}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http",
                                                "scheme": "HTTP"}
    assert live["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "live",
                                                "scheme": "HTTPS"}  # the live port is TLS
    assert live["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for c in [*spec["initContainers"], *spec["containers"]]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["data"] == "/var/lib/tiangong-hub"
        assert "TIANGONG_HUB_DATABASE_URL" not in {e["name"] for e in c["env"]}  # SQLite
    claim = spec["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == "hub-tiangong-data"
    # The live server's certificate covers the names agents in the cluster use.
    names = {e["name"]: e.get("value") for e in web["env"]}["TIANGONG_HUB_TLS_NAMES"].split()
    assert "hub-tiangong-live.tiangong.svc" in names


def test_postgres_ingress_values_take_the_url_from_a_secret(rendered: dict[str, str]) -> None:
    docs = documents(rendered["postgres-ingress"])
    objects = by_kind(docs)
    spec = pod_spec(docs)
    for c in [*spec["initContainers"], *spec["containers"]]:
        env = {e["name"]: e for e in c["env"]}
        assert env["TIANGONG_HUB_DATABASE_URL"]["valueFrom"] == {
            "secretKeyRef": {"name": "tiangong-db", "key": "url"}}
        assert "value" not in env["TIANGONG_HUB_DATABASE_URL"]  # never the URL itself
        assert env["TIANGONG_HUB_ADMIN_PASSWORD_FILE"]["value"].startswith("/run/secrets/")
    ingress = objects[("Ingress", "hub-tiangong-web")]
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "hub.plant-a.example.org"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": "hub-tiangong-web", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "hub-plant-a-tls"
    assert objects[("Service", "hub-tiangong-live")]["spec"]["type"] == "LoadBalancer"
    pvc = objects[("PersistentVolumeClaim", "hub-tiangong-data")]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_single_container_values_run_live_as_a_child(rendered: dict[str, str]) -> None:
    docs = documents(rendered["single-container"])
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["containers"]] == ["web"]
    web = container(spec, "web")
    assert web["args"] == ["hub", "serve", "--bind", "0.0.0.0:8400",
                           "--live-bind", "0.0.0.0:8401"]
    assert {p["name"] for p in web["ports"]} == {"http", "live"}
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "tiangong-hub-data"
    assert ("PersistentVolumeClaim", "hub-tiangong-data") not in by_kind(docs)  # existing one
    live = by_kind(docs)[("Service", "hub-tiangong-live")]
    assert live["spec"]["ports"][0]["nodePort"] == 30401


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_passes_a_server_side_dry_run(
    helm_home: Path, case: str, kube_server: KubeServer, kube_namespace: str
) -> None:
    text = render(helm_home, VALUES[case], namespace=kube_namespace)
    wanted = sorted(f"{d['kind'].lower()}/{d['metadata']['name']}" for d in documents(text))

    proc = kube_server.kubectl("apply", "--dry-run=server", "--namespace", kube_namespace,
                               "-o", "json", "-f", "-", stdin=text, check=False)

    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    items = answer["items"] if answer.get("kind") == "List" else [answer]
    assert sorted(f"{i['kind'].lower()}/{i['metadata']['name']}" for i in items) == wanted
    for item in items:  # the server's own defaults: it admitted and typed every object
        assert item["metadata"]["namespace"] == kube_namespace
        assert item["metadata"]["creationTimestamp"]
    deployment = next(i for i in items if i["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Always" and pod["dnsPolicy"] == "ClusterFirst"
    assert proc.stderr.strip() == ""  # no warning either
    assert nothing_in(kube_server, kube_namespace)


def nothing_in(kube_server: KubeServer, namespace: str) -> bool:
    got = kube_server.kubectl("get", "deployments,services,pvc,ingresses", "--namespace",
                              namespace, "-o", "name")
    return got.stdout.strip() == ""


def test_a_value_of_the_wrong_type_is_refused_by_the_chart(helm_home: Path) -> None:
    proc = helm(helm_home, "template", "hub", str(CHART), "--set", "web.port=http")

    assert proc.returncode != 0
    assert "web" in proc.stderr and "port" in proc.stderr and "integer" in proc.stderr
    assert proc.stdout == ""


def test_a_misspelt_value_is_refused_by_the_chart(helm_home: Path) -> None:
    proc = helm(helm_home, "lint", "--strict", str(CHART), "--set", "persistence.sise=5Gi")

    assert proc.returncode != 0
    assert "sise" in proc.stdout + proc.stderr


def test_a_broken_quantity_renders_but_the_api_server_refuses_it(
    helm_home: Path, kube_server: KubeServer, kube_namespace: str
) -> None:
    text = render(helm_home, None, namespace=kube_namespace,
                  sets=("web.resources.requests.memory=lots",))

    proc = kube_server.kubectl("apply", "--dry-run=server", "--namespace", kube_namespace,
                               "-f", "-", stdin=text, check=False)

    assert proc.returncode != 0
    assert "quantities must match the regular expression" in proc.stderr
    assert 'Deployment in version "v1" cannot be handled' in proc.stderr
    assert nothing_in(kube_server, kube_namespace)
