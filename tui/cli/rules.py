"""`regcache rules export|apply`: one reviewed rules file for many caches."""

from __future__ import annotations

from typing import BinaryIO

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.units import format_count
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    Failure,
    engine_command,
    say,
    say_document,
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
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise Failure(f"cannot write {path}: {exc.strerror or exc}") from None
        say(f"wrote {path}")
    else:
        say_document(text)


@rules.command("apply")
@click.option("-f", "--file", "stream", required=True, type=click.File("rb"),
              help="The rules file (YAML, as `rules export` writes it; at most rules-file-max-size, 1 MiB by "
                   "default); - for standard input.")
@click.option("--yes", is_flag=True, help="Apply the changes (without it: show them, change nothing).")
@engine_command
def rules_apply(control: ControlPlane, stream: BinaryIO, yes: bool) -> None:
    """Make this cache's configuration equal to FILE: every change in one transaction, or none.

    The plan lists every change, credential sets' secret ids included (ids, never values).
    """
    from regcache.proxy.config.declarative import apply_document, plan_document, read_rules_file

    try:
        text = read_rules_file(control, stream)
    except OSError as exc:
        raise Failure(f"cannot read the rules file: {exc.strerror or exc}") from None
    changes = apply_document(control, text) if yes else plan_document(control, text)
    for change in changes:
        say(str(change), err=False)
    if not changes:
        say("no changes: the configuration already matches the file")
    elif not yes:
        say(f"{format_count(len(changes), 'change')} planned; nothing was changed. Run again with --yes to apply.")
    else:
        say(f"applied {format_count(len(changes), 'change')}")
