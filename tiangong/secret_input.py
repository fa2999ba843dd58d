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


def read_value(from_env: str | None, from_file: str | None) -> str:
    """The value from ``--from-env VAR``, ``--from-file PATH`` (one trailing newline
    dropped) or standard input."""
    if from_env is not None and from_file is not None:
        raise click.UsageError("give --from-env or --from-file, not both")
    if from_env is not None:
        value = os.environ.get(from_env)
        if value is None:
            raise click.UsageError(f"environment variable {from_env} is not set")
        return value
    if from_file is not None:
        try:
            with open(from_file, encoding="utf-8") as fh:
                return fh.read().rstrip("\n")
        except OSError as exc:
            raise click.UsageError(f"cannot read {from_file}: {exc.strerror}") from None
    if sys.stdin.isatty():
        value = click.prompt("value (not echoed)", hide_input=True, err=True)
        return str(value)
    return sys.stdin.read().rstrip("\n")


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
