"""`regcache secret set|list|delete`: the values behind the secret ids credential sets and storage name."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.secret_ids import SecretId
from regcache.tui.cli import common
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    confirm,
    emit,
    engine_command,
    output_option,
    say,
)
from regcache.tui.output import Column

SECRET_COLUMNS: Sequence[Column] = (
    ("SECRET ID", "secretId"), ("READABLE HERE", "readable"), ("USED BY", "usedBy"), ("REASON", "reason"),
)


@click.group(context_settings=CONTEXT_SETTINGS)
def secret() -> None:
    """Secret values: store them in the OS keyring, see which the configuration uses, delete them."""


def _read_secret_value() -> str:
    if common.interactive():
        return click.prompt("Secret value", hide_input=True, confirmation_prompt=True, err=True)
    value = sys.stdin.read()
    # Only the line break that `echo` or a here-string adds is dropped.
    return value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value


@secret.command("set")
@click.argument("secret_id")
@engine_command
def secret_set(control: ControlPlane, secret_id: str) -> None:
    """Store a value for SECRET_ID (keyring://SERVICE/NAME), prompted without echo or read from stdin.

    env://VAR and file:///PATH are read-only sources: set the variable, or write the file, yourself.
    """
    secret_id = control.secrets.check_writable(secret_id)  # before asking for a value it could not store
    control.set_secret(secret_id, _read_secret_value())
    say(f"stored {secret_id}")


@secret.command("list")
@output_option
@engine_command
def secret_list(control: ControlPlane, fmt: str) -> None:
    """The secret ids the configuration references, what uses each, and whether THIS process can read it.

    Never shows a value and never asks for a keyring password: a locked keyring shows as not readable.
    """
    emit([{"secretId": access.secret_id, "readable": "yes" if access.readable else "no", "reason": access.reason,
           "errorCode": access.code, "warning": access.warning, "usedBy": users}
          for access, users in control.list_secrets()], SECRET_COLUMNS, fmt)


@secret.command("delete")
@click.argument("secret_id")
@click.option("--force", is_flag=True, help="Delete it even while credential sets or storage use it.")
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@engine_command
def secret_delete(control: ControlPlane, secret_id: str, force: bool, yes: bool) -> None:
    """Delete the keyring:// secret SECRET_ID (refused while the configuration uses it, unless --force).

    env://VAR and file:///PATH values are not regcache's: it only reads them.
    """
    secret = SecretId.parse(secret_id, field="secret_id")
    secret_id = str(secret)
    if not secret.ours:
        control.delete_secret(secret_id)  # refused: says where that value lives
    users = control.secret_references().get(secret_id, [])
    if users and force:
        say(f"warning: {secret_id} is used by {', '.join(users)}")
    if not users or force:
        confirm(f"delete {secret_id} from the keyring", yes)
    deleted = control.delete_secret(secret_id, force)
    say(f"deleted {deleted}")
