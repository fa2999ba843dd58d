"""Kubernetes and HTTP job templates (hub.services.templates): checked when added — every
placeholder names a parameter and stands where a value may (a manifest: the whole value of
its line; a request: the URL's path or query, the JSON body, a secret header's secret), no
secret-ref in a manifest, the manifest rendered with sample values is Kubernetes objects,
the step is a valid release step — each refusal naming the file, the field and the rule and
storing nothing; values are substituted as YAML literals, percent-encoded URL text and JSON
literals that hostile values cannot break out of; a run is an ad-hoc release of one step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from hub.db import AuditEvent, JobTemplate, Release
from hub.errors import ValidationError
from hub.services.agents import enroll_agent
from hub.services.templates import add_template, instantiate, release_of, run_template
from tests.hub.conftest import World
from tests.hub.services.test_deployments import request

K8S_DEF = """name = "scale-web"
kind = "k8s"
file = "web.yaml"
description = "scale the web deployment"
[step]
connection = "kube"
namespace = "shop"
[[params]]
name = "replicas"
type = "int"
min = 1
max = 20
[[params]]
name = "image"
type = "string"
default = "nginx:1.27"
"""
MANIFEST = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: {{replicas}}
  template:
    spec:
      containers:
        - name: web
          image: {{ image }}   # the image to run
          args:
            - {{image}}
"""
HTTP_DEF = """name = "flush-item"
kind = "http"
file = "body.json"
[step]
url = "https://cache.plant-a.internal/items/{{item}}?mode={{mode}}"
method = "POST"
secret_headers = { Authorization = "{{token}}" }
expect = [204]
[[params]]
name = "item"
type = "string"
[[params]]
name = "mode"
type = "enum"
choices = ["soft", "hard"]
default = "soft"
[[params]]
name = "token"
type = "secret-ref"
choices = ["cache-token", "cache-admin"]
default = "cache-token"
"""
BODY = '{"item": {{item}}, "hard": {{mode}}}\n'
HOSTILE = "x\"' # y\n  evil: {z}\\ ü 😀 $tg$ &a *b !c"


def _definition(tmp: Path, text: str, file: str, content: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / file).write_text(content)
    path = tmp / "template.toml"
    path.write_text(text)
    return path


def _stored(world: World) -> tuple[int, list[str]]:
    events = world.session.scalars(select(AuditEvent.action)
                                   .where(AuditEvent.action.like("template.%")))
    return (world.session.scalar(select(func.count()).select_from(JobTemplate)) or 0,
            list(events))


def test_a_k8s_template_renders_values_as_yaml_literals(world: World, tmp_path: Path) -> None:
    template = add_template(world.ctx("dev"),
                            _definition(tmp_path, K8S_DEF, "web.yaml", MANIFEST))
    assert (template.kind, template.version) == ("k8s", 1)
    with pytest.raises(ValidationError, match="parameter replicas: 50 is above the maximum"):
        instantiate(template, {"replicas": "50"})
    instance = instantiate(template, {"replicas": "3", "image": HOSTILE})
    assert instance.step["manifests"] == ["run.yaml"] and instance.file_name == "run.yaml"
    (doc,) = yaml.safe_load_all(instance.content)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    assert doc["spec"]["replicas"] == 3 and doc["metadata"] == {"name": "web",
                                                                  "labels": {"app": "web"}}
    assert container == {"name": "web", "image": HOSTILE, "args": [HOSTILE]}

    enroll_agent(world.ctx("admin"), "test", request("t1", "test-1"))
    work = tmp_path / "work"
    work.mkdir()
    made = run_template(world.ctx("admin"), instance, "test-1", work)
    (step,) = made.release.steps
    assert (step["kind"], step["manifests"], step["namespace"]) == ("k8s", ["run.yaml"],
                                                                   "shop")
    files = release_of(world.ctx("dev"), instantiate(template, {"replicas": "2"}), "ops",
                       "1.0.0")
    assert sorted(files) == ["release.toml", "run.yaml"]
    assert b"replicas: 2\n" in files["run.yaml"]


def test_an_http_template_encodes_url_body_and_secret_header(world: World,
                                                             tmp_path: Path) -> None:
    template = add_template(world.ctx("dev"),
                            _definition(tmp_path, HTTP_DEF, "body.json", BODY))
    instance = instantiate(template, {"item": "a/b?c=d&e#f \"g\"", "mode": "hard"})
    assert instance.step["url"] == (
        "https://cache.plant-a.internal/items/a%2Fb%3Fc%3Dd%26e%23f%20%22g%22?mode=hard")
    assert json.loads(instance.content) == {"item": "a/b?c=d&e#f \"g\"", "hard": "hard"}
    assert instance.step["secret_headers"] == {"Authorization": "cache-token"}
    assert instance.step["secrets"] == ["cache-token"] and instance.step["body"] == "run.json"
    enroll_agent(world.ctx("admin"), "test", request("t1", "test-1"))
    work = tmp_path / "work"
    work.mkdir()
    made = run_template(world.ctx("admin"), instance, "test-1", work)
    assert made.release.steps[0]["url"] == instance.step["url"]

    # Without a body: a GET.
    bare = HTTP_DEF.replace('file = "body.json"\n', "").replace('"POST"', '"GET"')
    got = add_template(world.ctx("dev"), _definition(tmp_path / "bare", bare, "x", ""))
    plain = instantiate(got, {"item": "7"})
    assert "body" not in plain.step and plain.file_name is None
    assert sorted(release_of(world.ctx("dev"), plain, "ops", "1.0.1")) == ["release.toml"]
    made = run_template(world.ctx("admin"), plain, "test-1", work)
    assert made.release.files == [] and "body" not in made.release.steps[0]


def test_an_http_template_refuses_a_secret_its_author_did_not_allow(
        world: World, tmp_path: Path) -> None:
    template = add_template(world.ctx("dev"),
                            _definition(tmp_path, HTTP_DEF, "body.json", BODY))
    allowed = instantiate(template, {"item": "a", "token": "cache-admin"})
    assert allowed.step["secrets"] == ["cache-admin"]
    before = _stored(world)
    with pytest.raises(ValidationError, match=(
            r"^template flush-item v1: parameter token: secret 'db-password' is not one the "
            r"template allows \(cache-token, cache-admin\)$")) as refused:
        instantiate(template, {"item": "a", "token": "db-password"})
    event = refused.value.audit
    assert event is not None and (event.action, event.target_id) == ("template.refused",
                                                                    "flush-item v1")
    assert event.details == {"parameter": "token", "secret": "db-password",
                             "allowed": ["cache-token", "cache-admin"]}
    assert _stored(world) == before
    assert world.session.scalar(select(func.count()).select_from(Release)) == 0


_REFUSALS: list[tuple[str, str, str, str, str]] = [
    (K8S_DEF, "web.yaml", MANIFEST.replace("{{replicas}}", "{{count}}"),
     "file web.yaml: placeholder {{count}} names no parameter", "unknown placeholder"),
    (K8S_DEF, "web.yaml", MANIFEST.replace("image: {{ image }}", 'image: "repo/{{image}}"'),
     "file web.yaml: line 13: placeholder {{image}} is not a whole value", "inside quotes"),
    (K8S_DEF, "web.yaml", MANIFEST + "# owner {{image}}\n",
     "line 16: placeholder {{image}} is not a whole value", "in a comment"),
    (K8S_DEF, "web.yaml", MANIFEST.replace("  name: web\n", "  name: web-{{image}}\n", 1),
     "line 4: placeholder {{image}} is not a whole value", "glued to text"),
    (K8S_DEF + '[[params]]\nname = "tok"\ntype = "secret-ref"\n', "web.yaml", MANIFEST,
     "parameter tok: a Kubernetes template cannot take a secret-ref", "secret-ref"),
    (K8S_DEF, "web.yaml", "just: a mapping\nreplicas: {{replicas}}\n",
     "document 1 is not a Kubernetes object", "not an object"),
    (K8S_DEF, "web.yaml", "kind: [unclosed\nreplicas: {{replicas}}\n",
     "file web.yaml: not a YAML manifest", "not YAML"),
    (K8S_DEF.replace('connection = "kube"\n', ""), "web.yaml", MANIFEST,
     "\\[step\\], field connection", "no connection"),
    (K8S_DEF.replace("[step]", "[step]\nmanifests = [\"x.yaml\"]"), "web.yaml", MANIFEST,
     "\\[step\\] may not set manifests", "sets its file"),
    (HTTP_DEF.replace("cache.plant-a.internal", "{{item}}.internal"), "body.json", BODY,
     "field url: a placeholder may stand in the path or the query, not in the scheme or "
     "the host", "host"),
    (HTTP_DEF.replace("expect = [204]", 'expect = [204]\nheaders = { X-Item = "{{item}}" }'),
     "body.json", BODY, "\\[step\\], field headers: takes no {{placeholder}}", "header"),
    (HTTP_DEF.replace('Authorization = "{{token}}"', 'Authorization = "{{item}}"'),
     "body.json", BODY, "field secret_headers.Authorization: a placeholder there is the "
     "whole value and names a secret-ref parameter", "secret header"),
    (HTTP_DEF, "body.json", '{"item": "{{item}}"}\n',
     "file body.json: with placeholders the body must be JSON", "quoted in the body"),
    (HTTP_DEF, "body.json", '{"who": {{token}}}\n',
     "file body.json: placeholder {{token}} names no parameter", "secret in the body"),
    (HTTP_DEF.replace('url = "https://', 'url = "ftp://'), "body.json", BODY,
     "field url", "not an http URL"),
    (HTTP_DEF.replace('choices = ["cache-token", "cache-admin"]\n', ""), "body.json", BODY,
     "parameter token: a secret-ref needs 'choices', the secrets a run may name",
     "secret-ref without choices"),
]


@pytest.mark.parametrize(("text", "file", "content", "message"),
                         [r[:4] for r in _REFUSALS], ids=[r[4] for r in _REFUSALS])
def test_bad_k8s_and_http_definitions_are_refused(world: World, tmp_path: Path, text: str,
                                                  file: str, content: str,
                                                  message: str) -> None:
    path = _definition(tmp_path, text, file, content)
    before = _stored(world)
    with pytest.raises(ValidationError, match=f"^{path}: .*{message}"):
        add_template(world.ctx("dev"), path)
    assert _stored(world) == before == (0, [])
    assert world.session.scalar(select(func.count()).select_from(Release)) == 0
