"""Reading a secret's value for ``tiangong hub secrets set`` and ``tiangong remote secrets
set``: from an environment variable, a file, or standard input (a hidden prompt on a
terminal) — never from the command line, where other users and the shell history see it.
Only click and the standard library (``tiangong remote`` has no hub extra)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

__all__ = ["deleted", "read_value", "stored", "value_options"]


def _text(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text with one trailing new line (``\\n`` or ``\\r\\n``) dropped.

    Raises:
        click.UsageError: not UTF-8 (a secret is text: encode a binary one, e.g. base64).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"{source} is not UTF-8 text (byte {exc.start + 1} is not): a "
                               "secret is text; write a binary one as base64") from None
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def read_value(from_env: str | None, from_file: str | None) -> str:
    """The value from ``--from-env VAR``, ``--from-file PATH`` or standard input (one
    trailing new line dropped from a file or standard input).

    Raises:
        click.UsageError: both options, a variable not set, a file not readable, or text
            that is not UTF-8.
    """
    if from_env is not None and from_file is not None:
        raise click.UsageError("give --from-env or --from-file, not both")
    if from_env is not None:
        value = os.environ.get(from_env)
        if value is None:
            raise click.UsageError(f"environment variable {from_env} is not set")
        return value
    if from_file is not None:
        try:
            with open(from_file, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise click.UsageError(f"cannot read {from_file}: {exc.strerror}") from None
        return _text(data, from_file)
    if sys.stdin.isatty():
        value = click.prompt("value (not echoed)", hide_input=True, err=True)
        return str(value)
    return _text(sys.stdin.buffer.read(), "standard input")


def value_options(f: Any) -> Any:
    """``--from-env`` and ``--from-file``."""
    f = click.option("--from-file", metavar="PATH", default=None,
                     help="Read the value from this file (one trailing newline dropped).")(f)
    return click.option("--from-env", metavar="VAR", default=None,
                        help="Read the value from this environment variable.")(f)


def stored(name: str, environment: str) -> str:
    return f"secret {name} of {environment} stored (encrypted; it is not shown again)"


def deleted(name: str, environment: str) -> str:
    return f"secret {name} of {environment} deleted"
