"""`regcache upstream ...`: custom upstreams and URL overrides of built-ins."""

from __future__ import annotations

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.models import ANONYMOUS, AuthPolicy
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    emit,
    engine_command,
    output_option,
    say,
)
from regcache.tui.output import (
    UPSTREAM_COLUMNS,
    upstream_resource,
)


@click.group(context_settings=CONTEXT_SETTINGS)
def upstream() -> None:
    """Manage upstream registries: custom ones and URL overrides of built-ins."""


@upstream.command("add")
@click.option("--login-server", required=True, help="HOST[:PORT] that cache-rule sources start with.")
@click.option("--url", required=True, help="API base URL (https:// unless http:// is written out).")
@click.option("--auth", type=click.Choice([p.value for p in AuthPolicy]), default=None,
              help="Pulls the upstream allows (custom upstreams; default both).")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
              help="scheme://host[:port] besides the URL's own that the upstream's redirects and token service "
                   "may use even on a loopback, link-local or private address, and that may receive the credential "
                   "set as its token service (repeatable; replaces the upstream's previous ones).")
@click.option("--ca-bundle", metavar="PATH", default=None,
              help="PEM file of CA certificates trusted for the URL's own origin besides the operating system's "
                   "trust store (a private CA); read now and whenever the proxy reloads its configuration.")
@output_option
@engine_command
def upstream_add(control: ControlPlane, login_server: str, url: str, auth: str | None,
                 allow_origins: tuple[str, ...], ca_bundle: str | None, fmt: str) -> None:
    """Add or replace a custom upstream, or override a built-in upstream's URL, allowed origins and CA bundle."""
    emit(upstream_resource(control.add_upstream(login_server, url, auth, allow_origins, ca_bundle)),
         UPSTREAM_COLUMNS, fmt)


@upstream.command("list")
@output_option
@engine_command
def upstream_list(control: ControlPlane, fmt: str) -> None:
    """List built-in and custom upstreams."""
    emit([upstream_resource(u, control.rate_limit(u.login_server, ANONYMOUS)) for u in control.list_upstreams()],
          UPSTREAM_COLUMNS, fmt)


@upstream.command("remove")
@click.option("--login-server", required=True, help="The upstream to remove (a built-in: its URL override).")
@engine_command
def upstream_remove(control: ControlPlane, login_server: str) -> None:
    """Remove a custom upstream, or restore a built-in upstream's default URL."""
    removed = control.remove_upstream(login_server)
    what = "URL override of" if removed.builtin else "upstream"
    say(f"removed {what} {removed.login_server}")
