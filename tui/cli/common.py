"""What every command shares: options, the control plane, one-line failures, output, prompts.

Everything a command prints goes through :func:`say`, :func:`emit` or :func:`say_document`, which
print data as text: a control character or bidi override in a name, a URL or an upstream's error
shows escaped (``\x1b``), never acts on the terminal. Nothing here parses markup.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.errors import RegcacheError, unwrap_error
from regcache.proxy.core.text import printable
from regcache.proxy.secrets import SecretResolver
from regcache.tui.output import (
    FORMATS,
    Column,
    render,
)

if TYPE_CHECKING:
    from regcache.proxy.jobs.operations import Operations

T = TypeVar("T")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

output_option = click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table",
                             show_default=True, help="Output format.")
name_option = click.option("-n", "--name", required=True, help="Name (5-50 letters, digits, hyphens).")


class Failure(click.ClickException):
    """A refused command: one line on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        say(f"error: {self.format_message()}")


def say(message: str, err: bool = True) -> None:
    """One line for people (stderr unless ``err`` is False), its data escaped."""
    click.echo(printable(message), err=err)


def say_document(text: str) -> None:
    """A generated file on stdout (YAML, TOML, JSON), as is but for control characters, escaped."""
    click.echo(printable(text, keep_newlines=True), nl=False)


def control_of(ctx: click.Context) -> ControlPlane:
    obj = ctx.find_root().obj
    if obj.get("control") is None:
        # on a terminal a command may ask once, without echo, for a keyring's password; elsewhere it never asks
        obj["control"] = ControlPlane.open(obj.get("home"), SecretResolver(interactive=interactive()))
        ctx.call_on_close(obj["control"].close)
    return obj["control"]


def engine_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give the command the control plane and turn engine errors into one-line failures."""

    @click.pass_context
    @wraps(fn)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(control_of(ctx), *args, **kwargs)
        except (RegcacheError, BaseExceptionGroup) as exc:
            # PullError (a RegcacheError): what the proxy would have answered a client (warm, cache test);
            # groups: errors raised inside the task group of an async command
            inner = unwrap_error(exc)
            if isinstance(inner, RegcacheError):
                raise Failure(str(inner)) from None
            raise

    return wrapper


def run_job(control: ControlPlane, job: Callable[[Operations], Awaitable[T]]) -> T:
    """Run ``job`` (warm, rule test, tag sync, gc) on an engine of this command's own, to completion."""
    from regcache.proxy.jobs.operations import Operations

    return Operations.run_alone(control.store.home, control.secrets, job)


def emit(data: Any, columns: Sequence[Column], fmt: str) -> None:
    text = render(data, columns, fmt)
    if text:
        click.echo(text)


def confirmed_delete(what: str, name: str, yes: bool, get: Callable[[str], Any],
                      delete: Callable[[str], Any]) -> None:
    """Delete a named object: it must exist, then the operator confirms (or passed -y)."""
    get(name)
    confirm(f"delete {what} {name!r}", yes)
    delete(name)
    say(f"deleted {what} {name}")


def interactive() -> bool:
    """Whether a person can answer a prompt (stdin is a terminal)."""
    return sys.stdin.isatty()


def confirm(prompt: str, yes: bool) -> None:
    if yes:
        return
    if not interactive():
        raise Failure(f"{prompt} needs confirmation: pass -y/--yes to do it without a prompt")
    if not click.confirm(f"{printable(prompt)}?", default=False):
        raise Failure("cancelled; nothing was changed")



allow_anonymous_option = click.option(
    "--allow-anonymous", is_flag=True, envvar="REGCACHE_ALLOW_ANONYMOUS",
    help="Allow pulls without a client token on a non-loopback address (otherwise such an address needs "
         "a token: `regcache token create`).")



def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
