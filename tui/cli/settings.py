"""`regcache settings ...`: settings of the whole cache."""

from __future__ import annotations

import click

from regcache.proxy.config.control import ControlPlane
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    emit,
    engine_command,
    output_option,
    say,
)


@click.group(context_settings=CONTEXT_SETTINGS)
def settings() -> None:
    """Settings of the whole cache (max-size)."""


@settings.command("show")
@output_option
@engine_command
def settings_show(control: ControlPlane, fmt: str) -> None:
    """Show every setting."""
    from regcache.proxy.config.control import SETTINGS

    rows = [{"key": key, "value": value, "description": SETTINGS[key][2]} for key, value in control.settings().items()]
    emit({r["key"]: r["value"] or None for r in rows}, (("KEY", "key"), ("VALUE", "value"),
                                                        ("DESCRIPTION", "description")), fmt, rows=rows)


@settings.command("set")
@click.argument("key")
@click.argument("value")
@engine_command
def settings_set(control: ControlPlane, key: str, value: str) -> None:
    """Set KEY to VALUE, e.g. `regcache settings set max-size 50GiB`."""
    say(f"{key} = {control.set_setting(key, value)}")


@settings.command("unset")
@click.argument("key")
@engine_command
def settings_unset(control: ControlPlane, key: str) -> None:
    """Remove a setting (max-size: no limit)."""
    control.unset_setting(key)
    say(f"{key} unset")
