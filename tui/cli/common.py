"""What every command shares: options, the control plane, one-line failures, output, prompts.

Everything a command prints goes through :func:`say`, :func:`emit` or :func:`say_document`, which
print data as text: a control character or bidi override in a name, a URL or an upstream's error
shows escaped (``\x1b``), never acts on the terminal. Nothing here parses markup.

Every read takes ``-o table|json|yaml|tsv`` and ``--query`` (JMESPath over the JSON document, as az's):
:func:`output_option` adds both, and :func:`emit` applies them. An engine error names the option the
operator typed (``--username-id``), never the engine's field (``username_secret_id``): :data:`FIELD_PARAMS`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.errors import NotFoundError, RegcacheError, ValidationError, unwrap_error
from regcache.proxy.core.text import printable
from regcache.proxy.secrets import SecretResolver
from regcache.tui.output import (
    FORMATS,
    Column,
    render,
    render_result,
)

if TYPE_CHECKING:
    from regcache.proxy.jobs.operations import Operations
    from regcache.tui.cli.query import Query

T = TypeVar("T")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

_QUERY_KEY = "regcache.query"


def _parse_query(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Parse ``--query`` before the command runs: a bad expression changes nothing (usage error, exit 2)."""
    if value is None:
        return
    from regcache.tui.cli.query import Query  # jmespath loads only for a query

    try:
        ctx.meta[_QUERY_KEY] = Query(value)
    except ValidationError as exc:
        raise click.BadParameter(re.sub(r"^--query (is )?", "", str(exc)), ctx, param) from None


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``-o/--output`` (the command's ``fmt``) and ``--query`` (kept in the context, for :func:`emit`)."""
    fn = click.option("--query", metavar="JMESPATH", expose_value=False, callback=_parse_query,
                      help="JMESPath query over the JSON document, as az's, e.g. --query sourceRepository -o tsv "
                           "(see https://jmespath.org).")(fn)
    return click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format.")(fn)


name_option = click.option("-n", "--name", required=True, help="Name (5-50 letters, digits, hyphens).")


class Failure(click.ClickException):
    """A refused command: one line on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        say(f"error: {self.format_message()}")


#: the engine's field names (ValidationError.field) -> the parameter of the command that carries it, where
#: the two differ; a field the running command has no parameter for is left as the engine wrote it
FIELD_PARAMS = {
    "username_secret_id": "username_id",
    "password_secret_id": "password_id",
    "credential_set": "cred_set",
    "allow_origin": "allow_origins",
    "file": ("path", "stream"),
}


def _param_of(command: click.Command, field: str) -> click.Parameter | None:
    wanted = FIELD_PARAMS.get(field, field.replace("-", "_"))
    names = (wanted,) if isinstance(wanted, str) else wanted
    return next((p for p in command.params if p.name in names), None)


def _flag(param: click.Parameter) -> str:
    """How the operator wrote the parameter: ``--username-id`` (the long form), or ``VALUE`` (an argument)."""
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.name or "").upper()


def message_with_flags(command: click.Command | None, exc: RegcacheError) -> str:
    """``exc``'s message with the engine's name of the field it concerns (``username_secret_id``, or
    ``sync_interval`` at the start of a message) replaced by the option of ``command`` that carries it."""
    message = str(exc)
    field = getattr(exc, "field", None) if isinstance(exc, (ValidationError, NotFoundError)) else None
    param = _param_of(command, field) if command is not None and field else None
    if param is None or field is None:
        return message
    flag = _flag(param)
    if re.search(r"[_-]", field):  # an identifier, never a word of a sentence: replaced wherever it appears
        message = re.sub(rf"(?<![\w-]){re.escape(field)}(?![\w-])", flag, message)
    spoken = field.replace("_", " ")
    for label in (field, spoken, f"the {spoken}"):  # the field's bare name as the subject: `value contains ...`
        if re.match(rf"{re.escape(label)} (contains|is|must|has) ", message):
            return flag + message[len(label):]
    return message


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
                raise Failure(message_with_flags(ctx.command, inner)) from None
            raise

    return wrapper


def run_job(control: ControlPlane, job: Callable[[Operations], Awaitable[T]]) -> T:
    """Run ``job`` (warm, rule test, tag sync, gc) on an engine of this command's own, to completion."""
    from regcache.proxy.jobs.operations import Operations

    return Operations.run_alone(control.store.home, control.secrets, job)


def current_query() -> Query | None:
    """The ``--query`` of the running command, if it was given one."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_QUERY_KEY) if ctx is not None else None


def emit(document: Any, columns: Sequence[Column], fmt: str, rows: Any = None) -> None:
    """Print a read: ``document`` (the ARM-shaped JSON record or list) as JSON or YAML, or its ``rows`` (by
    default the document itself) under ``columns`` as a table or TSV; with ``--query``, what the query
    selects from ``document``, in any of the formats."""
    query = current_query()
    if query is not None:
        try:
            text = render_result(query.search(document), fmt)
        except ValidationError as exc:
            raise Failure(str(exc)) from None
    else:
        text = render(document if rows is None or fmt in ("json", "yaml") else rows, columns, fmt)
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
