"""``tiangong keys root``: make, rotate and show the signed root document.

Every document is checked the way a verifier will check it (``TrustedRoot.pin`` for version 1,
``TrustedRoot.update`` for N+1) *before* it is written; the rules themselves live in
``signing.roots`` (docs/keys-and-trust.md §"Rotation rules").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from signing.cli_common import (
    EPILOG,
    EXIT_EXPIRED,
    PASSPHRASES,
    WHERE,
    Passphrases,
    click_errors,
    clock_now,
    duration_option,
    emit_json,
    passphrase_options,
    refuse_existing,
)
from signing.cli_delegations import (
    carry_delegations,
    check_parsed,
    delegations_json,
    read_delegation_file,
)
from signing.delegations import Delegation
from signing.durations import format_duration, format_utc
from signing.envelope import TYPE_ROOT, verify_envelope
from signing.errors import KeyFileError
from signing.keyfile import read_bounded, read_key_info, write_file_atomic
from signing.keys import SigningKey
from signing.roots import (
    MAX_ROOT_BYTES,
    OPTIONAL_ROLES,
    ROLES,
    KeyEntry,
    RootDocument,
    TrustedRoot,
    sign_root,
)

__all__ = ["root"]

@click.group(name="root", epilog=WHERE + "\n" + EPILOG)
def root() -> None:
    """Make, rotate and inspect the signed root document (root.json).

    The root document lists the root, release and audit keys, how many of each must sign,
    when online keys expire, and which keys are revoked. Agents pin version 1 at enrollment
    and accept version N+1 only when signed by a threshold of the root keys of N *and* N+1.
    Run these commands on an offline machine with the root keys' removable media.
    """


@dataclass
class _RoleKeys:
    entries: dict[str, KeyEntry]
    signers: list[SigningKey]


def _read_role_files(
    files: Sequence[str], role: str, passes: Passphrases | None, expires: int | None
) -> _RoleKeys:
    """Read key files of ``role``; private files are decrypted only when ``passes`` is given."""
    entries: dict[str, KeyEntry] = {}
    signers: list[SigningKey] = []
    seen: dict[str, str] = {}
    for path in files:
        info = read_key_info(path)
        if info.kind == "private" and passes is not None:
            loaded = passes.load(path)
            info = loaded.info
            signers.append(loaded.signing_key())
        elif info.kind == "private":
            raise KeyFileError(f"{path} is a private key file; give its .pub file")
        if info.role != role:
            raise KeyFileError(f"{path} holds a {info.role} key, a {role} key is needed here")
        pub = info.ed25519_public()
        if info.key_id in seen:
            raise KeyFileError(f"{path} and {seen[info.key_id]} hold the same key")
        seen[info.key_id] = path
        entries[info.key_id] = KeyEntry(pub, expires)
    return _RoleKeys(entries, signers)


def _check_threshold(role: str, threshold: int, count: int) -> None:
    if count == 0:
        raise click.ClickException(
            f"no {role} keys would be left (all revoked or replaced); give --{role}-key"
        )
    if not 1 <= threshold <= count:
        raise click.UsageError(
            f"the {role} threshold must be between 1 and the number of {role} keys ({count}), "
            f"not {threshold}"
        )


def _write_root(output: str, envelope: bytes, force: bool) -> None:
    with click_errors():
        write_file_atomic(output, envelope, mode=0o644, overwrite=force)


def _read_root(path: str) -> tuple[TrustedRoot, bytes]:
    with click_errors():
        data = read_bounded(path, MAX_ROOT_BYTES)
    with click_errors(f"{path}: not a valid root document: "):
        return TrustedRoot.pin(data), data


@root.command("init", epilog=WHERE + "\n" + PASSPHRASES + "\n" + EPILOG)
@click.option("--hub-id", required=True, help="Identifier of the hub this root belongs to.")
@click.option("--root-key", "root_keys", multiple=True, required=True,
              type=click.Path(dir_okay=False),
              help="Root key file (repeat). Private files sign; public files are only listed.")
@click.option("--threshold", type=click.IntRange(min=1), required=True,
              help="Root signatures required on this and the next root.")
@click.option("--release-key", "release_keys", multiple=True, required=True,
              type=click.Path(dir_okay=False), help="Release public key file (repeat).")
@click.option("--release-threshold", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--audit-key", "audit_keys", multiple=True, required=True,
              type=click.Path(dir_okay=False), help="Audit public key file (repeat).")
@click.option("--audit-threshold", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--approval-key", "approval_keys", multiple=True, type=click.Path(dir_okay=False),
              help="The hub's approval public key file (repeat): the optional approval role, "
              "needed by environments delegated in mode hub.")
@click.option("--approval-threshold", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--approvals", "approvals_file", type=click.Path(dir_okay=False), default=None,
              help="JSON file of approval delegations: environment -> mode, threshold, "
              "min_groups, approvers (see docs/keys-and-trust.md).")
@click.option("--expires", metavar="DURATION", callback=duration_option, default="365d",
              show_default=True,
              help="Lifetime of this root document (e.g. 365d).")
@click.option("--key-expires", metavar="DURATION", callback=duration_option, default=None,
              help="Lifetime of the release and audit keys (e.g. 90d; default: the root's).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Root document to write (root.json).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@passphrase_options
def root_init(
    hub_id: str, root_keys: tuple[str, ...], threshold: int, release_keys: tuple[str, ...],
    release_threshold: int, audit_keys: tuple[str, ...], audit_threshold: int,
    approval_keys: tuple[str, ...], approval_threshold: int, approvals_file: str | None,
    expires: int, key_expires: int | None, output: str, force: bool, as_json: bool,
    passphrase_file: str | None, passphrase_env: str,
) -> None:
    """Create root version 1, signed by a threshold of its own root keys.

    The root keys are private key files on removable media (offline; never copy them to the
    hub). Release and audit keys are given as public files (FILE.pub from 'keys generate'
    on the hub). The written root.json is what agents pin at enrollment.

    Root key files are read from their removable media on an offline machine; never copy
    them to the hub. Release and audit private keys stay in the hub's data directory.
    """
    refuse_existing([Path(output)], force)
    now = clock_now()
    passes = Passphrases(passphrase_file, passphrase_env)
    key_exp = now + key_expires if key_expires is not None else None
    with click_errors():
        rk = _read_role_files(root_keys, "root", passes, None)
        rel = _read_role_files(release_keys, "release", None, key_exp)
        aud = _read_role_files(audit_keys, "audit", None, key_exp)
        apr = _read_role_files(approval_keys, "approval", None, key_exp)
        delegations, approver_keys = (read_delegation_file(approvals_file) if approvals_file
                                      else ({}, {}))
    _check_threshold("root", threshold, len(rk.entries))
    _check_threshold("release", release_threshold, len(rel.entries))
    _check_threshold("audit", audit_threshold, len(aud.entries))
    if apr.entries:
        _check_threshold("approval", approval_threshold, len(apr.entries))
    if len(rk.signers) < threshold:
        raise click.ClickException(
            f"threshold {threshold} needs {threshold} private root key file(s); "
            f"{len(rk.signers)} given"
        )
    _check_disjoint({"root": rk.entries, "release": rel.entries, "audit": aud.entries,
                     "approval": apr.entries, "approver": approver_keys})
    roles = {"root": (tuple(rk.entries), threshold),
             "release": (tuple(rel.entries), release_threshold),
             "audit": (tuple(aud.entries), audit_threshold)}
    if apr.entries:
        roles["approval"] = (tuple(apr.entries), approval_threshold)
    doc = RootDocument(
        hub_id=hub_id, version=1, issued=now, expires=now + expires,
        keys={**rk.entries, **rel.entries, **aud.entries, **apr.entries, **approver_keys},
        roles=roles, approvals=delegations,
    )
    _check_document(doc)
    with click_errors(f"refusing to write {output}: a verifier would reject it: "):
        envelope = sign_root(doc, rk.signers)
        TrustedRoot.pin(envelope, now)
    _write_root(output, envelope, force)
    if as_json:
        emit_json(_written_json(output, doc, signed_by=len({k.key_id for k in rk.signers})))
        return
    click.echo(f"wrote {output}: root version 1 of hub {hub_id}, expires {format_utc(doc.expires)}")


def _check_document(doc: RootDocument) -> None:
    """Name a broken delegation (or other rule) before anything is signed."""
    with click_errors("the root would be invalid: "):
        check_parsed(doc)


def _written_json(output: str, doc: RootDocument, *, signed_by: int) -> dict[str, object]:
    """What 'root init' and 'root rotate --json' print about the root they wrote."""
    return {
        "file": output,
        "hub_id": doc.hub_id,
        "version": doc.version,
        "issued": format_utc(doc.issued),
        "expires": format_utc(doc.expires),
        "roles": {role: {"threshold": thr, "keys": list(ids)}
                  for role, (ids, thr) in sorted(doc.roles.items())},
        "revoked": sorted(doc.revoked),
        "approvals": delegations_json(doc),
        "signed_by": signed_by,
    }


def _check_disjoint(roles: Mapping[str, Mapping[str, KeyEntry]]) -> None:
    owner: dict[str, str] = {}
    for role, entries in roles.items():
        for kid in entries:
            if kid in owner:
                raise click.ClickException(
                    f"key {kid[:16]} is given for both roles {owner[kid]} and {role}; "
                    "each key serves one role (an approver key is in no role)"
                )
            owner[kid] = role


def _resolve_revocations(doc: RootDocument, revoke: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for text in revoke:
        kid = text.strip().lower()
        if len(kid) == 64 and not kid.strip("0123456789abcdef"):
            out.add(kid)
            continue
        matches = [k for k in doc.keys if len(kid) >= 8 and k.startswith(kid)]
        if len(matches) != 1:
            raise click.UsageError(
                f"--revoke {text[:70]}: give a full key id, or a prefix of at least 8 hex "
                f"characters matching exactly one key of root version {doc.version} "
                f"({len(matches)} match)"
            )
        out.add(matches[0])
    return out


def _carry(doc: RootDocument, role: str, revoked: set[str]) -> dict[str, KeyEntry]:
    ids, _ = doc.roles[role]
    return {kid: doc.keys[kid] for kid in ids if kid not in revoked and kid not in doc.revoked}


@root.command("rotate", epilog=WHERE + "\n" + PASSPHRASES + "\n" + EPILOG)
@click.option("--current", required=True, type=click.Path(dir_okay=False),
              help="The root document agents trust now (version N).")
@click.option("--signing-key", "signing_keys", multiple=True, required=True,
              type=click.Path(dir_okay=False),
              help="Private root key file of version N (repeat until its threshold is met).")
@click.option("--new-root-key", "new_root_keys", multiple=True, type=click.Path(dir_okay=False),
              help="Root key file of version N+1 (repeat; private files also sign). "
              "Default: keep N's root keys that are not revoked.")
@click.option("--threshold", type=click.IntRange(min=1), default=None,
              help="Root threshold of N+1 (default: N's).")
@click.option("--release-key", "release_keys", multiple=True, type=click.Path(dir_okay=False),
              help="Release public key file (repeat); replaces the release keys. "
              "Default: keep N's that are not revoked.")
@click.option("--release-threshold", type=click.IntRange(min=1), default=None)
@click.option("--audit-key", "audit_keys", multiple=True, type=click.Path(dir_okay=False),
              help="Audit public key file (repeat); replaces the audit keys.")
@click.option("--audit-threshold", type=click.IntRange(min=1), default=None)
@click.option("--approval-key", "approval_keys", multiple=True, type=click.Path(dir_okay=False),
              help="The hub's approval public key file (repeat); replaces the approval role's "
              "keys. Default: keep N's that are not revoked.")
@click.option("--approval-threshold", type=click.IntRange(min=1), default=None)
@click.option("--approvals", "approvals_file", type=click.Path(dir_okay=False), default=None,
              help="JSON file of approval delegations; replaces N's. Default: keep N's "
              "(without revoked approver keys).")
@click.option("--no-approvals", is_flag=True,
              help="Drop every approval delegation (and the approval role unless "
              "--approval-key is given).")
@click.option("--revoke", multiple=True, metavar="KEYID",
              help="Revoke a key (full id, or a unique prefix of 8+ hex characters).")
@click.option("--expires", metavar="DURATION", callback=duration_option, default="365d",
              show_default=True,
              help="Lifetime of root N+1.")
@click.option("--key-expires", metavar="DURATION", callback=duration_option, default=None,
              help="Lifetime of release/audit keys given here (kept keys keep theirs).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Root document N+1 to write.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@passphrase_options
def root_rotate(
    current: str, signing_keys: tuple[str, ...], new_root_keys: tuple[str, ...],
    threshold: int | None, release_keys: tuple[str, ...], release_threshold: int | None,
    audit_keys: tuple[str, ...], audit_threshold: int | None,
    approval_keys: tuple[str, ...], approval_threshold: int | None, approvals_file: str | None,
    no_approvals: bool, revoke: tuple[str, ...],
    expires: int, key_expires: int | None, output: str, force: bool, as_json: bool,
    passphrase_file: str | None, passphrase_env: str,
) -> None:
    """Make root version N+1, signed by a threshold of N's root keys and of its own.

    Use it to replace or add keys, revoke a lost or compromised key, or renew an expiring
    (or expired) root. The result is checked exactly as an agent will check it; nothing is
    written if an agent would refuse it. Deliver it to agents inside the next bundle.

    --signing-key and private --new-root-key files are root keys: read them from their
    removable media on an offline machine, never from (or onto) the hub.
    """
    if approvals_file and no_approvals:
        raise click.UsageError("give --approvals FILE or --no-approvals, not both")
    refuse_existing([Path(output)], force)
    now = clock_now()
    trusted, _ = _read_root(current)
    old = trusted.document
    if old.expires <= now:
        click.echo(
            f"warning: {current} (version {old.version}) expired at {format_utc(old.expires)}; "
            "rotating anyway: agents accept an expired intermediate root", err=True,
        )
    revoked = _resolve_revocations(old, revoke)
    passes = Passphrases(passphrase_file, passphrase_env)
    key_exp = now + key_expires if key_expires is not None else None
    with click_errors():
        old_root_ids = set(old.role_keys("root").keys)
        old_signers: list[SigningKey] = []
        for path in signing_keys:
            loaded = passes.load(path)
            if loaded.info.key_id not in old_root_ids:
                raise KeyFileError(
                    f"{path} (key id {loaded.info.key_id[:16]}) is not a root key of "
                    f"{current} (version {old.version})"
                )
            old_signers.append(loaded.signing_key())
        if new_root_keys:
            rk = _read_role_files(new_root_keys, "root", passes, None)
        else:
            rk = _RoleKeys(_carry(old, "root", revoked), [])
        rel = (_read_role_files(release_keys, "release", None, key_exp) if release_keys
               else _RoleKeys(_carry(old, "release", revoked), []))
        aud = (_read_role_files(audit_keys, "audit", None, key_exp) if audit_keys
               else _RoleKeys(_carry(old, "audit", revoked), []))
        apr = (_read_role_files(approval_keys, "approval", None, key_exp) if approval_keys
               else _RoleKeys({} if no_approvals or not old.has_role("approval")
                              else _carry(old, "approval", revoked), []))
        delegations: dict[str, Delegation]
        if approvals_file:
            delegations, approver_keys = read_delegation_file(approvals_file)
        elif no_approvals:
            delegations, approver_keys = {}, {}
        else:
            delegations, approver_keys = carry_delegations(old, revoked)
    all_revoked = set(old.revoked) | revoked
    for role, group in (("root", rk), ("release", rel), ("audit", aud), ("approval", apr),
                        ("approver", _RoleKeys(approver_keys, []))):
        bad = sorted(set(group.entries) & all_revoked)
        if bad:
            raise click.ClickException(f"{role} key {bad[0][:16]} is revoked and cannot be listed")
    thresholds = {
        "root": threshold if threshold is not None else old.roles["root"][1],
        "release": release_threshold if release_threshold is not None else old.roles["release"][1],
        "audit": audit_threshold if audit_threshold is not None else old.roles["audit"][1],
    }
    for role, group in (("root", rk), ("release", rel), ("audit", aud)):
        _check_threshold(role, thresholds[role], len(group.entries))
    if apr.entries:
        thresholds["approval"] = (approval_threshold if approval_threshold is not None
                                  else old.roles.get("approval", ((), 1))[1])
        _check_threshold("approval", thresholds["approval"], len(apr.entries))
    _check_disjoint({"root": rk.entries, "release": rel.entries, "audit": aud.entries,
                     "approval": apr.entries, "approver": approver_keys})
    for role, group in (("release", rel), ("audit", aud), ("approval", apr)):
        for kid, entry in group.entries.items():
            if entry.expires is not None and entry.expires <= now:
                click.echo(f"warning: kept {role} key {kid[:16]} expired at "
                           f"{format_utc(entry.expires)}; give a new --{role}-key", err=True)
    roles = {role: (tuple(group.entries), thresholds[role])
             for role, group in (("root", rk), ("release", rel), ("audit", aud), ("approval", apr))
             if group.entries}
    doc = RootDocument(
        hub_id=old.hub_id, version=old.version + 1, issued=now, expires=now + expires,
        keys={**rk.entries, **rel.entries, **aud.entries, **apr.entries, **approver_keys},
        roles=roles, revoked=frozenset(all_revoked), approvals=delegations,
    )
    _check_document(doc)
    with click_errors(f"refusing to write {output}: a verifier would reject it: "):
        envelope = sign_root(doc, [*old_signers, *rk.signers])
        trusted.update(envelope).check_current(now)
    _write_root(output, envelope, force)
    if as_json:
        signers = {k.key_id for k in [*old_signers, *rk.signers]}
        emit_json(_written_json(output, doc, signed_by=len(signers)))
        return
    click.echo(
        f"wrote {output}: root version {doc.version} of hub {doc.hub_id}, expires "
        f"{format_utc(doc.expires)}; signed by {len({k.key_id for k in old_signers})} key(s) "
        f"of version {old.version}"
    )


@root.command("show", epilog=EPILOG)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def root_show(file: str, as_json: bool) -> None:
    """Verify a root document's own signatures and show its version, expiry, roles and keys.

    Only the self-signature is checked here; whether it may follow the root an agent trusts
    is checked by the agent (or by 'keys root rotate' when it is made). Exits with 3 when
    the root verifies but has expired.
    """
    now = clock_now()
    trusted, data = _read_root(file)
    doc = trusted.document
    rk = doc.role_keys("root")
    with click_errors(f"{file}: "):
        signed = verify_envelope(
            data, payload_type=TYPE_ROOT, trusted=rk.keys, threshold=rk.threshold,
            max_bytes=MAX_ROOT_BYTES,
        ).signer_key_ids
    expired = doc.expires <= now
    roles_out: dict[str, Any] = {}
    present = [r for r in (*ROLES, *OPTIONAL_ROLES) if doc.has_role(r)]
    for role in present:
        ids, thr = doc.roles[role]
        listed = []
        for kid in ids:
            key_expires = doc.keys[kid].expires
            listed.append({
                "key_id": kid,
                "expires": key_expires,
                "expired": key_expires is not None and key_expires <= now,
                "revoked": kid in doc.revoked,
                "signed_this_root": kid in signed if role == "root" else None,
            })
        roles_out[role] = {"threshold": thr, "keys": listed}
    if as_json:
        emit_json({
            "file": file, "hub_id": doc.hub_id, "version": doc.version, "issued": doc.issued,
            "expires": doc.expires, "expired": expired, "roles": roles_out,
            "revoked": sorted(doc.revoked), "approvals": delegations_json(doc),
        })
    else:
        left = doc.expires - now
        state = (f"EXPIRED {format_duration(-left)} ago" if expired
                 else f"valid for {format_duration(left)}")
        click.echo(f"{file}: signature OK ({len(signed)} of {rk.threshold} required root keys)")
        click.echo(f"hub:     {doc.hub_id}")
        click.echo(f"version: {doc.version}")
        click.echo(f"issued:  {format_utc(doc.issued)}")
        click.echo(f"expires: {format_utc(doc.expires)} ({state})")
        for role in present:
            spec = roles_out[role]
            click.echo(f"{role}: threshold {spec['threshold']} of {len(spec['keys'])}")
            for k in spec["keys"]:
                notes = []
                if k["expires"] is not None:
                    notes.append(("EXPIRED " if k["expired"] else "expires ")
                                 + format_utc(k["expires"]))
                if k["revoked"]:
                    notes.append("REVOKED")
                if k["signed_this_root"]:
                    notes.append("signed")
                click.echo(f"  {k['key_id']}" + (f"  ({', '.join(notes)})" if notes else ""))
        if doc.revoked:
            click.echo(f"revoked: {', '.join(sorted(doc.revoked))}")
        _echo_delegations(doc, now)
    if expired:
        click.echo(
            f"error: {file} (root version {doc.version}) expired at {format_utc(doc.expires)}; "
            "agents refuse it as their newest root. Make a new one with "
            "'tiangong keys root rotate'.", err=True,
        )
        click.get_current_context().exit(EXIT_EXPIRED)


def _echo_delegations(doc: RootDocument, now: int) -> None:
    """The approval delegations, one environment per paragraph (docs/keys-and-trust.md)."""
    if not doc.approvals:
        click.echo("approvals: none delegated (no environment requires approvals at the site)")
        return
    click.echo("approvals:")
    for env, d in sorted(doc.approvals.items()):
        label = "every other environment (*)" if env == "*" else env
        click.echo(f"  {label}: {d.describe()}")
        for kid, a in sorted(d.approvers.items(), key=lambda x: x[1].name):
            notes = []
            if kid in doc.revoked:
                notes.append("REVOKED")
            key_exp = doc.keys[kid].expires
            if key_exp is not None:
                notes.append(("EXPIRED " if key_exp <= now else "expires ") + format_utc(key_exp))
            click.echo(f"    {a.name} ({a.group})  {kid}"
                       + (f"  ({', '.join(notes)})" if notes else ""))
