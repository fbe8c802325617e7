"""`regcache credential-set ...` (az acr credential-set)."""

from __future__ import annotations

import click

from regcache.proxy.config.control import ControlPlane
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    confirmed_delete,
    emit,
    engine_command,
    name_option,
    output_option,
)
from regcache.tui.output import (
    CREDENTIAL_SET_COLUMNS,
    credential_set_resource,
)


@click.group("credential-set", context_settings=CONTEXT_SETTINGS)
def credential_set() -> None:
    """Manage credential sets for upstream logins (az acr credential-set)."""


@credential_set.command("create")
@name_option
@click.option("-l", "--login-server", required=True, help="Login server of the source registry, e.g. docker.io.")
@click.option("-u", "--username-id", required=True, help="Secret id of the username: keyring://SERVICE/NAME or env://VAR.")
@click.option("-p", "--password-id", required=True, help="Secret id of the password or token.")
@output_option
@engine_command
def credential_set_create(control: ControlPlane, name: str, login_server: str, username_id: str,
                          password_id: str, fmt: str) -> None:
    """Create a credential set (secret ids only; store values with `regcache secret set`)."""
    cs = control.create_credential_set(name, login_server, username_id, password_id)
    emit(credential_set_resource(cs), CREDENTIAL_SET_COLUMNS, fmt)


@credential_set.command("update")
@name_option
@click.option("-u", "--username-id", help="New secret id of the username.")
@click.option("-p", "--password-id", help="New secret id of the password or token.")
@output_option
@engine_command
def credential_set_update(control: ControlPlane, name: str, username_id: str | None, password_id: str | None,
                          fmt: str) -> None:
    """Change the secret ids of a credential set."""
    cs = control.update_credential_set(name, username_id, password_id)
    emit(credential_set_resource(cs), CREDENTIAL_SET_COLUMNS, fmt)


@credential_set.command("show")
@name_option
@output_option
@engine_command
def credential_set_show(control: ControlPlane, name: str, fmt: str) -> None:
    """Show a credential set and its health (re-checks that its secrets can be read)."""
    cs = control.refresh_credential_set(name)
    emit(credential_set_resource(cs, control.rate_limit(cs.login_server, cs.name)), CREDENTIAL_SET_COLUMNS, fmt)


@credential_set.command("list")
@output_option
@engine_command
def credential_set_list(control: ControlPlane, fmt: str) -> None:
    """List credential sets."""
    emit([credential_set_resource(cs, control.rate_limit(cs.login_server, cs.name))
           for cs in control.list_credential_sets()], CREDENTIAL_SET_COLUMNS, fmt)


@credential_set.command("delete")
@name_option
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@engine_command
def credential_set_delete(control: ControlPlane, name: str, yes: bool) -> None:
    """Delete a credential set (refused while a cache rule uses it; the secrets stay in the keyring)."""
    confirmed_delete("credential set", name, yes, control.get_credential_set, control.delete_credential_set)
