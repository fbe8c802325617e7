"""`regcache token ...`: client tokens (az acr token)."""

from __future__ import annotations

import sys

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.rules import check_name
from regcache.tui.cli import common
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    Failure,
    confirmed_delete,
    emit,
    engine_command,
    name_option,
    output_option,
    say,
)
from regcache.tui.output import (
    TOKEN_COLUMNS,
    token_resource,
)


@click.group(context_settings=CONTEXT_SETTINGS)
def token() -> None:
    """Manage client tokens: repository-scoped logins for pulling through regcache (az acr token).

    Once a token exists, every client must log in with one (HTTP Basic: NAME and PASSWORD).
    """


def _read_token_password(name: str) -> str:
    """The password of a new token: prompted twice without echo on a terminal, else all of stdin."""
    if common.interactive():
        return click.prompt(f"Password for token {name}", hide_input=True, confirmation_prompt=True, err=True)
    try:
        value = sys.stdin.read()
    except UnicodeDecodeError:
        raise Failure("the password on stdin is not valid UTF-8") from None
    # Only the line break that `echo`, `pass show` or a here-string adds is dropped.
    return value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value


@token.command("create")
@name_option
@click.option("--repository", "repositories", multiple=True, required=True, metavar="PATTERN",
              help="A repository the token may pull: ubuntu, team/* (everything under team/) or *. Repeatable.")
@click.option("--expiry", metavar="DATE|DURATION",
              help="When the token stops working: an ISO date or datetime in UTC (2026-12-31, 2026-12-31T18:00Z) "
                   "or a duration from now (30d). Default: never.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from stdin (prompted without echo on a terminal) instead of generating one: "
                   "the same token on every node behind a load balancer. At least 16 characters.")
@output_option
@engine_command
def token_create(control: ControlPlane, name: str, repositories: tuple[str, ...], expiry: str | None,
                 password_stdin: bool, fmt: str) -> None:
    """Create a client token and print its generated password, once (only a salted hash is stored).

    With --password-stdin the password is read from stdin and never printed.
    """
    check_name(name, "token")  # before a password is asked for
    given = _read_token_password(name) if password_stdin else None
    created, password = control.create_token(name, repositories, expiry, password=given)
    record = token_resource(created)
    # the document as `az acr token create` shows it; a table or TSV shows the password in a column
    entry = {"name": "password1", "value": password, "creationTime": record["creationDate"],
             "expiry": record["expiry"]}
    if given is not None:
        del entry["value"]  # the operator has it already; it is not echoed
    document = {**record, "credentials": {"username": created.name, "passwords": [entry]}}
    columns = (("NAME", "name"), ("REPOSITORIES", "repositories"), ("EXPIRY", "expiry"))
    if given is None:
        emit(document, (*columns, ("PASSWORD", "password")), fmt, rows={**record, "password": password})
    else:
        emit(document, columns, fmt, rows=record)
    login = (f"Clients log in as {created.name}, e.g. `skopeo copy --src-creds {created.name}:PASSWORD ...` or "
             f"`docker login HOST:PORT -u {created.name}`.")
    if given is not None:
        source = "the prompt" if common.interactive() else "stdin"
        say(f"token {created.name} created with the password from {source}. {login}")
    else:
        say(f"Save the password now: it will not be shown again (regcache keeps only a salted hash). {login}")


@token.command("list")
@output_option
@engine_command
def token_list(control: ControlPlane, fmt: str) -> None:
    """List client tokens: repositories, expiry, creation and last use (never a password)."""
    emit([token_resource(t) for t in control.list_tokens()], TOKEN_COLUMNS, fmt)


@token.command("delete")
@name_option
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@engine_command
def token_delete(control: ControlPlane, name: str, yes: bool) -> None:
    """Delete a client token; clients using it are refused from their next request."""
    confirmed_delete("token", name, yes, control.get_token, control.delete_token)
    if not control.list_tokens():
        say("no client tokens remain: a proxy on a loopback address (or started with --allow-anonymous) "
            "serves anonymous pulls again")
