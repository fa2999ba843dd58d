"""Kubernetes manifests as the k8s executor reads them: multi-document YAML to objects.

Each staged manifest file is UTF-8 YAML holding any number of documents separated by ``---``.
:func:`parse_manifest` turns one file's bytes into :class:`ManifestObject` values, each
remembering its file and its 1-based document position (empty documents are skipped but
counted, so the position matches what an operator counts in the file). A document must be a
mapping with non-empty ``apiVersion``, ``kind`` and ``metadata.name`` strings and hold only what
JSON can carry; anything else is a :class:`~agent.executors.errors.StepSpecError` naming the
file and the document.

YAML is read with a ``SafeLoader`` that leaves unquoted timestamps as the strings written, as
Kubernetes' own YAML-to-JSON conversion does (an annotation ``2024-05-01`` stays
``"2024-05-01"`` instead of becoming a date), and that refuses a key written twice in one
mapping, as ``kubectl apply`` and the API server's strict decoding do (PyYAML would keep the
last value silently; merge keys ``<<`` may still be overridden).

This module does no I/O and knows nothing of the API server: whether a kind exists, is
namespaced or is valid is for the server to say. It does not expand ``kind: List``, template,
or merge anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from agent.executors.errors import StepSpecError

__all__ = ["ManifestObject", "parse_manifest"]


@dataclass(frozen=True)
class ManifestObject:
    """One object from a manifest file: where it came from and its body as written."""

    source: str  # payload name
    document: int  # 1-based position of the document in the file
    body: Mapping[str, Any]

    @property
    def api_version(self) -> str:
        return str(self.body["apiVersion"])

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def where(self) -> str:
        return f"{self.source} document {self.document}"


class _ManifestLoader(yaml.SafeLoader):
    """``SafeLoader`` that keeps unquoted timestamps as the strings written, as Kubernetes'
    YAML-to-JSON conversion does (an annotation ``2024-05-01`` stays ``"2024-05-01"``), and
    refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=False)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} appears twice in one mapping",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"


_ManifestLoader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_manifest(source: str, data: bytes) -> list[ManifestObject]:
    """Split one manifest file into objects. No I/O.

    Raises:
        StepSpecError: the file is not UTF-8 YAML, or a document is not a mapping with
            ``apiVersion``, ``kind`` and ``metadata.name`` (the message names file and document).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StepSpecError(f"manifest {source}: not UTF-8 text ({exc.reason})") from exc
    objects: list[ManifestObject] = []
    document = 0
    try:
        docs = yaml.load_all(text, Loader=_ManifestLoader)  # a SafeLoader
        for document, doc in enumerate(docs, start=1):
            if doc is None:
                continue
            obj = ManifestObject(source, document, doc)
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            if not isinstance(doc, dict):
                problem = f"is a {type(doc).__name__}, not a mapping"
            elif not all(isinstance(doc.get(k), str) and doc[k] for k in ("apiVersion", "kind")):
                problem = "needs apiVersion and kind (non-empty strings)"
            elif not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
                problem = "needs metadata.name (a string)"
            elif not meta["name"]:
                problem = "has an empty metadata.name"
            elif not isinstance(meta.get("namespace", ""), str):
                problem = "has a metadata.namespace that is not a string"
            elif not _is_json(doc):
                problem = "holds a value JSON cannot represent (binary data, a set, ...)"
            else:
                objects.append(obj)
                continue
            raise StepSpecError(f"manifest {obj.where}: {problem}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise StepSpecError(
            f"manifest {source}: invalid YAML in document {document + 1}{at}: {problem}"
        ) from exc
    return objects


def _is_json(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
