"""``tiangong keys approve`` and ``tiangong keys approval show``: an approver's own signature.

``keys approve`` signs one approval (``signing.approvals``) with the approver's personal key;
the file goes to the hub (uploaded to the release) or straight into a hand-made bundle
(``tiangong bundle create --approval FILE``). ``keys approval show`` prints an approval or an
attestation and, given the root, says whether and for whom it would count.

What is approved (product, version, content hash) is given explicitly, or read from a release
directory (``--release``) or a bundle (``--bundle``, whose content hash is recomputed from its
steps and files: the approver approves that content, whatever the bundle claims).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from signing.approvals import (
    MAX_APPROVAL_BYTES,
    ApprovalDocument,
    AttestationDocument,
    ReleaseRef,
    evaluate_approvals,
    peek_approval,
    sign_approval,
)
from signing.cli_common import (
    EPILOG,
    PASSPHRASES,
    Passphrases,
    click_errors,
    clock_now,
    duration_option,
    emit_json,
    passphrase_options,
    refuse_existing,
)
from signing.delegations import ANY_ENVIRONMENT
from signing.durations import format_utc
from signing.errors import KeyFileError
from signing.keyfile import read_bounded, write_file_atomic
from signing.roots import MAX_ROOT_BYTES, RootDocument, TrustedRoot

__all__ = ["approval", "approve", "read_approval_file"]


def read_approval_file(path: str) -> bytes:
    """The envelope bytes of an approval file (trailing whitespace from editors dropped).

    Raises:
        KeyFileError: unreadable or over :data:`signing.approvals.MAX_APPROVAL_BYTES`.
    """
    return read_bounded(path, MAX_APPROVAL_BYTES + 64).rstrip(b" \t\r\n")


def _release_of(release_dir: str | None, bundle_file: str | None) -> tuple[str, str, str]:
    """(product, version, content hash) of a release directory or a bundle file."""
    # Imported here: the signing package does not depend on the bundle package, only this
    # command does.
    from bundle.errors import BundleError
    from bundle.inspect import inspect
    from bundle.release import content_hash_of_manifest, load_release

    try:
        if release_dir is not None:
            src = load_release(Path(release_dir))
            return src.product, src.version, src.content_hash
        assert bundle_file is not None
        info = inspect(Path(bundle_file))
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot read {release_dir or bundle_file}: "
                                   f"{exc.strerror}") from exc
    m = info.manifest
    if m is None or m.release is None:
        raise click.ClickException(f"{bundle_file} is not a readable release bundle"
                                   + (f": {info.problem}" if info.problem else ""))
    return m.release.product, m.release.version, content_hash_of_manifest(m)


@click.command("approve", epilog=PASSPHRASES + "\n" + EPILOG)
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False),
              help="Your personal approver key (private file, role approver).")
@click.option("--approver", "name", default=None, metavar="NAME",
              help="The name the root lists for your key (default: looked up in --root).")
@click.option("--root", "root_file", type=click.Path(dir_okay=False), default=None,
              help="The root document: checks that your key may approve for the "
              "environment(s) and finds your name.")
@click.option("--product", default=None)
@click.option("--version", "version", default=None)
@click.option("--content-hash", default=None, metavar="HEX",
              help="The release's content hash (64 hex; 'hub releases show' prints it).")
@click.option("--release", "release_dir", type=click.Path(file_okay=False), default=None,
              help="Take product, version and content hash from this release directory.")
@click.option("--bundle", "bundle_file", type=click.Path(dir_okay=False), default=None,
              help="Take them from this bundle (content hash recomputed from its steps and "
              "files).")
@click.option("--environment", "environments", multiple=True, required=True, metavar="ENV",
              help="Environment this approval is for (repeat; '*' = any environment).")
@click.option("--expires", "expires_in", metavar="DURATION", callback=duration_option,
              default="7d", show_default=True, help="How long the approval stays valid.")
@click.option("--comment", default="", help="Free text kept with the approval.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Approval file to write.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print what was signed as JSON.")
@passphrase_options
def approve(key_file: str, name: str | None, root_file: str | None, product: str | None,
            version: str | None, content_hash: str | None, release_dir: str | None,
            bundle_file: str | None, environments: tuple[str, ...], expires_in: int,
            comment: str, output: str, force: bool, as_json: bool,
            passphrase_file: str | None, passphrase_env: str) -> None:
    """Sign your approval of one release (its content hash) for some environments.

    Give the release with --product/--version/--content-hash, --release DIR or --bundle
    FILE. The file written goes to the hub (upload it to the release) or into a bundle
    made by hand ('tiangong bundle create --approval FILE'). Agents of an environment whose
    root delegation lists your key count it; an author's own approval never counts.
    """
    given = [x is not None for x in (release_dir, bundle_file)]
    explicit = [x is not None for x in (product, version, content_hash)]
    if sum(given) + (1 if any(explicit) else 0) != 1 or (any(explicit) and not all(explicit)):
        raise click.UsageError("give the release once: --product, --version and "
                               "--content-hash together, or --release DIR, or --bundle FILE")
    refuse_existing([Path(output)], force)
    now = clock_now()
    if release_dir is not None or bundle_file is not None:
        product, version, content_hash = _release_of(release_dir, bundle_file)
    assert product is not None and version is not None and content_hash is not None
    with click_errors():
        loaded = Passphrases(passphrase_file, passphrase_env).load(key_file)
        if loaded.info.role != "approver":
            raise KeyFileError(f"{key_file} holds a {loaded.info.role} key; an approval is "
                               "signed with a personal approver key (keys generate --role "
                               "approver)")
        key = loaded.signing_key()
    root = _read_root(root_file) if root_file is not None else None
    if root is not None:
        name = _check_listed(root, key.key_id, name, environments, key_file)
    if name is None:
        raise click.UsageError("give --approver NAME (the name the root lists for your key), "
                               "or --root ROOT.json to look it up")
    doc = ApprovalDocument(product, version, content_hash, tuple(environments), name, now,
                           now + expires_in, comment)
    with click_errors("refusing to sign: "):
        envelope = sign_approval(doc, key)
        write_file_atomic(output, envelope, mode=0o644, overwrite=force)
    if as_json:
        emit_json({"file": output, "key_id": key.key_id, **doc.to_json()})
        return
    click.echo(f"wrote {output}: {name} approves {product} {version} "
               f"(content {content_hash[:16]}…) for {', '.join(environments)}, until "
               f"{format_utc(doc.expires)}")


def _read_root(path: str) -> RootDocument:
    with click_errors():
        data = read_bounded(path, MAX_ROOT_BYTES)
    with click_errors(f"{path}: not a valid root document: "):
        return TrustedRoot.pin(data).document


def _check_listed(root: RootDocument, key_id: str, name: str | None,
                  environments: tuple[str, ...], key_file: str) -> str:
    """The approver name of ``key_id`` in ``root`` for ``environments`` (checked)."""
    wanted = list(root.approvals) if ANY_ENVIRONMENT in environments else list(environments)
    names: set[str] = set()
    for env in wanted:
        d = root.delegation(env)
        if d is None or d.mode != "signed" or key_id not in d.approvers:
            raise click.ClickException(
                f"{key_file} (key id {key_id[:16]}) is not an approver key of environment "
                f"{env!r} in root version {root.version}; agents there would not count it")
        names.add(d.approvers[key_id].name)
    if name is not None and names and name not in names:
        raise click.ClickException(f"root version {root.version} lists key {key_id[:16]} as "
                                   f"{', '.join(sorted(names))}, not {name!r}")
    if name is None:
        if len(names) != 1:
            raise click.UsageError("give --approver NAME: the root lists your key under "
                                   f"{len(names)} names")
        name = names.pop()
    return name


@click.group("approval", epilog=EPILOG)
def approval() -> None:
    """Inspect approval files (made by 'keys approve' or by the hub)."""


@approval.command("show", epilog=EPILOG)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--root", "root_file", type=click.Path(dir_okay=False), default=None,
              help="Check the signature against this root's delegations.")
@click.option("--environment", default=None, metavar="ENV",
              help="With --root: say whether it counts for ENV (also needs --author).")
@click.option("--author", default=None, help="With --environment: the release's author.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def approval_show(file: str, root_file: str | None, environment: str | None,
                  author: str | None, as_json: bool) -> None:
    """Show what an approval or approval attestation says (UNVERIFIED without --root).

    With --root and --environment, the approval is judged exactly as an agent of that
    environment judges it (at the current time), for its own product, version and content
    hash: signature, approver key, environments, expiry, author.
    """
    with click_errors(f"{file}: "):
        data = read_approval_file(file)
        env, doc = peek_approval(data)
    out: dict[str, Any] = {"file": file, "payload_type": env.payload_type,
                           "signed_by": [s.keyid for s in env.signatures], **doc.to_json()}
    verdict = None
    if root_file is not None and environment is not None:
        root = _read_root(root_file)
        verdict = evaluate_approvals(root, environment,
                                     ReleaseRef(doc.product, doc.version, author or ""),
                                     doc.content_hash, [data], clock_now())
        out["verdict"] = verdict.to_json()
    elif root_file is not None or author is not None:
        raise click.UsageError("--root and --author are used with --environment")
    if as_json:
        emit_json(out)
        return
    state = f"judged against {root_file}" if verdict is not None else "UNVERIFIED"
    click.echo(f"{file} ({state})")
    if isinstance(doc, ApprovalDocument):
        signer = env.signatures[0].keyid[:16] if env.signatures else "-"
        click.echo(f"  approval by  {doc.approver} (key {signer})")
        click.echo(f"  at           {format_utc(doc.at)}   expires {format_utc(doc.expires)}")
        if doc.comment:
            click.echo(f"  comment      {doc.comment}")
    elif isinstance(doc, AttestationDocument):
        click.echo(f"  attestation  issued {format_utc(doc.issued)}   expires "
                   f"{format_utc(doc.expires)}")
        for a in doc.approvers:
            click.echo(f"  approver     {a.name} ({a.group}) at {format_utc(a.at)}")
    click.echo(f"  release      {doc.product} {doc.version}")
    click.echo(f"  content      {doc.content_hash}")
    click.echo(f"  environments {', '.join(doc.environments)}")
    if verdict is not None:
        report = verdict.envelopes[0] if verdict.envelopes else None
        if verdict.delegation is None:
            click.echo(f"  {verdict.message}")
        elif report is not None and report.reason is None:
            click.echo(f"  counts for {environment} as {', '.join(report.counted)}")
        else:
            why = report.reason if report is not None else "not counted"
            click.echo(f"  does NOT count for {environment}: {why}")
            click.get_current_context().exit(1)
