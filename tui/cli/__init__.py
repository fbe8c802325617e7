"""The ``regcache`` command: ``az acr cache`` / ``az acr credential-set`` for a local cache.

A module per command group; each command parses, makes one engine call and renders. Only the module
of the command that runs is imported: listing rules loads neither Textual nor uvicorn nor httpx.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from regcache.proxy.core.text import printable
from regcache.tui.cli.common import CONTEXT_SETTINGS

#: command name -> (module under regcache.tui.cli, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "cache": ("cache", "cache"),
    "client-config": ("client_config", "client_config"),
    "credential-set": ("credential_set", "credential_set"),
    "fleet": ("fleet", "fleet"),
    "gc": ("gc", "gc"),
    "rules": ("rules", "rules"),
    "secret": ("secret", "secret"),
    "serve": ("run", "serve"),
    "settings": ("settings", "settings"),
    "storage": ("storage", "storage"),
    "token": ("token", "token"),
    "tui": ("run", "tui_command"),
    "upstream": ("upstream", "upstream"),
    "warm": ("cache", "warm"),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they run (or when help lists them).

    Click's own errors quote what was typed (``No such option: ...``); their messages are escaped here,
    for every command below, so a control character on the command line never reaches the terminal raw.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            exc.message = printable(exc.message)  # type: ignore[misc]  # Final in click's stubs; click prints it
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = printable(exc.message)  # type: ignore[misc]  # Final in click's stubs; click prints it
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"regcache.tui.cli.{module}"), attribute)
        assert isinstance(command, click.Command), f"{module}.{attribute} is not a click command"
        return command


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS, invoke_without_command=True)
@click.option("--home", type=click.Path(file_okay=False), envvar="REGCACHE_HOME",
              help="State directory (default: $REGCACHE_HOME, else ~/.local/share/regcache).")
@click.option("--force", "force_tui", is_flag=True, envvar="REGCACHE_FORCE_TUI",
              help="Draw the TUI even when standard output is not a terminal.")
@click.version_option(package_name="regcache")
@click.pass_context
def main(ctx: click.Context, home: str | None, force_tui: bool) -> None:
    """regcache: a terminal-first pull-through cache for container registries.

    With no command, opens the TUI with the embedded proxy (on a terminal: elsewhere, use `regcache serve`).
    """
    ctx.ensure_object(dict)
    ctx.obj["home"] = home
    ctx.obj["force_tui"] = force_tui  # also for `regcache --force tui`
    if ctx.invoked_subcommand is None:
        from regcache.tui.cli.run import tui_command

        ctx.invoke(tui_command)
