"""``tiangong hub users``: users and role grants (the rules are in ``hub.services.users``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hub.cli.base import _done, _emit, _services, hub, json_option


def _user_row(user: Any) -> dict[str, Any]:
    from hub.services.users import roles_of

    return {
        "username": user.username,
        "display_name": user.display_name,
        "email": user.email,
        "source": user.source,
        "active": user.is_active,
        "roles": [f"{r}@{e}" if e else r for r, e in roles_of(user)],
    }


@hub.group()
def users() -> None:
    """Users and role grants."""


@users.command("create")
@click.argument("username")
@click.option("--display-name", default="")
@click.option("--email", default="")
@click.option("--source", type=click.Choice(["local", "saml"]), default="local")
@json_option
@click.pass_context
def users_create(
    ctx: click.Context, username: str, display_name: str, email: str, source: str, as_json: bool
) -> None:
    """Create a user (no roles yet)."""
    from hub.services.users import create_user

    with _services(ctx) as sc:
        user = create_user(sc, username, display_name=display_name, email=email, source=source)
        row = _user_row(user)
    _emit(row, as_json)


@users.command("add")
@click.argument("username")
@click.option("--role", "roles", multiple=True, metavar="ROLE",
              help="Grant this role (repeatable): viewer, developer, operator, approver, "
                   "auditor, admin.")
@click.option("--environment", default=None,
              help="Grant the roles in this environment only (default: in all).")
@click.option("--display-name", default="")
@click.option("--email", default="")
@click.option("--source", type=click.Choice(["local", "saml"]), default="local")
@json_option
@click.pass_context
def users_add(ctx: click.Context, username: str, roles: tuple[str, ...],
              environment: str | None, display_name: str, email: str, source: str,
              as_json: bool) -> None:
    """Create a user and grant it its roles, in one step (all or nothing): `users create`
    followed by `users grant` for each --role."""
    from hub.services.users import create_user, grant_role

    with _services(ctx) as sc:
        user = create_user(sc, username, display_name=display_name, email=email, source=source)
        for role in roles:
            grant_role(sc, username, role, environment)
        sc.session.refresh(user)
        row = _user_row(user)
    _emit(row, as_json)


@users.command("list")
@json_option
@click.pass_context
def users_list(ctx: click.Context, as_json: bool) -> None:
    """List users and their roles."""
    from hub.services.users import list_users, require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = [_user_row(u) for u in list_users(sc.session)]
    _emit(rows, as_json)


@users.command("grant")
@click.argument("username")
@click.argument("role")
@click.option("--environment", default=None, help="Only in this environment (default: all).")
@json_option
@click.pass_context
def users_grant(
    ctx: click.Context, username: str, role: str, environment: str | None, as_json: bool
) -> None:
    """Grant ROLE to USERNAME."""
    from hub.services.users import grant_role

    with _services(ctx) as sc:
        grant_role(sc, username, role, environment)
    scope = f"in {environment}" if environment else "globally"
    _done(as_json, f"granted {role} to {username} {scope}",
          {"username": username, "role": role, "environment": environment, "granted": True})


@users.command("revoke")
@click.argument("username")
@click.argument("role")
@click.option("--environment", default=None)
@json_option
@click.pass_context
def users_revoke(
    ctx: click.Context, username: str, role: str, environment: str | None, as_json: bool
) -> None:
    """Remove ROLE from USERNAME."""
    from hub.services.users import revoke_role

    with _services(ctx) as sc:
        revoke_role(sc, username, role, environment)
    _done(as_json, f"revoked {role} from {username}",
          {"username": username, "role": role, "environment": environment, "granted": False})


@users.command("deactivate")
@click.argument("username")
@json_option
@click.pass_context
def users_deactivate(ctx: click.Context, username: str, as_json: bool) -> None:
    """Deactivate a user (it keeps its history; it may do nothing)."""
    from hub.services.users import set_active

    with _services(ctx) as sc:
        set_active(sc, username, False)
    _done(as_json, f"user {username} deactivated", {"username": username, "active": False})


@users.command("activate")
@click.argument("username")
@json_option
@click.pass_context
def users_activate(ctx: click.Context, username: str, as_json: bool) -> None:
    """Reactivate a user."""
    from hub.services.users import set_active

    with _services(ctx) as sc:
        set_active(sc, username, True)
    _done(as_json, f"user {username} activated", {"username": username, "active": True})


@users.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (scripts).")
@json_option
@click.pass_context
def users_set_password(ctx: click.Context, username: str, password_stdin: bool,
                       as_json: bool) -> None:
    """Set USERNAME's password for the web UI's local sign-in ([web] local_login = true in
    hub.toml; docs/web-login.md). Asks twice on a terminal. The user's web sessions end."""
    import sys

    from hub.services.users import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(f"Password for {username}", hide_input=True,
                                confirmation_prompt=True)
    with _services(ctx) as sc:
        set_password(sc, username, password)
    _done(as_json, f"password of {username} set (its web sessions ended)",
          {"username": username, "password_set": True})


@users.group("groups")
def users_groups() -> None:
    """A user's approver groups (approval rules count them)."""


@users_groups.command("add")
@click.argument("username")
@click.argument("group")
@json_option
@click.pass_context
def users_groups_add(ctx: click.Context, username: str, group: str, as_json: bool) -> None:
    """Put USERNAME into GROUP (admin)."""
    from hub.services.approvers import add_group

    with _services(ctx) as sc:
        add_group(sc, username, group)
    _done(as_json, f"{username} is now in group {group}",
          {"username": username, "group": group, "member": True})


@users_groups.command("remove")
@click.argument("username")
@click.argument("group")
@json_option
@click.pass_context
def users_groups_remove(ctx: click.Context, username: str, group: str, as_json: bool) -> None:
    """Take USERNAME out of GROUP (admin)."""
    from hub.services.approvers import remove_group

    with _services(ctx) as sc:
        remove_group(sc, username, group)
    _done(as_json, f"{username} is no longer in group {group}",
          {"username": username, "group": group, "member": False})


@users_groups.command("list")
@click.argument("username", required=False)
@json_option
@click.pass_context
def users_groups_list(ctx: click.Context, username: str | None, as_json: bool) -> None:
    """The groups of USERNAME, or of every user."""
    from hub.services.users import get_user, list_users, require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        people = [get_user(sc.session, username)] if username else list_users(sc.session)
        rows = [{"username": u.username, "groups": u.group_names} for u in people]
    _emit(rows, as_json)


def _key_row(key: Any) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "username": key.user.username,
        "label": key.label,
        "added_at": key.added_at,
        "added_by": key.added_by,
        "revoked_at": key.revoked_at,
        "revoked_by": key.revoked_by,
        "revoke_reason": key.revoke_reason or None,
    }


@users.command("add-key")
@click.argument("username")
@click.argument("public_key_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--label", default="", help="A name for the key (default: the file's label).")
@json_option
@click.pass_context
def users_add_key(ctx: click.Context, username: str, public_key_file: Path, label: str,
                  as_json: bool) -> None:
    """Register the approver public key in PUBLIC_KEY_FILE (from `tiangong keys generate
    --role approver`) to USERNAME: an admin for anyone, a user for themselves. The key id
    is computed from the key; a key belongs to one user."""
    from hub.errors import ValidationError
    from hub.services.approvers import register_key
    from signing.errors import SigningError
    from signing.keyfile import MAX_KEY_FILE_BYTES, read_bounded

    try:
        data = read_bounded(public_key_file, MAX_KEY_FILE_BYTES)
    except (OSError, SigningError) as exc:
        raise ValidationError(f"{public_key_file}: {exc}") from exc
    with _services(ctx) as sc:
        key = register_key(sc, username, data, source=str(public_key_file), label=label)
        row = _key_row(key)
    _done(as_json, f"approver key {row['key_id']} registered to {username}", row)


@users.command("keys")
@click.argument("username")
@json_option
@click.pass_context
def users_keys(ctx: click.Context, username: str, as_json: bool) -> None:
    """The approver keys of USERNAME (revoked ones too)."""
    from hub.services.approvers import keys_of

    with _services(ctx) as sc:
        rows = [_key_row(k) for k in keys_of(sc, username)]
    _emit(rows, as_json)


@users.command("revoke-key")
@click.argument("key_id")
@click.option("--reason", required=True, help="Why (required, audited).")
@json_option
@click.pass_context
def users_revoke_key(ctx: click.Context, key_id: str, reason: str, as_json: bool) -> None:
    """Revoke an approver key (KEY_ID, or at least 8 hex characters of it): its owner or an
    admin. Approvals it signed no longer count at the hub."""
    from hub.services.approvers import revoke_key

    with _services(ctx) as sc:
        key = revoke_key(sc, key_id, reason=reason)
        row = _key_row(key)
    _done(as_json, f"approver key {row['key_id']} of {row['username']} revoked", row)
