"""`regcache rules export|apply`: one reviewed rules file for many caches."""

from __future__ import annotations

from typing import Any

import click

from regcache.proxy.config.control import ControlPlane
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    engine_command,
)


@click.group(context_settings=CONTEXT_SETTINGS)
def rules() -> None:
    """Share one reviewed rules file across caches: export, then apply (dry run by default)."""


@rules.command("export")
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False, writable=True),
              help="Write to FILE instead of standard output.")
@engine_command
def rules_export(control: ControlPlane, path: str | None) -> None:
    """Export upstreams, credential sets (secret ids only) and cache rules as YAML."""
    from regcache.proxy.config.declarative import export_document

    text = export_document(control)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"wrote {path}", err=True)
    else:
        click.echo(text, nl=False)


@rules.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.File("r", encoding="utf-8"),
              help="The rules file (YAML, as `rules export` writes it); - for standard input.")
@click.option("--yes", is_flag=True, help="Apply the changes (without it: show them, change nothing).")
@engine_command
def rules_apply(control: ControlPlane, path: Any, yes: bool) -> None:
    """Make this cache's configuration equal to FILE: every change in one transaction, or none."""
    from regcache.proxy.config.declarative import apply_document, plan_document

    text = path.read()
    changes = apply_document(control, text) if yes else plan_document(control, text)
    for change in changes:
        click.echo(str(change))
    if not changes:
        click.echo("no changes: the configuration already matches the file", err=True)
    elif not yes:
        click.echo(f"{len(changes)} change(s) planned; nothing was changed. Run again with --yes to apply.", err=True)
    else:
        click.echo(f"applied {len(changes)} change(s)", err=True)
