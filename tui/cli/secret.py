"""`regcache secret set`: secret values for the secret ids credential sets name."""

from __future__ import annotations

import sys

import click

from regcache.proxy.config.control import ControlPlane
from regcache.tui.cli import common
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    engine_command,
    say,
)


@click.group(context_settings=CONTEXT_SETTINGS)
def secret() -> None:
    """Store secret values in the OS keyring."""


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
    """Store a value for SECRET_ID (keyring://SERVICE/NAME), prompted without echo or read from stdin."""
    control.set_secret(secret_id, _read_secret_value())
    say(f"stored {secret_id}")
