"""``tiangong hub keys``: the hub's approval key and root versions (the rules are in
``hub.keystore`` and ``hub.services.trust``)."""

from __future__ import annotations

from pathlib import Path

import click

from hub.cli.base import _config, _done, _emit, _services, _state, hub, json_option


@hub.group("keys")
def keys_group() -> None:
    """The hub's approval key and its root of trust (root versions)."""


@keys_group.command("approval-key")
@json_option
@click.pass_context
def keys_approval_key(ctx: click.Context, as_json: bool) -> None:
    """Give a hub initialised before hub-attested approvals its approval key
    (keys/approval.key and keys/approval.pub). List approval.pub in the root's approval
    role at the next root ceremony (docs/keys-and-trust.md), then `hub keys install-root`.
    Restart the hub's processes to load it."""
    from hub.keystore import create_approval_key, load_hub_keys
    from hub.services import audit
    from hub.services.users import require

    data_dir = _config(_state(ctx)).data_dir
    hub_id = load_hub_keys(data_dir, with_private=False).hub_id
    with _services(ctx) as sc:
        require(sc.actor, "user.manage")
        info = create_approval_key(data_dir, hub_id)
        audit.record(sc, "approval_key.created", "key", info.key_id, {"role": "approval"})
    pub = data_dir / "keys" / "approval.pub"
    _done(as_json, f"approval key {info.key_id} written; its public file is {pub}",
          {"key_id": info.key_id, "public_file": str(pub)})


@keys_group.command("install-root")
@click.argument("root_file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def keys_install_root(ctx: click.Context, root_file: Path, as_json: bool) -> None:
    """Make ROOT_FILE (the next root version, from `tiangong keys root rotate`) the hub's
    current root, after checking it is signed by the threshold of the current root's root
    keys and of its own. Every root version after 1 travels in each release bundle from
    now on, so agents take it with their next bundle. Restart the hub's processes."""
    from hub.errors import ValidationError
    from hub.services.trust import install_root
    from signing.errors import SigningError
    from signing.fileio import read_bounded
    from signing.roots import MAX_ROOT_BYTES

    data_dir = _config(_state(ctx)).data_dir
    try:
        envelope = read_bounded(root_file, MAX_ROOT_BYTES)
    except (OSError, SigningError) as exc:
        raise ValidationError(f"{root_file}: {exc}") from exc
    with _services(ctx) as sc:
        done = install_root(sc, data_dir, envelope, source=str(root_file))
    extra = f"; delegates approvals for {', '.join(done.delegations)}" if done.delegations else ""
    _done(as_json, f"root version {done.version} installed (was {done.previous_version}){extra}",
          {"version": done.version, "previous_version": done.previous_version,
           "sha256": done.sha256, "approval_role": done.approval_role,
           "delegations": list(done.delegations)})


@keys_group.command("roots")
@json_option
@click.pass_context
def keys_roots(ctx: click.Context, as_json: bool) -> None:
    """The root versions release bundles carry (2 up to the current one)."""
    from hub.keystore import load_hub_keys
    from signing.envelope import parse_envelope
    from signing.roots import RootDocument

    data_dir = _config(_state(ctx)).data_dir
    keys = load_hub_keys(data_dir, with_private=False)
    rows = []
    for envelope in keys.root_updates or (keys.root_envelope,):
        doc = RootDocument.from_bytes(parse_envelope(envelope).payload)
        rows.append({"version": doc.version, "expires": doc.expires,
                     "approval_role": doc.has_role("approval"),
                     "delegations": sorted(doc.approvals),
                     "in_bundles": doc.version > 1})
    _emit(rows, as_json)
