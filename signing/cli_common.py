"""Plumbing shared by the ``tiangong keys`` commands (and by other groups that read key files).

Turning ``SigningError`` into ``click.ClickException`` (exit code 1, message naming the file),
passphrase options and prompting, duration options, the injected clock
(``ctx.obj["clock"]``), help epilogs. No rule about keys or roots lives here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from signing.durations import parse_duration
from signing.errors import KeyFileError, PassphraseError, SigningError
from signing.keyfile import (
    DEFAULT_PASSPHRASE_ENV,
    LoadedKey,
    load_private_key,
    read_key_info,
    resolve_passphrase,
)

__all__ = [
    "EPILOG",
    "EXIT_EXPIRED",
    "KEY_HOMES",
    "PASSPHRASES",
    "WHERE",
    "Passphrases",
    "click_errors",
    "clock_now",
    "duration_option",
    "emit_json",
    "format_size",
    "passphrase_options",
    "refuse_existing",
]

EXIT_EXPIRED = 3

KEY_HOMES: Mapping[str, str] = {
    "root": "offline, on removable media kept in a safe; plugged in only for a root ceremony "
    "(keys root init / rotate) on an offline machine; never on the hub",
    "release": "in the hub's data directory (the hub signs release bundles with it)",
    "audit": "in the hub's data directory (the hub signs audit-log checkpoints with it)",
    "agent": "in the agent's home directory on the site (the ed25519 identity key signs "
    "results; the x25519 box key opens sealed secrets)",
    "approval": "in the hub's data directory as keys/approval.key (the hub signs approval "
    "attestations with it, for environments delegated in mode hub)",
    "approver": "with the approver only (a personal key: their own machine or token, never "
    "the hub); give the .pub file to whoever makes the root, to list it in a delegation",
}

EPILOG = """\b
Exit codes:
  0  success
  1  error; the message names the file and the rule (unreadable or
     malformed file, wrong passphrase, file exists, a verifier would
     reject the result, ...)
  2  usage error (unknown option, missing or invalid value)
  3  keys root show only: the root verifies but has expired
"""

WHERE = """\b
Where keys live:
  root     offline, on removable media in a safe; never on the hub
  release  the hub's data directory
  audit    the hub's data directory
  agent    the agent's home directory on the site
  approval the hub's data directory (hub-attested approvals)
  approver the approver's own machine (a personal key)
"""

PASSPHRASES = """\b
Passphrases (never on the command line), first found wins:
  --passphrase-file FILE   first line of FILE
  --passphrase-env NAME    environment variable (default TIANGONG_KEY_PASSPHRASE)
  otherwise                an interactive prompt
"""


def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Click callback: a duration such as ``90m``, ``12h``, ``365d`` or ``2w``, in seconds.

    (A callback rather than a ``ParamType`` subclass: that class is generic only from click
    8.4 on, and the base install allows click 8.1.)
    """
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def clock_now() -> int:
    """The injected clock (``ctx.obj["clock"]``) or the system clock, in Unix seconds."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    clock = obj.get("clock") if isinstance(obj, dict) else None
    return int(clock()) if callable(clock) else int(time.time())


@contextmanager
def click_errors(prefix: str = "") -> Iterator[None]:
    """Turn signing errors into a ClickException (exit code 1) with an operator message."""
    try:
        yield
    except SigningError as exc:
        raise click.ClickException(f"{prefix}{exc}") from exc


@dataclass
class Passphrases:
    """Where ``--passphrase-file`` / ``--passphrase-env`` say passphrases come from (else a
    prompt), and the private key files already unlocked with them in this command."""

    file: str | None
    env_var: str
    _cache: dict[str, LoadedKey] = field(default_factory=dict, init=False, repr=False)

    def get(self, what: str, *, confirm: bool = False) -> str:
        return resolve_passphrase(
            file=self.file, env_var=self.env_var or None, interactive=True, confirm=confirm,
            what=what, prompt=_prompt,
        )

    def load(self, path: str) -> LoadedKey:
        """Load a private key file once, asking for its passphrase only if it is encrypted."""
        key = os.path.realpath(path)
        if key not in self._cache:
            info = read_key_info(path)
            if info.kind != "private":
                raise KeyFileError(f"{path} is a public key file; its private key is needed")
            passphrase = self.get(f"{info.role} key {path}") if info.encrypted else None
            loaded = load_private_key(path, passphrase=passphrase)
            if not loaded.encrypted:
                click.echo(
                    f"warning: {path} is stored without a passphrase (--insecure-no-passphrase)",
                    err=True,
                )
            self._cache[key] = loaded
        return self._cache[key]


def _prompt(text: str) -> str:
    try:
        answer: str = click.prompt(
            text.rstrip(": "), hide_input=True, prompt_suffix=": ", err=True, show_default=False
        )
    except click.Abort:
        raise PassphraseError(
            "no passphrase given (use --passphrase-file, the environment variable "
            f"{DEFAULT_PASSPHRASE_ENV}, or type it at the prompt)"
        ) from None
    return answer


def passphrase_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--passphrase-file`` and ``--passphrase-env`` to a command (for other groups too)."""
    func = click.option(
        "--passphrase-env", default=DEFAULT_PASSPHRASE_ENV, show_default=True, metavar="NAME",
        help="Environment variable holding the passphrase (used when set).",
    )(func)
    func = click.option(
        "--passphrase-file", type=click.Path(dir_okay=False), metavar="FILE",
        help="Read the passphrase from the first line of FILE (mode 0600, please).",
    )(func)
    return func


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def refuse_existing(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing:
        raise click.ClickException(
            f"{', '.join(existing)} already exist(s); refusing to overwrite (use --force)"
        )


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"
