"""The test API server refuses and serves what a production one does, seen with real kubectl.

Each probe below was one the former fake got wrong (issue 11): the built ``kubectl`` (same
release as the server) drives the session's server in the test's own namespace.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.kube import KubeServer
from tests.fixtures.kubeserver import KUBECTL_TIMEOUT_S, kube_binaries

VERSION = "v1.37.2"  # the k8s.io/kubernetes release pinned in tests/kube/apiserver/go.mod


def deployment(ns: str, replicas: Any = 2, **spec: Any) -> dict[str, Any]:
    labels = {"app": "web"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
            },
        }
        | spec,
    }


def apply(
    kube: KubeServer, tmp_path: Path, doc: dict[str, Any], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    return kube.kubectl("apply", "--server-side", *args, "-f", str(manifest), check=check)


def test_server_and_client_are_the_pinned_release(kube_server: KubeServer) -> None:
    versions = json.loads(kube_server.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == VERSION
    assert versions["clientVersion"]["gitVersion"] == VERSION
    assert kube_binaries()[0].parent == kube_server.kubectl_path.parent


def test_unknown_field_is_refused(
    kube_server: KubeServer, kube_namespace: str, tmp_path: Path
) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": kube_namespace},
        "dataa": {"a": "1"},
    }

    refused = apply(kube_server, tmp_path, cm, check=False)

    assert refused.returncode != 0
    assert ".dataa: field not declared in schema" in refused.stderr
    assert kube_server.get(f"/api/v1/namespaces/{kube_namespace}/configmaps/cfg") is None


def test_wrong_type_is_refused(
    kube_server: KubeServer, kube_namespace: str, tmp_path: Path
) -> None:
    refused = apply(kube_server, tmp_path, deployment(kube_namespace, replicas="two"), check=False)

    assert refused.returncode != 0
    assert "spec.replicas" in refused.stderr
    assert kube_server.get(f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/web") is None


def test_another_managers_field_conflicts_unless_forced(
    kube_server: KubeServer, kube_namespace: str, tmp_path: Path
) -> None:
    apply(kube_server, tmp_path, deployment(kube_namespace), "--field-manager", "release")
    scaled = deployment(kube_namespace, replicas=5)

    refused = apply(kube_server, tmp_path, scaled, "--field-manager", "ops", check=False)

    assert refused.returncode != 0
    assert 'conflict with "release": .spec.replicas' in refused.stderr
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/web"
    assert kube_server.get(path)["spec"]["replicas"] == 2  # type: ignore[index]
    apply(kube_server, tmp_path, scaled, "--field-manager", "ops", "--force-conflicts")
    assert kube_server.get(path)["spec"]["replicas"] == 5  # type: ignore[index]


def test_key_dropped_from_the_manifest_is_removed(
    kube_server: KubeServer, kube_namespace: str, tmp_path: Path
) -> None:
    data = {"a": "1", "b": "2"}
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": kube_namespace},
        "data": data,
    }
    apply(kube_server, tmp_path, cm)
    del data["b"]

    apply(kube_server, tmp_path, cm)

    got = json.loads(
        kube_server.kubectl("get", "-n", kube_namespace, "cm", "cfg", "-o", "json").stdout
    )
    assert got["data"] == {"a": "1"}


def test_lists_and_short_names_are_served(
    kube_server: KubeServer, kube_namespace: str, tmp_path: Path
) -> None:
    apply(kube_server, tmp_path, deployment(kube_namespace))

    for resource in ("deployments", "deploy", "deployments.apps"):
        listed = kube_server.kubectl("get", "-n", kube_namespace, resource, "-o", "name")
        assert listed.stdout == "deployment.apps/web\n"


def test_rollout_status_and_wait_follow_the_status_the_test_writes(
    kube_server: KubeServer, kube_namespace: str, tmp_path: Path
) -> None:
    apply(kube_server, tmp_path, deployment(kube_namespace))
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/web"
    argv = [
        str(kube_server.kubectl_path),
        "--cache-dir",
        str(tmp_path / "cache"),
        "wait",
        "-n",
        kube_namespace,
        "deployment/web",
        "--for=condition=Available",
        "--timeout=60s",
    ]
    env = {"KUBECONFIG": str(kube_server.kubeconfig), "HOME": str(tmp_path)}
    # kubectl wait watches the Deployment; the test, playing the controller, then completes it
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as waiting:
        available = {
            "type": "Available",
            "status": "True",
            "reason": "MinimumReplicasAvailable",
            "lastUpdateTime": "2026-12-01T10:00:00Z",
            "lastTransitionTime": "2026-12-01T10:00:00Z",
        }
        kube_server.set_status(
            path,
            {
                "observedGeneration": 1,
                "replicas": 2,
                "updatedReplicas": 2,
                "readyReplicas": 2,
                "availableReplicas": 2,
                "conditions": [available],
            },
        )
        out, err = waiting.communicate(timeout=KUBECTL_TIMEOUT_S)
    assert waiting.returncode == 0, err
    assert out == "deployment.apps/web condition met\n"

    status = kube_server.kubectl(
        "rollout", "status", "-n", kube_namespace, "deploy/web", "--timeout=30s"
    )
    assert status.stdout == 'deployment "web" successfully rolled out\n'


def test_each_test_has_its_own_namespace(kube_server: KubeServer, kube_namespace: str) -> None:
    ns = kube_server.get(f"/api/v1/namespaces/{kube_namespace}")
    assert ns is not None
    assert ns["metadata"]["labels"]["tiangong.test/test"] == "true"
    assert kube_namespace.startswith("t-test-each-test-has-its-own-namespace-")
