"""tiangong.secret_input: a secret's value from a file or standard input (shared by `hub
secrets set` and `remote secrets set`)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tiangong.secret_input import read_value


@click.command()
@click.option("--from-file", default=None)
def _show(from_file: str | None) -> None:
    click.echo(repr(read_value(None, from_file)))


@pytest.mark.parametrize(("data", "value"), [
    (b"s3cret\n", "s3cret"), (b"s3cret", "s3cret"), (b"s3cret\r\n", "s3cret"),
    (b"two\n\n", "two\n"),  # one new line dropped, as the help says (not every one)
    ("p\u00e4ss\n".encode(), "p\u00e4ss"),
])
def test_one_trailing_new_line_is_dropped_from_a_file_and_stdin(
        tmp_path: Path, data: bytes, value: str) -> None:
    path = tmp_path / "v"
    path.write_bytes(data)
    assert CliRunner().invoke(_show, ["--from-file", str(path)]).output == f"{value!r}\n"
    assert CliRunner().invoke(_show, [], input=data).output == f"{value!r}\n"


def test_a_value_that_is_not_utf8_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    """A binary key file (or Latin-1 text) raised a raw UnicodeDecodeError from `hub secrets
    set … --from-file` and `remote secrets set`."""
    path = tmp_path / "key.bin"
    path.write_bytes(b"\x00\x01ab\xd0\x28")
    for args, stdin in ((["--from-file", str(path)], None), ([], b"ab\xff")):
        result = CliRunner().invoke(_show, args, input=stdin)
        assert result.exit_code == 2 and result.exception is not None
        assert "is not UTF-8 text" in result.output and "base64" in result.output
        assert "Traceback" not in result.output
