"""The CLI in-process (click's runner), for fast tests of its commands; every command enumerated, with a
command line of valid base values for its required inputs (the sweep gives one input a hostile value)."""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner, Result

from regcache.tui.cli import main


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def ok(*args: str, input: str | None = None) -> Result:
    result = cli(*args, input=input)
    assert result.exit_code == 0, result.stderr
    return result


#: a valid value for each required input, by (command, parameter) or by parameter; the state below has them
BASE: dict[str, str] = {
    "cache:name": "ubuntu-rule", "credential-set:name": "hub-creds", "token:name": "ci-token",
    "source": "ghcr.io/acme/other", "target": "other", "login_server": "registry.example",
    "credential-set create:login_server": "ghcr.io", "credential-set create:name": "new-creds",
    "cache create:name": "new-rule", "token create:name": "new-token", "url": "http://127.0.0.1:9",
    "username_id": "env://SWEEP_USER", "password_id": "env://SWEEP_PASSWORD", "repositories": "app",
    "image": "app:latest", "secret_id": "keyring://regcache/sweep", "key": "max-size", "value": "1GiB",
    "client": "podman", "endpoint": "http://127.0.0.1:9", "bucket": "bucket", "access_key_id": "env://SWEEP_USER",
    "secret_access_key": "env://SWEEP_PASSWORD", "stream": "rules.yaml", "cache purge:repository": "app",
}

#: flags given on every invocation of a command: without the bucket check, a hostile value that got through
#: would be saved and exit 0 (a failure here) instead of waiting on a closed port
FLAGS = {"storage set s3": ["--no-check"]}


def leaf_commands() -> Iterator[tuple[str, click.Command]]:
    def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, (*path, name))
        else:
            yield " ".join(path), command

    yield from walk(main, ())


COMMANDS = dict(leaf_commands())


def base_value(path: str, param: click.Parameter) -> str | None:
    for key in (f"{path}:{param.name}", f"{path.split()[0]}:{param.name}", str(param.name)):
        if key in BASE:
            return BASE[key]
    assert not param.required, f"`{path}` needs {param.name}: give tests/helpers/cli.py a valid BASE value"
    return None


def invocation(path: str, command: click.Command, hostile: click.Parameter | None, value: str) -> list[str]:
    """The command line of ``path`` with ``value`` for ``hostile`` and base values for the other required inputs."""
    options: list[str] = []
    arguments: list[str] = []
    for param in command.params:
        if isinstance(param, click.Option) and (param.is_flag or param.name == "help"):
            continue
        given = value if param is hostile else base_value(path, param)
        if given is None:
            continue
        if isinstance(param, click.Argument):
            arguments.append(given)
        else:
            options += [max(param.opts, key=len), given]
    return [*path.split(), *FLAGS.get(path, []), *options, *arguments]


def inputs(command: click.Command) -> list[click.Parameter]:
    return [p for p in command.params
            if not (isinstance(p, click.Option) and (p.is_flag or p.name == "help"))]
