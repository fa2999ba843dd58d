"""signing.passphrase: the order of passphrase sources and their refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from signing.errors import PassphraseError
from signing.passphrase import (
    DEFAULT_PASSPHRASE_ENV,
    MAX_PASSPHRASE_BYTES,
    passphrase_bytes,
    resolve_passphrase,
)


def _pass_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "pass.txt"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"secret\n", "secret"), (b"secret", "secret"), (b"secret\r\nsecond line\n", "secret"),
     (b"  spaced  \n", "  spaced  "), ("pässwörd\n".encode(), "pässwörd")],
)
def test_passphrase_from_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = _pass_file(tmp_path, content)
    assert resolve_passphrase(file=path, environ={}) == expected


@pytest.mark.parametrize(
    "content",
    [b"", b"\nsecret\n", b"\xff\xfe\n", b"x" * (MAX_PASSPHRASE_BYTES + 1)],
    ids=["empty", "empty-first-line", "not-utf8", "too-long"],
)
def test_passphrase_file_refusals(tmp_path: Path, content: bytes) -> None:
    path = _pass_file(tmp_path, content)
    with pytest.raises(PassphraseError):
        resolve_passphrase(file=path, environ={})


def test_passphrase_file_missing_names_it(tmp_path: Path) -> None:
    with pytest.raises(PassphraseError, match=r"nope\.txt"):
        resolve_passphrase(file=tmp_path / "nope.txt", environ={})


@pytest.mark.parametrize(
    ("kwargs", "environ", "expected"),
    [
        ({}, {DEFAULT_PASSPHRASE_ENV: "from-env"}, "from-env"),
        ({"env_var": "MY_PASS"}, {"MY_PASS": "mine", DEFAULT_PASSPHRASE_ENV: "x"}, "mine"),
        ({"value": "explicit"}, {DEFAULT_PASSPHRASE_ENV: "from-env"}, "explicit"),
        ({"file": "FILE"}, {DEFAULT_PASSPHRASE_ENV: "from-env"}, "from-file"),
        ({"interactive": True}, {DEFAULT_PASSPHRASE_ENV: "from-env"}, "from-env"),
        ({"interactive": True}, {}, "typed"),
        ({"interactive": True, "confirm": True}, {}, "typed"),
    ],
    ids=["default-env", "named-env", "value-first", "file-before-env", "env-before-prompt",
         "prompt", "prompt-confirmed"],
)
def test_passphrase_precedence(
    tmp_path: Path, kwargs: dict[str, Any], environ: dict[str, str], expected: str
) -> None:
    if kwargs.get("file") == "FILE":
        kwargs["file"] = _pass_file(tmp_path, b"from-file\n")
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    got = resolve_passphrase(environ=environ, prompt=prompt, what="k.key", **kwargs)
    assert got == expected
    if expected == "typed":
        assert len(asked) == (2 if kwargs.get("confirm") else 1)
        assert all("k.key" in a for a in asked)


def test_passphrase_uses_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEFAULT_PASSPHRASE_ENV, "process-env")
    assert resolve_passphrase() == "process-env"


@pytest.mark.parametrize(
    ("kwargs", "answers", "fragment"),
    [
        ({}, [], "no passphrase"),
        ({"environ": {DEFAULT_PASSPHRASE_ENV: ""}}, [], "is empty"),
        ({"value": ""}, [], "is empty"),
        ({"interactive": True, "confirm": True}, ["hunter2-a", "hunter2-b"], "differ"),
        ({"interactive": True}, [""], "is empty"),
        ({"env_var": None}, [], "no passphrase"),
    ],
    ids=["nothing", "empty-env", "empty-value", "confirm-mismatch", "empty-typed", "no-env"],
)
def test_passphrase_refusals(kwargs: dict[str, Any], answers: list[str], fragment: str) -> None:
    replies = iter(answers)
    kwargs.setdefault("environ", {})
    with pytest.raises(PassphraseError, match=fragment) as info:
        resolve_passphrase(prompt=lambda _: next(replies), **kwargs)
    for answer in answers:
        if answer:
            assert answer not in str(info.value)


@pytest.mark.parametrize(
    ("passphrase", "expected"),
    [("caf\u00e9", "café".encode()), ("cafe\u0301", "café".encode()), (b"\xff", b"\xff")],
    ids=["nfc", "nfd-normalised", "bytes-as-given"],
)
def test_passphrase_bytes(passphrase: str | bytes, expected: bytes) -> None:
    assert passphrase_bytes(passphrase) == expected


@pytest.mark.parametrize("passphrase", ["", b"", "\ud800", "x" * (MAX_PASSPHRASE_BYTES + 1)],
                         ids=["empty", "empty-bytes", "surrogate", "too-long"])
def test_passphrase_bytes_refusals(passphrase: str | bytes) -> None:
    with pytest.raises(PassphraseError):
        passphrase_bytes(passphrase)
