"""``tiangong keys``: create and inspect key files; make, rotate and show root documents.

The commands translate between files and the sans-I/O core (``signing.keyfile``,
``signing.roots``): every rule lives there, and the commands only turn ``SigningError`` into a
``click.ClickException`` whose message names the file. This module has the key-file commands;
``signing.cli_root`` the root ceremonies; ``signing.cli_common`` the shared plumbing.

Passphrases are never taken from argv: they come from ``--passphrase-file``, the environment
variable named by ``--passphrase-env`` (default ``TIANGONG_KEY_PASSPHRASE``), or a prompt.

Tests inject the clock with ``obj={"clock": lambda: 1_800_000_000}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from signing.cli_approvals import approval, approve
from signing.cli_common import (
    EPILOG,
    EXIT_EXPIRED,
    KEY_HOMES,
    PASSPHRASES,
    WHERE,
    Passphrases,
    click_errors,
    clock_now,
    duration_option,
    emit_json,
    format_size,
    passphrase_options,
    refuse_existing,
)
from signing.cli_root import root
from signing.cli_webkey import export_web
from signing.durations import format_utc
from signing.errors import KeyFileError
from signing.keyfile import (
    DEFAULT_KDF_PROFILE,
    KDF_PROFILES,
    KEY_ROLES,
    KeyInfo,
    parse_key_info,
    read_bounded,
    read_key_info,
    save_private_key,
    write_public_key,
)
from signing.keys import BoxKeyPair, SigningKey
from signing.roots import MAX_ROOT_BYTES

__all__ = [
    "EXIT_EXPIRED",
    "KEY_HOMES",
    "Passphrases",
    "duration_option",
    "keys",
    "passphrase_options",
]

# Older names, imported by bundle/cli.py; prefer the public ones from signing.cli_common.
_Passphrases = Passphrases
_passphrase_options = passphrase_options

@click.group(
    name="keys",
    epilog=WHERE + "\n" + EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def keys() -> None:
    """Create and inspect key files; make, rotate and show the root of trust.

    Roles: the root key (offline) signs root documents that list the release and audit keys
    (online, on the hub) with their expiry; an agent has its own identity and box keys. See
    docs/keys-and-trust.md.
    """


@keys.command(epilog=WHERE + "\n" + PASSPHRASES + "\n" + EPILOG)
@click.option("--role", type=click.Choice(KEY_ROLES), required=True, help="What the key signs.")
@click.option("--label", default=None, help="Free text shown by 'keys show' (default: role+date).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=True,
              help="Private key file to write; FILE.pub gets the public key.")
@click.option("--box-output", type=click.Path(dir_okay=False), default=None,
              help="Agent role only: the x25519 box key file (default: FILE.box).")
@click.option("--kdf-profile", type=click.Choice(sorted(KDF_PROFILES)),
              default=DEFAULT_KDF_PROFILE, show_default=True,
              help="Argon2id cost for the passphrase (sensitive: ~1 GiB of memory per unlock).")
@click.option("--insecure-no-passphrase", is_flag=True,
              help="Store the key unencrypted (marked in the file). Only for keys protected by "
              "their location, e.g. an agent key in a container volume. Refused for root.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the files written and their key ids as JSON.")
@passphrase_options
def generate(
    role: str, label: str | None, output: str, box_output: str | None, kdf_profile: str,
    insecure_no_passphrase: bool, force: bool, as_json: bool, passphrase_file: str | None,
    passphrase_env: str,
) -> None:
    """Generate a key pair of ROLE and write FILE (private, 0600) and FILE.pub.

    \b
    Where to keep FILE:
      root     offline, on removable media in a safe; never on the hub
      release  the hub's data directory
      audit    the hub's data directory
      agent    the agent's home directory
      approval the hub's data directory (keys/approval.key; hub-attested approvals)
      approver the approver's own machine (a personal key; never the hub)

    For the agent role two key pairs are made: the ed25519 identity key in FILE (signs
    results) and a separate x25519 box key in FILE.box (opens secrets sealed to this agent),
    each with its .pub file. They are separate files so each holds exactly one key and the
    box key can be replaced without changing the agent's identity. Both use the same
    passphrase.
    """
    if insecure_no_passphrase and role in ("root", "approver"):
        raise click.UsageError(f"a{'' if role == 'root' else 'n'} {role} key is always "
                               "encrypted; drop --insecure-no-passphrase")
    if box_output is not None and role != "agent":
        raise click.UsageError("--box-output is only for --role agent")
    out = Path(output)
    box = Path(box_output) if box_output else Path(f"{output}.box")
    paths = [out, Path(f"{out}.pub")]
    if role == "agent":
        paths += [box, Path(f"{box}.pub")]
    refuse_existing(paths, force)
    text = label if label is not None else f"{role} {format_utc(clock_now())[:10]}"
    with click_errors():
        passphrase = None
        if not insecure_no_passphrase:
            passphrase = Passphrases(passphrase_file, passphrase_env).get(
                f"the new {role} key {output}", confirm=True
            )
        kdf = KDF_PROFILES[kdf_profile]
        material: list[tuple[Path, SigningKey | BoxKeyPair, str]] = [
            (out, SigningKey.generate(), text)
        ]
        if role == "agent":
            material.append((box, BoxKeyPair.generate(), f"{text} (sealed secrets)"))
        written: list[dict[str, Any]] = []
        for path, key, key_label in material:
            info = save_private_key(
                path, key, role=role, label=key_label, passphrase=passphrase, kdf=kdf,
                insecure_no_passphrase=insecure_no_passphrase, force=force,
            )
            write_public_key(f"{path}.pub", info, force=force)
            written.append({"file": str(path), "public_file": f"{path}.pub", "role": role,
                            "scheme": info.scheme, "key_id": info.key_id,
                            "public": info.public.hex()})
            if not as_json:
                click.echo(f"wrote {path} ({role}, {info.scheme}, key id {info.key_id})")
                click.echo(f"wrote {path}.pub")
    if insecure_no_passphrase:
        click.echo("warning: the private key is NOT encrypted; protect the file itself", err=True)
    if as_json:
        emit_json({"keys": written, "encrypted": not insecure_no_passphrase,
                   "keep": KEY_HOMES[role]})
        return
    click.echo(f"keep {output}: {KEY_HOMES[role]}")


def _info_json(info: KeyInfo) -> dict[str, Any]:
    return {
        "file": info.source,
        "kind": info.kind,
        "role": info.role,
        "scheme": info.scheme,
        "label": info.label,
        "key_id": info.key_id,
        "public": info.public.hex(),
        "encrypted": info.encrypted if info.kind == "private" else None,
        "kdf": (
            {"name": "argon2id", "opslimit": info.kdf.opslimit, "memlimit": info.kdf.memlimit}
            if info.kdf is not None else None
        ),
    }


@keys.command(epilog=EPILOG)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(file: str, as_json: bool) -> None:
    """Show a key file's key id, role, scheme and protection (private or public file).

    Nothing is decrypted: for an encrypted private file the public key shown is what the file
    claims; 'keys export-public' checks it against the decrypted key.
    """
    with click_errors():
        data = read_bounded(file, MAX_ROOT_BYTES)
        try:
            info = parse_key_info(data, source=file)
        except KeyFileError as exc:
            if b'"payloadType"' in data:
                raise KeyFileError(
                    f"{file} is a signed envelope, not a key file; for a root document use "
                    "'tiangong keys root show'"
                ) from exc
            raise
    if as_json:
        emit_json(_info_json(info))
        return
    if info.kind == "public":
        protection = "public key file"
    elif info.encrypted and info.kdf is not None:
        protection = (
            f"private key, encrypted (argon2id, opslimit {info.kdf.opslimit}, "
            f"memlimit {format_size(info.kdf.memlimit)})"
        )
    else:
        protection = "private key, NOT encrypted (written with --insecure-no-passphrase)"
    rows = [("file", file), ("kind", protection), ("role", info.role), ("scheme", info.scheme),
            ("label", info.label), ("key id", info.key_id), ("public", info.public.hex())]
    for name, value in rows:
        click.echo(f"{name + ':':<8} {value}")


@keys.command("export-public", epilog=PASSPHRASES + "\n" + EPILOG)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Public key file to write.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the written key's details as JSON.")
@passphrase_options
def export_public(
    file: str, output: str, force: bool, as_json: bool, passphrase_file: str | None,
    passphrase_env: str,
) -> None:
    """Write the public key file of the private key FILE.

    The private file is decrypted first, so the public key written is proven to belong to
    the secret key (a hand-edited header cannot smuggle in another key). Given a public key
    file, it is checked and copied.
    """
    with click_errors():
        info = read_key_info(file)
        if info.kind == "private":
            info = Passphrases(passphrase_file, passphrase_env).load(file).info
        write_public_key(output, info, force=force)
    if as_json:
        emit_json({**_info_json(info), "file": output, "kind": "public", "encrypted": None,
                   "kdf": None})
        return
    click.echo(f"wrote {output} ({info.role}, {info.scheme}, key id {info.key_id})")


keys.add_command(root)
keys.add_command(approve)
keys.add_command(approval)
keys.add_command(export_web)
