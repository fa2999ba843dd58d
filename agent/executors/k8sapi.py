"""The k8s executor's link to one Kubernetes API server: connection, discovery, apply.

:func:`load_configuration` builds a fresh client ``Configuration`` from a site connection
(kubeconfig and context, or the in-cluster service account) without touching the client's
global default. :class:`KubeApi` sends requests through the ``kubernetes`` client's
``DynamicClient.request`` (stable across client versions), each bounded by the step's deadline
and preceded by a check of its cancel flag, and turns every way a request can go wrong into one
of two errors::

    K8sStepError        the step fails; the message is its summary (unreachable server with
    │                   its URL, TLS trouble, time limit, cancel, kind not served)
    └── K8sStatusError  the API server answered with an error Status: code, reason, message
                        and each cause (``field: message``), e.g. 422 Invalid, 404 NotFound

Discovery asks only for the group/versions a step uses (``GET /api/v1``,
``/apis/{group}/{version}``), once each; ``DynamicClient``'s own discoverer is switched off
because it fetches every group without a timeout and caches them in a file shared under /tmp.
Server-side apply is ``PATCH`` with ``application/apply-patch+yaml``, field manager
:data:`FIELD_MANAGER`, ``force=true`` (why: see :mod:`agent.executors.k8s`) and
``fieldValidation=Strict``, for the dry run as for the real apply, as ``kubectl apply`` sends
it. The API server refuses a field the kind does not have (``replcas``) or a value of the wrong
type (``replicas: "two"``) in a server-side apply whatever ``fieldValidation`` says (it answers
500 ``failed to create typed patch object (...): .spec.replcas: field not declared in
schema``); Strict makes it refuse the rest of what it would otherwise only warn about
(duplicate fields: 400 BadRequest). The API server's warnings (``Warning`` headers: deprecated
API versions, deprecated labels, ...) are handed to the caller with :func:`warning_texts`.

Not done here: retries beyond :data:`CONNECT_RETRIES` failed connection attempts (a rejected
or timed-out request is never repeated), watches, lists, deletes, proxies beyond what the
kubeconfig says, exec credential plugins beyond what the client does on its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

from agent.executors.base import Connection

if TYPE_CHECKING:  # the client is imported when a k8s step connects (it is big)
    from kubernetes.client import ApiClient, Configuration

__all__ = [
    "FIELD_MANAGER",
    "K8sStatusError",
    "K8sStepError",
    "KubeApi",
    "Resource",
    "load_configuration",
    "warning_texts",
]

FIELD_MANAGER = "tiangong"
APPLY_PATCH = "application/apply-patch+yaml"
CONNECT_TIMEOUT_S = 10.0  # seconds per connection attempt
READ_TIMEOUT_S = 60.0  # seconds to wait for one answer
CONNECT_RETRIES = 1  # further attempts after a failed connection
MAX_ERROR_TEXT = 300  # characters of a non-Status error body kept for the message
MAX_WARNING_TEXT = 500  # characters kept of one warning from the API server


class K8sStepError(Exception):
    """The step fails; ``str(error)`` is its summary, written for the operator."""


class K8sStatusError(K8sStepError):
    """The API server answered with an error ``Status`` (or at least an error code)."""

    def __init__(self, code: int, reason: str, message: str, causes: tuple[str, ...] = ()):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.causes = causes

    @classmethod
    def from_body(cls, code: int, body: object) -> K8sStatusError:
        """Read a ``Status`` body (any other body is kept, shortened, as the message)."""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("kind") != "Status":
            return cls(code, "", f"HTTP {code}: {' '.join(text.split())[:MAX_ERROR_TEXT]}")
        details = doc.get("details")
        details = details if isinstance(details, dict) else {}
        causes = tuple(
            f"{c.get('field') or '(object)'}: {c.get('message', '')}"
            for c in details.get("causes") or ()
            if isinstance(c, dict)
        )
        message = str(doc.get("message") or f"HTTP {code} {doc.get('reason', '')}".strip())
        return cls(code, str(doc.get("reason", "")), message, causes)


@dataclass(frozen=True)
class Resource:
    """Where objects of one kind live in the REST API (from discovery)."""

    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str, name: str) -> str:
        """The object's URL path; ``namespace`` is ignored for cluster-scoped kinds."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        ns = f"/namespaces/{quote(namespace, safe='')}" if self.namespaced else ""
        return f"{prefix}{ns}/{self.plural}/{quote(name, safe='')}"

    @property
    def is_namespace(self) -> bool:
        return (self.group, self.plural) == ("", "namespaces")


def warning_texts(values: list[str]) -> list[str]:
    """The texts of ``Warning`` response headers, which the API server sends in the RFC 7234
    form ``299 - "text"``; a value in another form is kept as it is. Each is shortened to
    :data:`MAX_WARNING_TEXT` characters."""
    texts = []
    for value in values:
        code, _, rest = value.partition(" ")
        _agent, _, quoted = rest.partition(" ")
        if code.isdigit() and len(quoted) >= 2 and quoted[0] == quoted[-1] == '"':
            value = quoted[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        texts.append(" ".join(value.split())[:MAX_WARNING_TEXT])
    return texts


def load_configuration(connection: Connection, workdir: Path) -> Configuration:
    """A fresh client ``Configuration`` for a connection of type kubernetes.

    Certificate data from the kubeconfig is written to files in ``workdir`` (the client needs
    files), never to a shared temporary directory; the kubeconfig itself is never written.

    Raises:
        K8sStepError: the kubeconfig (or in-cluster credentials) cannot be loaded.
    """
    import urllib3
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException

    params = connection.params
    configuration = Configuration()
    kubeconfig = params.get("kubeconfig")
    source = "the in-cluster service account" if params.get("in_cluster") else f"{kubeconfig}"
    try:
        if params.get("in_cluster"):
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        elif not kubeconfig:
            raise K8sStepError(f"connection {connection.name!r}: no kubeconfig and not in_cluster")
        else:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig),
                context=params.get("context") or None,
                client_configuration=configuration,
                persist_config=False,
                temp_file_path=str(workdir),
            )
    except (ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        raise K8sStepError(f"connection {connection.name!r}: cannot load {source}: {exc}") from exc
    # Only a connection that could not be made is tried again. A request sent without an
    # answer in time, or cut off, is never repeated: a retried read would let one request
    # take twice its share of the step's time, and a retried apply act twice.
    configuration.retries = urllib3.Retry(
        total=CONNECT_RETRIES,
        connect=CONNECT_RETRIES,
        read=False,
        status=0,
        other=0,
        redirect=False,
        raise_on_status=False,
        respect_retry_after_header=False,
    )
    return configuration


class _NoDiscovery:
    """Switches off ``DynamicClient``'s own discoverer (see the module docstring)."""

    def __init__(self, client: object, cache_file: object) -> None:
        """Do nothing: :meth:`KubeApi.resolve` discovers what a step needs."""


class KubeApi:
    """Requests to one API server, each bounded by ``deadline`` (on ``clock``) and ``cancel``."""

    def __init__(
        self,
        client: ApiClient,
        deadline: float,
        cancel: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        from kubernetes.dynamic import DynamicClient

        self.host: str = client.configuration.host
        self._dyn = DynamicClient(client, discoverer=_NoDiscovery)  # type: ignore[no-untyped-call]
        self._deadline = deadline
        self._cancel = cancel
        self._clock = clock
        self._discovered: dict[str, list[dict[str, Any]] | None] = {}

    def check(self) -> None:
        """Stop here if the step was cancelled or is out of time (called before each request).

        Raises:
            K8sStepError: the step was cancelled or its time is up.
        """
        if self._cancel.is_set():
            raise K8sStepError("cancelled")
        if self._deadline - self._clock() <= 0:
            raise K8sStepError("the step's time limit ran out")

    def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: tuple[tuple[str, str], ...] = (),
        warnings: list[str] | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the JSON object answered. The texts of the server's
        warnings about it are appended to ``warnings`` (when given), also for an error answer.

        Raises:
            K8sStatusError: the server answered with an error status.
            K8sStepError: cancelled, out of time, or the server could not be reached.
        """
        import urllib3
        from kubernetes.client.exceptions import ApiException

        self.check()
        remaining = self._deadline - self._clock()
        timeout = (min(CONNECT_TIMEOUT_S, remaining), min(READ_TIMEOUT_S, remaining))
        extra = {"content_type": APPLY_PATCH} if method == "PATCH" else {}
        try:
            response = self._dyn.request(
                method.lower(),
                path,
                body=body,
                serialize=False,
                query_params=list(query),
                _request_timeout=timeout,
                **extra,
            )
            if warnings is not None:
                warnings.extend(warning_texts(response.headers.getlist("Warning")))
            answer = json.loads(response.data)
        except ApiException as exc:
            if not exc.status:  # the client reports TLS trouble as status 0
                raise K8sStepError(self._unreachable(exc.reason)) from exc
            if warnings is not None and exc.headers is not None:
                warnings.extend(warning_texts(exc.headers.getlist("Warning")))
            raise K8sStatusError.from_body(exc.status, exc.body) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise K8sStepError(self._unreachable(exc)) from exc
        except ValueError as exc:
            raise K8sStepError(f"{self.host}: the answer to {method} {path} is not JSON") from exc
        if not isinstance(answer, dict):
            raise K8sStepError(f"{self.host}: the answer to {method} {path} is not an object")
        return answer

    def _unreachable(self, error: object) -> str:
        import urllib3

        reason = getattr(error, "reason", error)
        cause = reason if isinstance(reason, BaseException) else None
        while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, OSError) and cause.strerror:  # e.g. "connection refused"
            why = cause.strerror.lower()
        elif isinstance(reason, urllib3.exceptions.TimeoutError):
            why = "no answer in time"
        else:
            why = " ".join(str(reason).split())
        return f"cannot reach the Kubernetes API server at {self.host}: {why}"

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None if there is none.

        Raises:
            K8sStatusError: an error other than 404 NotFound.
            K8sStepError: as :meth:`request`.
        """
        try:
            return self.request("GET", path)
        except K8sStatusError as exc:
            if exc.code == 404:
                return None
            raise

    def apply(
        self,
        path: str,
        body: dict[str, Any],
        *,
        dry_run: bool,
        warnings: list[str] | None = None,
    ) -> dict[str, Any]:
        """Server-side apply ``body`` at ``path`` with strict field validation (with
        ``dryRun=All`` if ``dry_run``); the server's warnings are appended to ``warnings``.

        Raises:
            K8sStatusError: the server rejected it (400 BadRequest for an unknown or mistyped
                field, 422 Invalid, 404 NotFound namespace, 409 Conflict, ...).
            K8sStepError: as :meth:`request`.
        """
        query: tuple[tuple[str, str], ...] = (
            ("fieldManager", FIELD_MANAGER),
            ("force", "true"),
            ("fieldValidation", "Strict"),
        )
        if dry_run:
            query += (("dryRun", "All"),)
        # Serialised here, as UTF-8 JSON (which is YAML): the client's own json.dumps writes
        # a character beyond U+FFFF (an emoji) as a surrogate pair "\ud83d\ude00", which
        # the server's YAML decoder refuses ("invalid Unicode character escape code").
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        return self.request("PATCH", path, body=data, query=query, warnings=warnings)

    def resolve(self, api_version: str, kind: str, where: str) -> Resource:
        """Find the REST resource of ``kind`` in ``api_version`` by discovery.

        Raises:
            K8sStepError: the server does not serve that apiVersion or kind (the message starts
                with ``where``), or discovery failed.
        """
        if api_version not in self._discovered:
            path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            try:
                resources = self.request("GET", path).get("resources") or []
                self._discovered[api_version] = [r for r in resources if isinstance(r, dict)]
            except K8sStatusError as exc:
                if exc.code != 404:
                    raise K8sStepError(f"discovery of {path} at {self.host}: {exc}") from exc
                self._discovered[api_version] = None
        resources = self._discovered[api_version]
        if resources is None:
            raise K8sStepError(f"{where}: apiVersion {api_version} is not served by {self.host}")
        for r in resources:
            name = str(r.get("name", ""))
            if r.get("kind") == kind and name and "/" not in name:
                group, _, version = api_version.rpartition("/")
                return Resource(group, version, kind, name, bool(r.get("namespaced")))
        raise K8sStepError(f"{where}: kind {kind} is not served in {api_version} by {self.host}")
