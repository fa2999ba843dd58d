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
