"""The CLI in-process (click's runner), for fast tests of its commands."""

from __future__ import annotations

from click.testing import CliRunner, Result

from regcache.tui.cli import main


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def ok(*args: str, input: str | None = None) -> Result:
    result = cli(*args, input=input)
    assert result.exit_code == 0, result.stderr
    return result
