"""`regcache credential-set ...` (az acr credential-set)."""

from __future__ import annotations

from typing import Any

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.models import CredentialSet, HealthStatus
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    Failure,
    confirmed_delete,
    emit,
    engine_command,
    name_option,
    output_option,
    run_job,
    say,
)
from regcache.tui.output import (
    CREDENTIAL_SET_COLUMNS,
    credential_set_resource,
)

#: the columns of a table: the health (last upstream login) and, apart, whether this process can read the secrets
COLUMNS = (*CREDENTIAL_SET_COLUMNS[:-1], ("SECRETS READABLE HERE", "secretsReadable"), CREDENTIAL_SET_COLUMNS[-1])


def _resource(control: ControlPlane, cs: CredentialSet, warn: bool = False) -> dict[str, Any]:
    """The az-shaped record plus what THIS process can read (``secretsReadable``, ``secretAccess``).

    ``credentialHealth`` is the last real upstream login, the same from every shell; the secret access is this
    process's own view and is never stored.
    """
    resource = credential_set_resource(cs, control.rate_limit(cs.login_server, cs.name))
    accesses = control.secret_access(cs)
    resource["secretsReadable"] = "yes" if all(a.readable for a in accesses) else "no"
    resource["authCredentials"][0]["secretAccess"] = {
        role: {"readable": a.readable, "reason": a.reason, "errorCode": a.code}
        for role, a in zip(("username", "password"), accesses)}
    if warn:
        for role, a in zip(("username", "password"), accesses):
            if not a.readable:
                say(f"warning: this process cannot read the {role} of credential set {cs.name}: {a.reason}")
            elif a.warning:
                say(f"warning: {a.warning}")
    return resource


@click.group("credential-set", context_settings=CONTEXT_SETTINGS)
def credential_set() -> None:
    """Manage credential sets for upstream logins (az acr credential-set)."""


@credential_set.command("create")
@name_option
@click.option("-l", "--login-server", required=True, help="Login server of the source registry, e.g. docker.io.")
@click.option("-u", "--username-id", required=True,
              help="Secret id of the username: keyring://SERVICE/NAME, env://VAR or file:///PATH.")
@click.option("-p", "--password-id", required=True, help="Secret id of the password or token.")
@output_option
@engine_command
def credential_set_create(control: ControlPlane, name: str, login_server: str, username_id: str,
                          password_id: str, fmt: str) -> None:
    """Create a credential set (secret ids only; store values with `regcache secret set`).

    Its health stays Unknown until a login: an authenticated pull, or `credential-set show --check`.
    """
    cs = control.create_credential_set(name, login_server, username_id, password_id)
    emit(_resource(control, cs, warn=True), COLUMNS, fmt)


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
    emit(_resource(control, cs, warn=True), COLUMNS, fmt)


@credential_set.command("show")
@name_option
@click.option("--check", is_flag=True, help="Log in to the upstream now and record the answer as the health.")
@output_option
@engine_command
def credential_set_show(control: ControlPlane, name: str, check: bool, fmt: str) -> None:
    """Show a credential set: its health (the last real upstream login: time, outcome, message) and whether
    this process can read its secrets. Showing changes nothing; --check logs in to the upstream for real."""
    if not check:
        emit(_resource(control, control.get_credential_set(name)), COLUMNS, fmt)
        return
    control.get_credential_set(name)
    result = run_job(control, lambda ops: ops.check_credential_set(name))
    emit(_resource(control, result.credential_set), COLUMNS, fmt)
    if not result.verified:
        raise Failure(result.message)
    if result.credential_set.health.status is not HealthStatus.HEALTHY:
        raise Failure(result.message)  # the upstream refused the login: recorded, and the command fails
    say(f"checked: {result.message}")


@credential_set.command("list")
@output_option
@engine_command
def credential_set_list(control: ControlPlane, fmt: str) -> None:
    """List credential sets."""
    emit([_resource(control, cs) for cs in control.list_credential_sets()], COLUMNS, fmt)


@credential_set.command("delete")
@name_option
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@engine_command
def credential_set_delete(control: ControlPlane, name: str, yes: bool) -> None:
    """Delete a credential set (refused while a cache rule uses it; the secrets stay in the keyring)."""
    confirmed_delete("credential set", name, yes, control.get_credential_set, control.delete_credential_set)
