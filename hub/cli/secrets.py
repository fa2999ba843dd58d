"""``tiangong hub secrets set | list | delete``: site secrets per environment (admins write;
values are never shown again; ``hub.services.site_secrets``)."""

from __future__ import annotations

import click

from hub.cli.base import _done, _emit, _services, hub, json_option
from tiangong import secret_input


@hub.group("secrets")
def secrets() -> None:
    """Site secrets: stored encrypted per environment, sealed to each target agent at export
    for the steps that list them. Values are read from standard input, a file or an
    environment variable, never from the command line, and never printed."""


@secrets.command("set")
@click.argument("environment")
@click.argument("name")
@secret_input.value_options
@json_option
@click.pass_context
def set_(ctx: click.Context, environment: str, name: str, from_env: str | None,
         from_file: str | None, as_json: bool) -> None:
    """Store (or replace) secret NAME of ENVIRONMENT (admins). Without --from-env or
    --from-file the value is read from standard input. Rotation: set a new value, then ship
    a release whose steps list the secret."""
    from hub.services.site_secrets import set_secret

    value = secret_input.read_value(from_env, from_file)
    with _services(ctx) as sc:
        info = set_secret(sc, environment, name, value)
    _done(as_json, secret_input.stored(name, environment), info.to_json())


@secrets.command("list")
@click.argument("environment")
@json_option
@click.pass_context
def list_(ctx: click.Context, environment: str, as_json: bool) -> None:
    """Names of ENVIRONMENT's secrets, who set them and when (never the values)."""
    from hub.services.site_secrets import list_secrets

    with _services(ctx) as sc:
        rows = [i.to_json() for i in list_secrets(sc, environment)]
    _emit(rows, as_json, None if as_json else ["name", "set_by", "set_at"])


@secrets.command("delete")
@click.argument("environment")
@click.argument("name")
@json_option
@click.pass_context
def delete(ctx: click.Context, environment: str, name: str, as_json: bool) -> None:
    """Forget secret NAME of ENVIRONMENT (admins; audited). Bundles already exported keep
    their sealed copy."""
    from hub.services.site_secrets import delete_secret

    with _services(ctx) as sc:
        info = delete_secret(sc, environment, name)
    _done(as_json, secret_input.deleted(name, environment), info.to_json())
