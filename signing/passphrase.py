"""Where a key file's passphrase comes from (docs/keys-and-trust.md §"Passphrase sources").

:func:`resolve_passphrase` tries, in order, an explicit value, a passphrase file (first line), an
environment variable (``TIANGONG_KEY_PASSPHRASE`` unless told otherwise) and an interactive
prompt. Passphrases are never taken from a command line: the CLI offers no option for a value.

This module neither stores nor logs passphrases, and its messages never contain one.
"""

from __future__ import annotations

import getpass
import os
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path

from signing.errors import PassphraseError, SigningError
from signing.fileio import read_bounded

__all__ = [
    "DEFAULT_PASSPHRASE_ENV",
    "MAX_PASSPHRASE_BYTES",
    "passphrase_bytes",
    "resolve_passphrase",
]

DEFAULT_PASSPHRASE_ENV = "TIANGONG_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
MAX_PASSPHRASE_BYTES = 1024  # bytes (UTF-8) of one passphrase


def resolve_passphrase(
    *,
    value: str | None = None,
    file: str | os.PathLike[str] | None = None,
    env_var: str | None = DEFAULT_PASSPHRASE_ENV,
    interactive: bool = False,
    confirm: bool = False,
    what: str = "the key file",
    environ: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> str:
    """Find the passphrase, from the first source that is given, in this order:

    1. ``value`` (an explicit string, for programs; the CLI never takes one in argv);
    2. ``file``: its first line, without the line ending;
    3. the environment variable ``env_var`` (default ``TIANGONG_KEY_PASSPHRASE``), read from
       ``environ`` (default ``os.environ``);
    4. when ``interactive``, a prompt (``prompt``, default :func:`getpass.getpass`), asked twice
       when ``confirm`` (use it when creating a key).

    Raises:
        PassphraseError: no source gave one, it is empty or longer than
            :data:`MAX_PASSPHRASE_BYTES`, the passphrase file cannot be read, or the
            confirmation differs.
    """
    if value is not None:
        return _checked_passphrase(value, "the passphrase given")
    if file is not None:
        return _checked_passphrase(_first_line(Path(file)), f"passphrase file {file}")
    env = os.environ if environ is None else environ
    if env_var:
        found = env.get(env_var)
        if found is not None:
            return _checked_passphrase(found, f"environment variable {env_var}")
    if interactive:
        ask = getpass.getpass if prompt is None else prompt
        first = _checked_passphrase(ask(f"Passphrase for {what}: "), "the passphrase typed")
        if confirm and ask(f"Repeat the passphrase for {what}: ") != first:
            raise PassphraseError(f"the two passphrases typed for {what} differ")
        return first
    sources = "a passphrase file" + (f", the environment variable {env_var}" if env_var else "")
    raise PassphraseError(f"no passphrase for {what}: give {sources}, or run interactively")


def _checked_passphrase(text: str, where: str) -> str:
    if not text:
        raise PassphraseError(f"{where} is empty")
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_PASSPHRASE_BYTES:
        raise PassphraseError(f"{where} is longer than {MAX_PASSPHRASE_BYTES} bytes")
    return text


def _first_line(path: Path) -> str:
    try:
        raw = read_bounded(path, MAX_PASSPHRASE_BYTES + 2)
    except PassphraseError:
        raise
    except SigningError as exc:
        raise PassphraseError(f"passphrase file {path}: {exc}") from exc
    line = raw.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > MAX_PASSPHRASE_BYTES:
        raise PassphraseError(
            f"passphrase file {path}: first line is longer than {MAX_PASSPHRASE_BYTES} bytes"
        )
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PassphraseError(f"passphrase file {path}: first line is not UTF-8") from exc


def passphrase_bytes(passphrase: str | bytes) -> bytes:
    """The bytes Argon2id hashes: UTF-8 of the NFC form for a ``str``, ``bytes`` as given.

    Raises:
        PassphraseError: empty, longer than :data:`MAX_PASSPHRASE_BYTES`, or not valid Unicode.
    """
    if isinstance(passphrase, bytes):
        raw = passphrase
    else:
        # NFC so the same passphrase typed on different systems derives the same key.
        try:
            raw = unicodedata.normalize("NFC", passphrase).encode("utf-8", errors="strict")
        except UnicodeEncodeError:
            raise PassphraseError("the passphrase is not valid Unicode") from None
    if not raw:
        raise PassphraseError("the passphrase is empty")
    if len(raw) > MAX_PASSPHRASE_BYTES:
        raise PassphraseError(f"the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes")
    return raw
