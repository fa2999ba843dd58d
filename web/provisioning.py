"""Users who log in through SAML: identity from attributes, first-login creation, role sync.

:func:`identity_from_attributes` turns a validated assertion's attributes into a
:class:`SamlIdentity`; :func:`sync_saml_user` creates the hub user on first login, keeps
e-mail and display name current, and makes the user's *global* grants marked
``granted_by = "saml"`` equal to the roles its groups map to. Grants given by hand
(``hub users grant``, another ``granted_by``) are never touched. Each change writes an audit
event with the actor ``saml``, in the caller's transaction.

This is a service that belongs in ``hub/services/users.py`` (``create_user`` needs an actor
holding ``user.manage``, which a first login has not); it lives in ``web/`` until it moves.
It does not validate SAML (python3-saml does) and does not commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import RoleGrant, User
from hub.errors import ConflictError, PermissionDeniedError, ValidationError
from hub.services import audit
from hub.services.context import Clock
from hub.services.users import new_user
from web.config import AttributeNames

__all__ = [
    "SAML_ACTOR",
    "SamlIdentity",
    "identity_from_attributes",
    "roles_for_groups",
    "sync_saml_user",
]

SAML_ACTOR = "saml"  # audit actor and RoleGrant.granted_by of grants synced from groups
MAX_GROUPS = 1000  # group values accepted from one assertion


@dataclass(frozen=True)
class SamlIdentity:
    username: str
    email: str
    display_name: str
    groups: tuple[str, ...]


def _single(attributes: Mapping[str, list[str]], name: str) -> str:
    values = attributes.get(name) or []
    return values[0].strip() if values else ""


def identity_from_attributes(
    attributes: Mapping[str, list[str]], nameid: str | None, names: AttributeNames
) -> SamlIdentity:
    """Map assertion attributes to an identity (the user name falls back to the NameID).

    Raises:
        ValidationError: no user name, or too many groups.
    """
    username = (_single(attributes, names.username) or (nameid or "").strip()).lower()
    if not username:
        raise ValidationError(
            f"the SAML assertion has no {names.username!r} attribute and no NameID"
        )
    groups = attributes.get(names.groups) or []
    if len(groups) > MAX_GROUPS:
        raise ValidationError(f"the SAML assertion lists {len(groups)} groups, over {MAX_GROUPS}")
    return SamlIdentity(
        username=username,
        email=_single(attributes, names.email),
        display_name=_single(attributes, names.display_name),
        groups=tuple(sorted({g.strip() for g in groups if g.strip()})),
    )


def roles_for_groups(
    groups: Iterable[str], group_roles: Mapping[str, tuple[str, ...]]
) -> frozenset[str]:
    """The hub roles the groups map to (groups not in the mapping give nothing)."""
    return frozenset(role for g in groups for role in group_roles.get(g, ()))


def sync_saml_user(
    session: Session,
    clock: Clock,
    identity: SamlIdentity,
    group_roles: Mapping[str, tuple[str, ...]],
) -> User:
    """Create or update the user for a SAML login and sync its SAML grants.

    Raises:
        ValidationError: the user name does not fit the hub's rules.
        ConflictError: a *local* user of that name exists (never merged with a SAML login).
        PermissionDeniedError: the user is deactivated.
    """
    now = clock()
    user: User | None = session.scalar(select(User).where(User.username == identity.username))
    if user is None:
        user = new_user(
            session, clock, identity.username, identity.display_name, identity.email, "saml"
        )
        audit.append_event(
            session, now, SAML_ACTOR, "user.create", "user", user.username,
            {"source": "saml", "email": identity.email},
        )  # fmt: skip
    elif user.source != "saml":
        raise ConflictError(
            f"user {identity.username!r} is a local user; a SAML login may not take it over"
        )
    elif not user.is_active:
        raise PermissionDeniedError(f"user {identity.username!r} is deactivated")
    else:
        changed = {}
        if identity.email and identity.email != user.email:
            changed["email"] = identity.email
            user.email = identity.email
        if identity.display_name and identity.display_name != user.display_name:
            changed["display_name"] = identity.display_name
            user.display_name = identity.display_name
        if changed:
            audit.append_event(
                session, now, SAML_ACTOR, "user.update", "user", user.username, changed
            )
    wanted = roles_for_groups(identity.groups, group_roles)
    saml_grants = [
        g for g in user.grants if g.environment_id is None and g.granted_by == SAML_ACTOR
    ]
    held = {g.role for g in user.grants if g.environment_id is None}
    for grant in saml_grants:
        if grant.role not in wanted:
            user.grants.remove(grant)
            session.delete(grant)
            audit.append_event(
                session, now, SAML_ACTOR, "user.revoke", "user", user.username,
                {"role": grant.role, "environment": None, "source": "saml"},
            )  # fmt: skip
    for role in sorted(wanted - held):
        session.add(RoleGrant(user=user, role=role, granted_at=now, granted_by=SAML_ACTOR))
        audit.append_event(
            session, now, SAML_ACTOR, "user.grant", "user", user.username,
            {"role": role, "environment": None, "source": "saml", "groups": list(identity.groups)},
        )  # fmt: skip
    session.flush()
    return user
