"""signing.cli_common: duration options, the injected clock, passphrase loading, error mapping."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from signing.cli_common import (
    Passphrases,
    click_errors,
    clock_now,
    duration_option,
    format_size,
    passphrase_options,
    refuse_existing,
)
from signing.errors import KeyFileError, PassphraseError
from signing.keyfile import DEFAULT_PASSPHRASE_ENV, save_private_key, write_public_key
from signing.keys import SigningKey
from tests.signing.helpers import FAST_KDF, NOW


@click.command()
@click.option("--ttl", callback=duration_option, default=None)
@passphrase_options
def probe(ttl: int | None, passphrase_file: str | None, passphrase_env: str) -> None:
    click.echo(f"ttl={ttl} now={clock_now()} file={passphrase_file} env={passphrase_env}")


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [([], 0, "ttl=None"), (["--ttl", "12h"], 0, "ttl=43200"), (["--ttl", "2w"], 0, "ttl=1209600"),
     (["--ttl", "1y"], 2, "not a duration"), (["--ttl", "0d"], 2, "not a duration"),
     (["--passphrase-file", "p.txt"], 0, "file=p.txt"),
     ([], 0, f"env={DEFAULT_PASSPHRASE_ENV}")],
)
def test_options(args: list[str], code: int, fragment: str) -> None:
    result = CliRunner().invoke(probe, args, obj={"clock": lambda: NOW})
    assert result.exit_code == code, result.output
    assert fragment in result.output
    if code == 0:
        assert f"now={NOW}" in result.output


def test_clock_defaults_to_system_time() -> None:
    result = CliRunner().invoke(probe, [])
    assert result.exit_code == 0
    shown = int(result.output.split("now=")[1].split()[0])
    assert shown > NOW - 10 * 365 * 86400  # a real clock, not the injected one
    assert clock_now() >= shown  # also works outside a command


def test_click_errors_maps_signing_errors_only() -> None:
    with pytest.raises(click.ClickException, match=r"^k\.key: bad$"), click_errors("k.key: "):
        raise KeyFileError("bad")
    with pytest.raises(ValueError), click_errors():
        raise ValueError("not ours")


def test_refuse_existing(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    refuse_existing([tmp_path / "b"], force=False)
    refuse_existing([tmp_path / "a"], force=True)
    with pytest.raises(click.ClickException, match="already exist"):
        refuse_existing([tmp_path / "a", tmp_path / "b"], force=False)


@pytest.mark.parametrize(("n", "text"), [(8192, "8 KiB"), (256 << 20, "256 MiB"),
                                          (1 << 30, "1 GiB"), (1000, "1000 bytes"),
                                          ((1 << 20) + 1, f"{(1 << 20) + 1} bytes")])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def _key(tmp_path: Path, name: str, *, encrypted: bool = True) -> Path:
    path = tmp_path / name
    info = save_private_key(path, SigningKey.generate(), role="release", label=name,
                            passphrase="pw" if encrypted else None, kdf=FAST_KDF,
                            insecure_no_passphrase=not encrypted)
    write_public_key(f"{path}.pub", info)
    return path


def test_passphrases_load_once_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P", "pw")
    path = _key(tmp_path, "a.key")
    os.symlink(path, tmp_path / "link.key")
    passes = Passphrases(None, "P")
    first = passes.load(str(path))
    assert passes.load(str(tmp_path / "link.key")) is first  # same file, same object


def test_passphrases_refuse_public_files_and_wrong_passphrases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _key(tmp_path, "a.key")
    monkeypatch.setenv("P", "wrong")
    with pytest.raises(KeyFileError, match="public key file"):
        Passphrases(None, "P").load(f"{path}.pub")
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        Passphrases(None, "P").load(str(path))


def test_passphrases_warn_about_unencrypted_files(tmp_path: Path) -> None:
    path = _key(tmp_path, "plain.key", encrypted=False)

    @click.command()
    def load() -> None:
        Passphrases(None, "").load(str(path))

    result = CliRunner().invoke(load, [])
    assert result.exit_code == 0
    assert "stored without a passphrase" in result.stderr
