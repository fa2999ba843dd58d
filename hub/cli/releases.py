"""``tiangong hub products`` and ``tiangong hub releases``: create, submit, approve, reject,
diff (the rules are in ``hub.services.releases`` and ``hub.services.approvals``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hub.cli.base import _done, _emit, _services, hub, json_option
from signing.cli_common import duration_option, passphrase_options
from tiangong import options


@hub.group()
def products() -> None:
    """Products (things you deploy)."""


@products.command("create")
@click.argument("name")
@click.option("--description", default="")
@json_option
@click.pass_context
def products_create(ctx: click.Context, name: str, description: str, as_json: bool) -> None:
    """Create a product."""
    from hub.services.releases import create_product

    with _services(ctx) as sc:
        create_product(sc, name, description=description)
    _done(as_json, f"product {name} created", {"product": name, "description": description})


@products.command("list")
@json_option
@click.pass_context
def products_list(ctx: click.Context, as_json: bool) -> None:
    """List products."""
    from hub.services.releases import list_products
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = [
            {"name": p.name, "description": p.description, "created_at": p.created_at}
            for p in list_products(sc.session)
        ]
    _emit(rows, as_json)


def _undo_line(number: int, step: Any) -> str:
    """``2 (create schema): undo: no (a sql step without a down script cannot be undone)``."""
    from bundle.steps import undo_support

    ok, why = undo_support(step)
    return f"{number} ({step.get('name')}): undo: {'yes' if ok else 'no'} ({why})"


def _release_row(rel: Any, full: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {
        "product": rel.product.name,
        "version": rel.version,
        "state": rel.state,
        "author": rel.author.username,
        "content_hash": rel.content_hash if full else rel.content_hash[:16],
        "created_at": rel.created_at,
    }
    if full:
        row.update(
            description=rel.description,
            submitted_at=rel.submitted_at,
            stored_path=rel.stored_path,
            steps=[s.get("name") for s in rel.steps],
            undo=[_undo_line(n, s) for n, s in enumerate(rel.steps, start=1)],
            files=[f["name"] for f in rel.files],
            approvals=[
                {
                    "by": a.approver.username,
                    "decision": a.decision,
                    "environment": a.environment.name if a.environment else None,
                    "comment": a.comment,
                    "at": a.at,
                    "signed_by": a.key_id,
                    "expires_at": a.expires_at,
                }
                for a in rel.approvals
            ],
            rollback_of=rel.rollback_of_id,
            approved_by_inheritance_from=(rel.approvals_from.label
                                          if rel.approvals_from is not None else None),
        )
    return row


@hub.group()
def releases() -> None:
    """Releases: create, submit, approve, reject, diff."""


@releases.command("create")
@click.argument("release_path", type=click.Path(exists=True, path_type=Path))
@click.option("--product", default=None, help="Refuse unless release.toml names this product.")
@click.option(
    "--create-product",
    "make_product",
    is_flag=True,
    help="Create the product first if it does not exist.",
)
@json_option
@click.pass_context
def releases_create(
    ctx: click.Context, release_path: Path, product: str | None, make_product: bool, as_json: bool
) -> None:
    """Create a draft release from RELEASE_PATH: a release directory (release.toml + files)
    or a release archive (.tar, .tar.gz, .tgz, .zip)."""
    from hub.services.releases import create_release

    with _services(ctx) as sc:
        rel = create_release(sc, release_path, product=product, create_missing_product=make_product)
        row = _release_row(rel, full=True)
    _emit(row, as_json)


@releases.command("list")
@click.option("--product", default=None)
@json_option
@click.pass_context
def releases_list(ctx: click.Context, product: str | None, as_json: bool) -> None:
    """List releases."""
    from hub.services.releases import list_releases
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = [_release_row(r) for r in list_releases(sc.session, product)]
    _emit(rows, as_json)


@releases.command("show")
@click.argument("product")
@click.argument("version")
@json_option
@click.pass_context
def releases_show(ctx: click.Context, product: str, version: str, as_json: bool) -> None:
    """Show one release with its steps, files and approvals."""
    from hub.services.releases import get_release
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        row = _release_row(get_release(sc.session, product, version), full=True)
    _emit(row, as_json)


@releases.command("submit")
@click.argument("product")
@click.argument("version")
@json_option
@click.pass_context
def releases_submit(ctx: click.Context, product: str, version: str, as_json: bool) -> None:
    """Submit a draft for approval (its content hash is fixed from now on)."""
    from hub.services.releases import get_release, submit_release

    with _services(ctx) as sc:
        rel = submit_release(sc, get_release(sc.session, product, version))
        digest, state = rel.content_hash, rel.state
    _done(as_json, f"release {product} {version} submitted; content hash {digest}",
          {"product": product, "version": version, "state": state, "content_hash": digest})


@releases.command("approve")
@click.argument("product")
@click.argument("version")
@click.option("--comment", default="")
@click.option("--environment", default=None, help="Approve for this environment only.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sign the approval here with this personal approver key (its public half "
                   "registered to you: hub users add-key); sites can then verify it.")
@click.option("--signature", "signature_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Upload an approval made with `tiangong keys approve`.")
@click.option("--expires", "valid_for", default="30d", show_default=True,
              callback=duration_option, help="How long a --key approval stays valid.")
@passphrase_options
@json_option
@click.pass_context
def releases_approve(
    ctx: click.Context, product: str, version: str, comment: str, environment: str | None,
    key_file: Path | None, signature_file: Path | None, valid_for: int,
    passphrase_file: str | None, passphrase_env: str, as_json: bool,
) -> None:
    """Approve a submitted release (never your own). With --key the approval is signed
    locally by your personal key; with --signature a detached approval file is uploaded.
    The hub checks either against the keys registered to you (docs/governance.md)."""
    from datetime import timedelta

    from hub.errors import ValidationError
    from hub.services.approvals import (
        approval_request,
        approve_release,
        approve_with_signature,
    )
    from hub.services.releases import get_release
    from signing.approvals import MAX_APPROVAL_BYTES, sign_approval
    from signing.cli_common import Passphrases
    from signing.errors import SigningError
    from signing.keyfile import read_bounded

    if key_file is not None and signature_file is not None:
        raise click.UsageError("give --key or --signature, not both")
    if signature_file is not None and (comment or environment):
        raise click.UsageError("an uploaded approval names its own environments and comment")
    envelope: bytes | None = None
    signed_by = None
    with _services(ctx) as sc:
        if signature_file is not None:  # inside: a refusal is an error line, not a traceback
            try:
                envelope = read_bounded(signature_file, MAX_APPROVAL_BYTES)
            except (OSError, SigningError) as exc:
                raise ValidationError(f"--signature: {exc}") from exc
        rel = get_release(sc.session, product, version)
        if key_file is not None:
            try:
                key = Passphrases(passphrase_file, passphrase_env).load(str(key_file))
                signing_key = key.signing_key()
            except SigningError as exc:
                raise ValidationError(f"{key_file}: {exc}") from exc
            request = approval_request(sc, rel, environment=environment, comment=comment,
                                       valid_for=timedelta(seconds=valid_for))
            envelope = sign_approval(request.document, signing_key)
        if envelope is not None:
            rows = approve_with_signature(sc, rel, envelope)
            signed_by = rows[0].key_id
            scopes = [r.environment.name if r.environment else None for r in rows]
            comment = rows[0].comment
        else:
            approve_release(sc, rel, comment=comment, environment=environment)
            scopes = [environment]
        who, state = sc.actor_name, rel.state
    where = ", ".join(s or "all environments" for s in scopes)
    how = f" (signed by key {signed_by[:16]})" if signed_by else ""
    _done(as_json, f"release {product} {version} approved by {who} for {where}{how}",
          {"product": product, "version": version, "state": state, "approved_by": who,
           "environment": scopes[0] if len(scopes) == 1 else None,
           "environments": scopes, "signed_by": signed_by, "comment": comment})


@releases.command("reject")
@options.release_reject
@json_option
@click.pass_context
def releases_reject(
    ctx: click.Context, product: str, version: str, comment: str, environment: str | None,
    as_json: bool,
) -> None:
    """Reject a submitted release (final)."""
    from hub.services.approvals import reject_release
    from hub.services.releases import get_release

    with _services(ctx) as sc:
        rel = get_release(sc.session, product, version)
        reject_release(sc, rel, comment=comment, environment=environment)
        who, state = sc.actor_name, rel.state
    _done(as_json, f"release {product} {version} rejected",
          {"product": product, "version": version, "state": state, "rejected_by": who,
           "environment": environment, "comment": comment})


@releases.command("diff")
@click.argument("product")
@click.argument("from_version")
@click.argument("to_version")
@json_option
@click.pass_context
def releases_diff(
    ctx: click.Context, product: str, from_version: str, to_version: str, as_json: bool
) -> None:
    """Steps and files added, removed or changed between two versions."""
    from hub.services.releases import diff_releases, get_release
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        d = diff_releases(
            get_release(sc.session, product, from_version),
            get_release(sc.session, product, to_version),
        )
    if as_json:
        _emit(d.to_json(), True)
        return
    if d.empty:
        click.echo("no differences")
        return
    for what, data in d.to_json().items():
        for change, names in data.items():
            if change == "reordered":
                if names:
                    click.echo(f"{what}: reordered")
                continue
            for name in names:
                click.echo(f"{what} {change}: {name}")
