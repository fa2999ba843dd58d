"""FakeKubeAPI: a small fake of the Kubernetes API server, for tests only.

No kube-apiserver can run on our machines (see ``/work/shared/TEST-ENVIRONMENT.md``), so the
k8s executor is tested against this fake over real HTTP on loopback, through the real
``kubernetes`` Python client; ``test_fake_kube_api.py`` also drives it with the real ``kubectl``.

What it serves (JSON only, HTTP/1.1, no auth, no TLS):

* discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/{group}/{version}`` for
  Namespace, ConfigMap, Secret, Service, ServiceAccount (v1), Deployment, StatefulSet,
  DaemonSet (apps/v1) and the cluster-scoped ClusterRole (rbac.authorization.k8s.io/v1);
* a stub of ``/openapi/v3``: paths and PATCH parameters only, no schemas, just enough for
  ``kubectl apply`` to see that the server takes ``fieldValidation`` (the fake ignores it);
* objects: ``GET`` one object, ``PATCH`` with ``application/apply-patch+yaml`` (server-side
  apply; ``fieldManager`` required; ``dryRun=All`` persists nothing and returns the would-be
  object) and ``DELETE``, namespaced and cluster-scoped, core and named groups;
* errors as real-shaped ``Status`` objects: 404 NotFound (unknown path, missing object, missing
  namespace), 422 Invalid with ``details.causes`` (names that are not DNS-1123, workloads
  without ``spec.selector``, template labels not matching the selector, no containers,
  containers without image), 415 for other patch types, 400 for a body that does not match
  the URL, 405 for what it does not implement.

Apply semantics: the applied object is deep-merged into the stored one (maps merge; lists and
scalars are replaced). If that changes nothing, nothing is written: same ``resourceVersion``
and ``generation``. Any change bumps ``resourceVersion``; a change outside ``metadata`` also
bumps ``generation``. ``status`` in an applied body is ignored. There is no controller: a
workload's ``status`` is whatever the test sets with :meth:`FakeKubeAPI.set_status` or
:meth:`FakeKubeAPI.complete_rollout`, and starts empty (not rolled out). ``spec.replicas`` of
Deployments and StatefulSets defaults to 1, as on a real server. ``default``, ``kube-system``
and ``kube-public`` exist from the start.

What it deliberately does NOT implement: field ownership (``managedFields``), hence no apply
conflicts (409) and ``force`` has no effect; removing fields a manager stops applying;
list merge keys (lists are replaced whole); ``POST``, ``PUT``, other patch types, lists,
watches, selectors, paging; subresources (``/status``, ``/scale``); OpenAPI schemas, field
validation, defaulting beyond ``spec.replicas``, admission, RBAC; namespace finalization
(deleting a namespace drops its objects at once); any kind not listed above.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

__all__ = ["RESOURCE_TYPES", "FakeKubeAPI", "RecordedRequest", "ResourceType"]

APPLY_PATCH = "application/apply-patch+yaml"
MAX_BODY_BYTES = 3 * 1024 * 1024  # bytes, the API server's request size limit
SERVER_VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fakekube"}
SYSTEM_NAMESPACES = ("default", "kube-public", "kube-system")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SYSTEM_METADATA = ("uid", "creationTimestamp", "resourceVersion", "generation", "managedFields")


@dataclass(frozen=True)
class ResourceType:
    """One kind the fake serves."""

    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        """``api/v1`` or ``apis/{group}/{version}``."""
        return f"apis/{self.group_version}" if self.group else f"api/{self.version}"


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False),
    ResourceType("", "v1", "ConfigMap", "configmaps", True),
    ResourceType("", "v1", "Secret", "secrets", True),
    ResourceType("", "v1", "Service", "services", True),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True),
    ResourceType("apps", "v1", "Deployment", "deployments", True),
    ResourceType("apps", "v1", "StatefulSet", "statefulsets", True),
    ResourceType("apps", "v1", "DaemonSet", "daemonsets", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
)
_NAMESPACE = RESOURCE_TYPES[0]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (for assertions and :attr:`FakeKubeAPI.on_request`)."""

    method: str
    path: str
    query: Mapping[str, tuple[str, ...]]
    content_type: str

    @property
    def dry_run(self) -> bool:
        return "dryRun" in self.query


class _Reply(Exception):
    """An error reply decided while handling a request."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code,
        }


def _no_such_path() -> _Reply:
    return _Reply(404, "NotFound", "the server could not find the requested resource")


def _bad_request(message: str) -> _Reply:
    return _Reply(400, "BadRequest", message)


def _deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _user_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object without ``status`` and the metadata the server sets."""
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = out.get("metadata", {})
    out["metadata"] = {k: v for k, v in meta.items() if k not in _SYSTEM_METADATA}
    return out


def _spec_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}


def _validate(rtype: ResourceType, obj: Mapping[str, Any]) -> list[dict[str, str]]:
    """The subset of API server validation the fake does; returns ``Status`` causes."""
    causes: list[dict[str, str]] = []

    def cause(reason: str, field: str, message: str) -> None:
        causes.append({"reason": reason, "message": message, "field": field})

    name = obj.get("metadata", {}).get("name", "")
    is_ns = rtype is _NAMESPACE
    pattern, limit = (_DNS1123_LABEL, 63) if is_ns else (_DNS1123_SUBDOMAIN, 253)
    if not name:
        cause("FieldValueRequired", "metadata.name", "Required value: name is required")
    elif len(name) > limit or not pattern.fullmatch(name):
        what = "RFC 1123 label" if is_ns else "RFC 1123 subdomain"
        cause(
            "FieldValueInvalid",
            "metadata.name",
            f'Invalid value: "{name}": a lowercase {what} must consist of lower case '
            "alphanumeric characters, '-' or '.', and must start and end with an "
            f"alphanumeric character (at most {limit} characters)",
        )
    if rtype.kind not in WORKLOADS:
        return causes
    spec = obj.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not spec.get("selector"):
        cause("FieldValueRequired", "spec.selector", "Required value")
    elif any(labels.get(k) != v for k, v in selector.items()):
        cause(
            "FieldValueInvalid",
            "spec.template.metadata.labels",
            f"Invalid value: {json.dumps(labels, sort_keys=True)}: "
            "`selector` does not match template `labels`",
        )
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        cause("FieldValueRequired", "spec.template.spec.containers", "Required value")
    for i, container in enumerate(containers):
        if not isinstance(container, Mapping) or not container.get("image"):
            cause(
                "FieldValueRequired", f"spec.template.spec.containers[{i}].image", "Required value"
            )
    return causes


def _discovery(parts: list[str]) -> dict[str, Any] | None:
    """The discovery document for ``/api``, ``/apis`` or one group/version, or None."""
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if parts == ["apis"]:
        groups: dict[str, Any] = {}
        for t in RESOURCE_TYPES:
            gv = {"groupVersion": t.group_version, "version": t.version}
            if t.group:
                groups[t.group] = {"name": t.group, "versions": [gv], "preferredVersion": gv}
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": list(groups.values())}
    types = [t for t in RESOURCE_TYPES if t.prefix == "/".join(parts)]
    if not types:
        return None
    verbs = ["delete", "get", "patch"]
    resources = [
        {
            "name": t.plural,
            "singularName": t.kind.lower(),
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": verbs,
        }
        for t in types
    ]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": types[0].group_version,
        "resources": resources,
    }


def _openapi_v3(parts: list[str]) -> dict[str, Any]:
    """The OpenAPI v3 stub: the root lists group/versions; a group/version document has only
    the PATCH operations with their ``x-kubernetes-group-version-kind`` and ``fieldValidation``,
    which is all ``kubectl apply`` looks at before it leaves validation to the server."""
    prefixes = sorted({t.prefix for t in RESOURCE_TYPES})
    if not parts:
        return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash=fake"} for p in prefixes}}
    paths = {}
    for t in (t for t in RESOURCE_TYPES if t.prefix == "/".join(parts)):
        ns = "namespaces/{namespace}/" if t.namespaced else ""
        gvk = {"group": t.group, "version": t.version, "kind": t.kind}
        param = {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
        patch = {"x-kubernetes-group-version-kind": gvk, "parameters": [param], "responses": {}}
        paths[f"/{t.prefix}/{ns}{t.plural}/{{name}}"] = {"patch": patch}
    if not paths:
        raise _no_such_path()
    return {"openapi": "3.0.0", "info": {"title": "FakeKubeAPI", "version": "v1"}, "paths": paths}


class FakeKubeAPI:
    """An in-memory API server on ``127.0.0.1`` (random port). Use as a context manager.

    Attributes:
        on_request: called with each :class:`RecordedRequest` before it is handled; tests use it
            to play the controller (e.g. complete a rollout on the first GET after an apply).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._store: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._rv = 100
        self._requests: list[RecordedRequest] = []
        self.on_request: Callable[[RecordedRequest], None] | None = None
        self._server: ThreadingHTTPServer | None = None
        for ns in SYSTEM_NAMESPACES:
            obj = self._new_object(
                _NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            )
            self._store[self._key(_NAMESPACE, "", ns)] = self._persist(obj)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeKubeAPI:
        """Start serving in a daemon thread; returns ``self``."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        serve = lambda: server.serve_forever(poll_interval=0.05)  # noqa: E731
        threading.Thread(target=serve, name="fakekube", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``.

        Raises:
            RuntimeError: the fake is not started.
        """
        if self._server is None:
            raise RuntimeError("FakeKubeAPI is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, context: str = "fakekube", server: str = "") -> Path:
        """Write a kubeconfig for this fake (plain HTTP, no credentials); returns ``path``.
        ``server`` points it elsewhere instead (e.g. at a closed port)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fakekube", "cluster": {"server": server or self.url}}],
            "users": [{"name": "fakekube", "user": {}}],
            "contexts": [{"name": context, "context": {"cluster": "fakekube", "user": "fakekube"}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    # -- test controls and assertions --------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order."""
        with self._lock:
            return list(self._requests)

    def applies(self, *, dry_run: bool) -> list[RecordedRequest]:
        """The PATCH requests received: only dry runs, or only real ones."""
        return [r for r in self.requests if r.method == "PATCH" and r.dry_run == dry_run]

    def get_object(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of the stored object, or None."""
        with self._lock:
            obj = self._store.get(self._key(self._type(kind), namespace or "", name))
            return copy.deepcopy(obj)

    def set_status(
        self, kind: str, namespace: str | None, name: str, new_status: Mapping[str, Any]
    ) -> None:
        """Replace an object's ``status`` as a controller would (bumps resourceVersion).

        Raises:
            KeyError: no such object.
        """
        with self._lock:
            obj = self._store[self._key(self._type(kind), namespace or "", name)]
            obj["status"] = copy.deepcopy(dict(new_status))
            self._persist(obj)

    def complete_rollout(self, kind: str, namespace: str, name: str) -> None:
        """Set a Deployment/StatefulSet/DaemonSet's status to fully rolled out at its generation.

        Raises:
            KeyError: no such object.
        """
        with self._lock:
            obj = self._store[self._key(self._type(kind), namespace, name)]
            gen, n = obj["metadata"]["generation"], int(obj["spec"].get("replicas", 1))
            keys: tuple[str, ...]
            if kind == "DaemonSet":
                keys = (
                    "desiredNumberScheduled",
                    "currentNumberScheduled",
                    "updatedNumberScheduled",
                    "numberReady",
                    "numberAvailable",
                )
            else:
                keys = ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
            new: dict[str, Any] = {"observedGeneration": gen} | dict.fromkeys(keys, n)
            if kind == "StatefulSet":
                revision = f"{name}-{gen}"
                new |= {
                    "currentReplicas": n,
                    "currentRevision": revision,
                    "updateRevision": revision,
                }
            self.set_status(kind, namespace, name, new)

    # -- request handling ----------------------------------------------------------------------

    def handle(
        self, method: str, target: str, content_type: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request (``target`` is the path with query); returns (status, JSON)."""
        split = urlsplit(target)
        query = {k: tuple(v) for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request = RecordedRequest(method, split.path, query, content_type)
        with self._lock:
            self._requests.append(request)
        if self.on_request is not None:
            self.on_request(request)
        try:
            return self._route(request, body)
        except _Reply as reply:
            return reply.code, reply.body

    def _route(self, req: RecordedRequest, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = [p for p in req.path.split("/") if p]
        if req.method == "GET" and parts == ["version"]:
            return 200, dict(SERVER_VERSION)
        if req.method == "GET" and parts[:2] == ["openapi", "v3"]:
            return 200, _openapi_v3(parts[2:])
        if req.method == "GET" and (doc := _discovery(parts)) is not None:
            return 200, doc
        prefix_len = 2 if parts[:1] == ["api"] else 3
        prefix, rest = "/".join(parts[:prefix_len]), parts[prefix_len:]
        namespace = ""
        if rest[:1] == ["namespaces"] and len(rest) in (3, 4):
            namespace, rest = rest[1], rest[2:]
        plural = rest[0] if rest else ""
        rtype = next((t for t in RESOURCE_TYPES if (t.prefix, t.plural) == (prefix, plural)), None)
        if rtype is None or rtype.namespaced != bool(namespace):
            raise _no_such_path()
        if len(rest) != 2:
            message = "FakeKubeAPI does not implement lists, collections or subresources"
            raise _Reply(405, "MethodNotAllowed", message)
        name = rest[1]
        if req.method == "GET":
            with self._lock:
                return 200, copy.deepcopy(self._existing(rtype, namespace, name))
        if req.method == "PATCH":
            return self._apply(rtype, namespace, name, req, body)
        if req.method == "DELETE":
            return 200, self._delete(rtype, namespace, name)
        raise _Reply(405, "MethodNotAllowed", f"FakeKubeAPI does not implement {req.method}")

    # -- objects -----------------------------------------------------------------------------

    @staticmethod
    def _type(kind: str) -> ResourceType:
        return next(t for t in RESOURCE_TYPES if t.kind == kind)

    @staticmethod
    def _key(rtype: ResourceType, namespace: str, name: str) -> tuple[str, str, str, str]:
        return (rtype.group, rtype.plural, namespace, name)

    def _persist(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        obj["metadata"].setdefault("uid", str(uuid.uuid4()))
        return obj

    @staticmethod
    def _new_object(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj["metadata"] |= {"creationTimestamp": now, "generation": 1}
        if rtype.kind in WORKLOADS:
            obj["status"] = {}
        return obj

    def _existing(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self._store.get(self._key(rtype, namespace, name))
        if obj is None:
            resource = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
            details = {"name": name, "group": rtype.group, "kind": rtype.plural}
            raise _Reply(404, "NotFound", f'{resource} "{name}" not found', **details)
        return obj

    def _delete(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._existing(rtype, namespace, name)
            del self._store[self._key(rtype, namespace, name)]
            if rtype is _NAMESPACE:
                for key in [k for k in self._store if k[2] == name]:
                    del self._store[key]
        details = {"name": name, "group": rtype.group, "kind": rtype.plural}
        ok = _Reply(200, "", "", uid=obj["metadata"]["uid"], **details).body
        return ok | {"status": "Success"}

    def _parse_apply(
        self, rtype: ResourceType, namespace: str, name: str, req: RecordedRequest, body: bytes
    ) -> dict[str, Any]:
        """Check the request and return the applied object, or raise the error reply."""
        if req.content_type.split(";")[0].strip() != APPLY_PATCH:
            raise _Reply(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown "
                f"format - accepted media types include: {APPLY_PATCH}",
            )
        if not req.query.get("fieldManager", ("",))[0]:
            cause = {
                "reason": "FieldValueRequired",
                "field": "fieldManager",
                "message": "Required value: is required for apply patch",
            }
            raise _Reply(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
                "Required value: is required for apply patch",
                group="meta.k8s.io",
                kind="PatchOptions",
                causes=[cause],
            )
        if req.query.get("dryRun", ("All",)) != ("All",):
            raise _bad_request(f'dryRun: Unsupported value: {req.query["dryRun"]}: use "All"')
        try:
            applied = yaml.safe_load(body.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise _bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(applied, dict) or not isinstance(applied.get("metadata", {}), dict):
            raise _bad_request("an apply patch must be an object with metadata")
        if (applied.get("apiVersion"), applied.get("kind")) != (rtype.group_version, rtype.kind):
            raise _bad_request(f"apiVersion and kind do not match the URL ({rtype.prefix})")
        meta = applied.setdefault("metadata", {})
        if meta.setdefault("name", name) != name:
            raise _bad_request(
                f"the name of the object ({meta['name']}) does not match the "
                f"name on the URL ({name})"
            )
        if rtype.namespaced and meta.setdefault("namespace", namespace) != namespace:
            raise _bad_request(
                "the namespace of the provided object does not match the "
                "namespace sent on the request"
            )
        if not rtype.namespaced:
            meta.pop("namespace", None)
        applied.pop("status", None)
        return applied

    def _apply(
        self, rtype: ResourceType, namespace: str, name: str, req: RecordedRequest, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        applied = self._parse_apply(rtype, namespace, name, req, body)
        with self._lock:
            if namespace and self._key(_NAMESPACE, "", namespace) not in self._store:
                message = f'namespaces "{namespace}" not found'
                raise _Reply(404, "NotFound", message, name=namespace, kind="namespaces")
            current = self._store.get(self._key(rtype, namespace, name))
            merged = _deep_merge(current or {}, applied)
            if rtype.kind in ("Deployment", "StatefulSet"):
                merged.setdefault("spec", {}).setdefault("replicas", 1)
            causes = _validate(rtype, merged)
            if causes:
                text = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
                text = text if len(causes) == 1 else f"[{text}]"
                qualified = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
                details = {"name": name, "group": rtype.group, "kind": rtype.kind}
                message = f'{qualified} "{name}" is invalid: {text}'
                raise _Reply(422, "Invalid", message, causes=causes, **details)
            if current is not None and _user_fields(merged) == _user_fields(current):
                return 200, copy.deepcopy(current)  # a no-op apply writes nothing
            if current is None:
                merged = self._new_object(rtype, merged)
            elif _spec_fields(merged) != _spec_fields(current):
                merged["metadata"]["generation"] = current["metadata"]["generation"] + 1
            code = 201 if current is None else 200
            if "dryRun" in req.query:
                return code, merged
            self._store[self._key(rtype, namespace, name)] = self._persist(merged)
            return code, copy.deepcopy(merged)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeKubeAPI"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def _serve(self) -> None:
        fake: FakeKubeAPI = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            reply = _Reply(413, "RequestEntityTooLarge", "request is too large")
            code, body = reply.code, reply.body
            self.close_connection = True
        else:
            payload = self.rfile.read(length) if length else b""
            content_type = self.headers.get("Content-Type", "")
            code, body = fake.handle(self.command, self.path, content_type, payload)
        data = json.dumps(body).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log on stderr (requests are recorded instead)."""
