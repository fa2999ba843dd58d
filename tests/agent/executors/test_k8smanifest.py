"""Manifest parsing: documents, positions, and what is refused before any request is made."""

from __future__ import annotations

import pytest
import yaml

from agent.executors.errors import StepSpecError
from agent.executors.k8smanifest import parse_manifest

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"}}


def test_parse_manifest_skips_empty_documents_and_counts_them() -> None:
    objects = parse_manifest("m.yaml", b"---\n---\n" + yaml.safe_dump(CONFIGMAP).encode())

    assert [(o.source, o.document, o.kind, o.name) for o in objects] == [
        ("m.yaml", 2, "ConfigMap", "app-config")
    ]


def test_timestamps_stay_as_written() -> None:
    text = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
    text += b"data: {at: 2001-12-14 21:59:43.10 -5}\n"
    (obj,) = parse_manifest("m.yaml", text)
    assert obj.body["data"] == {"at": "2001-12-14 21:59:43.10 -5"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: !!binary aGk=}\n",
         "holds a value JSON cannot represent"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ''}\n", "has an empty metadata.name"),
    ],
)  # fmt: skip
def test_documents_the_api_cannot_take(text: bytes, problem: str) -> None:
    with pytest.raises(StepSpecError, match=rf"^manifest m.yaml document 1: {problem}"):
        parse_manifest("m.yaml", text)


def test_manifest_that_is_not_utf8_is_a_spec_error() -> None:
    with pytest.raises(StepSpecError, match=r"manifest m.yaml: not UTF-8 text"):
        parse_manifest("m.yaml", b"kind: \xff\n")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: '1'}\ndata: {y: '2'}\n",
         "line 5, column 1: key 'data' appears twice in one mapping"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, name: b}\n",
         "line 3, column 21: key 'name' appears twice in one mapping"),
    ],
)  # fmt: skip
def test_a_key_written_twice_is_refused(text: bytes, where: str) -> None:
    # kubectl and the API server's strict decoding refuse it; PyYAML alone keeps the last value
    with pytest.raises(StepSpecError) as info:
        parse_manifest("m.yaml", text)
    assert str(info.value) == f"manifest m.yaml: invalid YAML in document 1 at {where}"


def test_merge_keys_may_still_be_overridden() -> None:
    text = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
    text += b"x: &base {p: '1', q: '1'}\ndata: {<<: *base, p: '2'}\n"
    (obj,) = parse_manifest("m.yaml", text)
    assert obj.body["data"] == {"p": "2", "q": "1"}
