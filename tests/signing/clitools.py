"""Helpers for the CLI tests: run ``tiangong keys`` with an injected clock and passphrase,
and a directory of key files made through the API at the cheapest Argon2id cost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from click.testing import CliRunner, Result

from signing.cli import keys
from signing.keyfile import DEFAULT_PASSPHRASE_ENV, save_private_key, write_public_key
from signing.keys import SigningKey
from tests.signing.helpers import FAST_KDF, NOW

PASS = "ceremony passphrase"


def run(args: Sequence[str], *, passphrase: str | None = PASS, input: str | None = None,
        now: int = NOW) -> Result:
    runner = CliRunner()
    return runner.invoke(keys, list(args), env={DEFAULT_PASSPHRASE_ENV: passphrase},
                         input=input, obj={"clock": lambda: now})


def check(result: Result, code: int) -> Result:
    """Assert the exit code, and that no unexpected Python exception hid behind it."""
    assert result.exit_code == code, result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


class KeyDir:
    """Key files made through the API (fast KDF): ``<name>.key`` and ``<name>.key.pub``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, str] = {}

    def make(self, name: str, role: str, passphrase: str = PASS) -> Path:
        key = SigningKey.generate()
        info = save_private_key(self.path / f"{name}.key", key, role=role, label=name,
                                passphrase=passphrase, kdf=FAST_KDF)
        write_public_key(self.path / f"{name}.key.pub", info)
        self.ids[name] = info.key_id
        return self.path / f"{name}.key"

    def key(self, name: str) -> str:
        return str(self.path / f"{name}.key")

    def pub(self, name: str) -> str:
        return str(self.path / f"{name}.key.pub")


def init_args(kd: KeyDir, out: str = "root.json", *extra: str) -> list[str]:
    return ["root", "init", "--hub-id", "hub-1", "--root-key", kd.key("root1"),
            "--threshold", "1", "--release-key", kd.pub("release1"),
            "--audit-key", kd.pub("audit1"), "--expires", "365d", "--key-expires", "90d",
            "-o", str(kd.path / out), *extra]
