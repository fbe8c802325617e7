"""`regcache tui` and `regcache serve`: the proxy, with or without the screen."""

from __future__ import annotations

import sys

import click

from regcache.proxy.core.errors import RegcacheError, unwrap_error
from regcache.tui.cli.common import (
    Failure,
    allow_anonymous_option,
    say,
)

#: `regcache --force` / `regcache tui --force`, or this variable set to 1: draw the TUI on a non-terminal
FORCE_TUI_ENV = "REGCACHE_FORCE_TUI"

force_tui_option = click.option(
    "--force", "force_tui", is_flag=True, envvar=FORCE_TUI_ENV,
    help=f"Draw the TUI even when standard output is not a terminal (also {FORCE_TUI_ENV}=1).")


class NotATerminal(Failure):
    """The TUI asked for where it cannot be drawn: exit status 2, like a usage error."""

    exit_code = 2


def check_terminal(force: bool) -> None:
    """Refuse to draw the TUI into a pipe or a file (a script that meant `serve`, a service unit, `| less`):
    escape sequences would fill it while the proxy ran unseen."""
    if force or sys.stdout.isatty():
        return
    raise NotATerminal("standard output is not a terminal, so the TUI is not drawn: run `regcache serve` for the "
                       "proxy alone, or run regcache in a terminal (--force or REGCACHE_FORCE_TUI=1 draws it anyway)")


@click.command("tui")
@click.option("--listen", default="127.0.0.1:5000", show_default=True, help="Proxy address, HOST:PORT.")
@allow_anonymous_option
@force_tui_option
@click.pass_context
def tui_command(ctx: click.Context, listen: str = "127.0.0.1:5000", allow_anonymous: bool = False,
                force_tui: bool = False) -> None:
    """Open the TUI with the embedded proxy (standard output must be a terminal)."""
    from regcache.proxy.server import ListenAddress, check_exposure
    from regcache.proxy.state.store import resolve_home

    home = ctx.find_root().obj.get("home")
    try:
        check_exposure(resolve_home(home), ListenAddress.parse(listen), allow_anonymous)  # before the screen opens
        check_terminal(force_tui or bool(ctx.find_root().obj.get("force_tui")))
        from regcache.tui.app import run_app  # Textual loads only here: the other commands stay fast

        run_app(home=home, listen=listen, allow_anonymous=allow_anonymous)
    except RegcacheError as exc:
        raise Failure(str(exc)) from None


@click.command()
@click.option("--listen", default="127.0.0.1:5000", show_default=True, help="Address to serve on, HOST:PORT.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--metrics-listen", metavar="HOST:PORT",
              help="Serve Prometheus /metrics on this address instead of beside the registry API.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--log-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Log to PATH, rotated at the log-max-size setting (3 older files kept), instead of stderr.")
@click.option("--trusted-proxy", "trusted_proxies", metavar="ADDR[,ADDR]", multiple=True,
              help="Believe X-Forwarded-For/-Proto only from these addresses or networks (a reverse proxy in "
                   "front, e.g. 127.0.0.1); without it those headers are ignored.")
@allow_anonymous_option
@click.pass_context
def serve(ctx: click.Context, listen: str, tls_cert: str | None, tls_key: str | None, metrics_listen: str | None,
          log_level: str, trusted_proxies: tuple[str, ...] = (), allow_anonymous: bool = False,
          log_file: str | None = None) -> None:
    """Run the registry proxy in the foreground (stops cleanly on SIGTERM or Ctrl-C)."""
    import logging
    import signal
    from pathlib import Path

    import anyio

    from regcache.proxy.server import ProxyServer
    from regcache.proxy.state.store import resolve_home
    from regcache.tui.logs import configured_max_size, log_to_file

    home = resolve_home(ctx.find_root().obj.get("home"))
    if log_file:  # a file: rotated by size, so months of serving never fill the disk
        try:
            log_to_file(Path(log_file), configured_max_size(home), log_level.upper())
        except OSError as exc:
            raise Failure(f"cannot write the log file {log_file}: {exc.strerror or exc}; give a writable path "
                          f"with --log-file, or leave it out to log to stderr") from None
    else:  # stderr: for a supervisor (systemd's journal, docker) that keeps and rotates it
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_level != "debug":  # httpx logs every upstream request at INFO: the event log has them
        logging.getLogger("httpx").setLevel(logging.WARNING)

    async def run() -> None:
        server = ProxyServer(home, listen, tls_cert=tls_cert, tls_key=tls_key, metrics_listen=metrics_listen,
                             allow_anonymous=allow_anonymous, trusted_proxies=trusted_proxies)
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)  # a taken port raises here
            say(f"regcache: serving {server.url} (state: {home})")
            if server.metrics_address is not None:
                say(f"regcache: metrics on http://{server.metrics_address}/metrics")
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logging.getLogger("regcache").info("%s: finishing in-flight requests",
                                                       signal.Signals(signum).name)
                    server.stop()
                    break

    try:
        anyio.run(run)
    except BaseException as exc:
        inner = unwrap_error(exc)
        if isinstance(inner, RegcacheError):
            raise Failure(str(inner)) from None
        raise
