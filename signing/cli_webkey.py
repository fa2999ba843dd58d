"""``tiangong keys export-web``: an approver key as a web key file a browser can open
(``signing.webkey``), for signing approvals in the hub's web UI."""

from __future__ import annotations

import click

from signing.cli_common import (
    PASSPHRASES,
    Passphrases,
    click_errors,
    emit_json,
    passphrase_options,
    refuse_existing,
)
from signing.errors import KeyFileError
from signing.keyfile import write_file_atomic
from signing.passphrase import resolve_passphrase
from signing.webkey import encode_web_key

__all__ = ["export_web"]


@click.command("export-web", epilog=PASSPHRASES)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Web key file to write (e.g. alice.webkey).")
@click.option("--web-passphrase-file", type=click.Path(dir_okay=False), default=None,
              help="The web key file's passphrase: first line of this file (else asked "
              "twice).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@passphrase_options
def export_web(file: str, output: str, web_passphrase_file: str | None, force: bool,
               as_json: bool, passphrase_file: str | None, passphrase_env: str) -> None:
    """Write the approver key FILE as a web key file that the hub's release page can open
    in the browser (PBKDF2-SHA256 and AES-256-GCM, which WebCrypto offers) to sign an
    approval. The browser keeps the key in the page only; the hub never receives it. Give
    the web file a passphrase of its own, and keep it like the key file."""
    from pathlib import Path

    with click_errors():
        refuse_existing([Path(output)], force)
        loaded = Passphrases(passphrase_file, passphrase_env).load(file)
        if loaded.info.role != "approver":
            raise KeyFileError(f"{file} holds a {loaded.info.role} key; only approver keys "
                               "are exported for the browser")
        web_pass = resolve_passphrase(file=web_passphrase_file, env_var=None,
                                      interactive=True, confirm=True,
                                      what=f"the web key file {output}")
        data = encode_web_key(loaded.signing_key(), label=loaded.info.label,
                              passphrase=web_pass)
        write_file_atomic(output, data, mode=0o600, overwrite=force)
    if as_json:
        emit_json({"file": output, "key_id": loaded.info.key_id, "format": "tiangong-web-key/1"})
        return
    click.echo(f"wrote {output} (approver key {loaded.info.key_id}, for the web UI's "
               "browser signing)")
