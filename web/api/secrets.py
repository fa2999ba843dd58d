"""The API's site-secret operations (docs/operations.md, "Site secrets"): store a value
(write-only: the answer never holds it) and list the names. Every rule is
:mod:`hub.services.site_secrets`'s; an environment the caller may not view is a 404."""

from __future__ import annotations

from typing import Any

from hub.services import site_secrets as service
from web.api import Param, api_ctx, operation
from web.api.routes import _body, _visible_env

__all__: list[str] = []

_ENV = Param("environment", "path", "Environment name, e.g. `plant-a`.")


@operation("/environments/<environment>/secrets", "POST", scope="admin",
           summary="Store (or replace) a site secret; the value is never returned",
           responses={201: "SecretInfo"}, params=(_ENV,), body="SecretRequest",
           errors=(400, 404))
def secrets_set(environment: str) -> Any:
    """``{"name": "billing-db-password", "value": "…"}``; admins only. Sealed to each target
    agent at export for the steps that list the name in ``secrets``."""
    doc = _body({"name": str, "value": str})
    env = _visible_env(environment)
    assert env is not None
    info = service.set_secret(api_ctx(), env, str(doc.get("name", "")),
                              str(doc.get("value", "")))
    return info.to_json(), 201


@operation("/environments/<environment>/secrets", "GET", scope="read",
           summary="The names of an environment's site secrets (never the values)",
           responses={200: "SecretList"}, params=(_ENV,), errors=(404,))
def secrets_list(environment: str) -> Any:
    env = _visible_env(environment)
    assert env is not None
    return {"secrets": [i.to_json() for i in service.list_secrets(api_ctx(), env)]}


@operation("/environments/<environment>/secrets/<name>", "DELETE", scope="admin",
           summary="Forget a site secret", responses={200: "SecretInfo"},
           params=(_ENV, Param("name", "path", "The secret's name.")), errors=(400, 404))
def secrets_delete(environment: str, name: str) -> Any:
    """Admins only; audited. Bundles already exported keep their sealed copy."""
    env = _visible_env(environment)
    assert env is not None
    return service.delete_secret(api_ctx(), env, name).to_json()
