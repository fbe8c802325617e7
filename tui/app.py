"""The regcache TUI: the portal's blades for the keyboard, with the proxy embedded on its own thread."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Header
from textual.worker import Worker, WorkerState

from regcache.proxy.core.errors import RegcacheError

from .backend import Backend, ProxyStatus
from .blades.activity import ActivityBlade
from .blades.base import Blade
from .blades.credentials import CredentialsBlade
from .blades.overview import OverviewBlade
from .blades.rules import RulesBlade
from .blades.tokens import TokensBlade
from .blades.upstreams import UpstreamsBlade
from .messages import ConfigurationChanged, Navigate
from .screens.config_files import ClientConfigScreen, RulesFileScreen
from .screens.help import HelpScreen, help_sections
from .screens.unlock import UnlockScreen
from .text import notify, printable
from .widgets.key_bar import KeyBar
from .widgets.nav import BLADES, NavList


class RegcacheApp(App[None]):
    """The TUI. ``proxy`` is started on mount (None: show ``status`` as given, e.g. in tests).

    ``freeze_heap``: once started, move every object alive then out of the cyclic collector's reach
    (:meth:`freeze_startup_heap`); for the ``regcache`` process, not for a test that runs many apps."""

    CSS_PATH = "app.tcss"
    TITLE = "regcache"
    BINDINGS = [
        Binding("1", "show_blade('overview')", "Go to Overview", show=False, id="app.overview"),
        Binding("2", "show_blade('rules')", "Go to Rules", show=False, id="app.rules"),
        Binding("3", "show_blade('credentials')", "Go to Credentials", show=False, id="app.credentials"),
        Binding("4", "show_blade('activity')", "Go to Activity", show=False, id="app.activity"),
        Binding("5", "show_blade('upstreams')", "Go to Upstreams", show=False, id="app.upstreams"),
        Binding("6", "show_blade('tokens')", "Go to Tokens", show=False, id="app.tokens"),
        Binding("q", "quit", "Quit", id="app.quit"),
        # priority: on every screen, modal ones too; a text field still takes "?" as a character
        Binding("question_mark", "help", "Help", priority=True, id="app.help"),
        Binding("f1", "help", "Help", show=False, priority=True, id="app.help_f1"),
    ]

    #: what the header and the Overview say about the embedded proxy
    proxy_status: reactive[ProxyStatus] = reactive(ProxyStatus("-", "stopped"), init=False)

    def __init__(self, backend: Backend, proxy=None, status: ProxyStatus | None = None,
                 clock: Callable[[], datetime] | None = None, freeze_heap: bool = False) -> None:
        super().__init__()
        self.freeze_heap = freeze_heap
        self.backend = backend
        #: what "now" is for the Overview's last hour (tests fix it, so a snapshot shows the same charts)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(timezone.utc))
        self.proxy = proxy
        backend.proxy = proxy
        if status is not None:
            self.set_reactive(RegcacheApp.proxy_status, status)
        elif proxy is not None:
            self.set_reactive(RegcacheApp.proxy_status, ProxyStatus(str(proxy.server.address), "starting"))

    def compose(self) -> ComposeResult:
        yield Header(icon="⛁")
        with Horizontal(id="main"):
            yield NavList()
            with ContentSwitcher(initial="overview", id="blades"):
                yield OverviewBlade(id="overview")
                yield RulesBlade(id="rules")
                yield CredentialsBlade(id="credentials")
                yield ActivityBlade(id="activity")
                yield UpstreamsBlade(id="upstreams")
                yield TokensBlade(id="tokens")
        yield KeyBar()

    def on_mount(self) -> None:
        self.sub_title = printable(self.proxy_status.label)
        self.query_one(NavList).focus()
        if self.proxy is not None:
            self.start_proxy()
        self.ask_keyring_password()

    @work(thread=True, exclusive=True, group="unlock")
    def ask_keyring_password(self) -> None:
        """A keyring backend that needs a password is unlocked here, once, in a modal: nothing in the TUI's
        process ever prompts on the terminal (regcache.proxy.secrets)."""
        lock = self.backend.control.secrets.keyring_lock()
        if lock is not None:
            self.call_from_thread(self.push_screen, UnlockScreen(lock), self._keyring_answered)

    def _keyring_answered(self, unlocked: bool | None) -> None:
        if unlocked:
            notify(self, "Keyring unlocked for this session", title="Keyring")
        else:
            notify(self, "The keyring stays locked: pulls through credential sets with keyring:// secrets fail "
                         "until regcache is started again", title="Keyring", severity="warning", timeout=10)

    def watch_proxy_status(self, status: ProxyStatus) -> None:
        self.sub_title = printable(status.label)  # the address and the error are data

    @work(thread=True, exclusive=True, group="proxy")
    def start_proxy(self) -> None:
        try:
            address = self.proxy.start()
        except RegcacheError as exc:
            status = ProxyStatus(str(self.proxy.server.address), "stopped", str(exc))
            self.call_from_thread(setattr, self, "proxy_status", status)
            reason = str(exc) if str(exc).endswith((".", "?", "!")) else f"{exc}."
            self.call_from_thread(notify, self, f"The proxy is not running: {reason} Rules and credentials "
                                                f"still work.", title="Proxy", severity="error", timeout=15)
        else:
            self.call_from_thread(setattr, self, "proxy_status", ProxyStatus(str(address), "running"))
        if self.freeze_heap:
            self.call_from_thread(self.freeze_startup_heap)

    def freeze_startup_heap(self) -> None:
        """Collect once, then freeze what is left: the modules, widgets and engine objects that live as long as
        the process. Textual leaves cyclic garbage at every redraw, so full collections come about once a
        second, and each walked all ~110,000 objects of the process: 70-90 ms with every thread stopped (the
        embedded proxy's too), the tail of a key press (bench/tui_latency.py: idle p95 120-127 ms, 56-66 ms once
        frozen). Frozen objects are never collected, freed by their reference counts only: a cycle among them
        that becomes garbage later stays, once (the screens and blades live until the app quits)."""
        gc.collect()
        gc.freeze()

    async def on_unmount(self) -> None:
        if self.proxy is not None and self.proxy.running:
            import anyio

            await anyio.to_thread.run_sync(self.proxy.stop)

    # -- navigation ----------------------------------------------------------------------------

    def on_navigate(self, message: Navigate) -> None:
        self.query_one(ContentSwitcher).current = message.blade

    def action_show_blade(self, blade: str) -> None:
        self.query_one(ContentSwitcher).current = blade
        self.query_one(NavList).select_blade(blade)
        self.query_one(f"#{blade}", Blade).focus_main()

    def on_configuration_changed(self, message: ConfigurationChanged) -> None:
        for blade in self.query(Blade):
            if blade.display:
                blade.load()

    def run_blade_action(self, blade: str, action: str) -> None:
        self.action_show_blade(blade)
        self.call_after_refresh(self.query_one(f"#{blade}", Blade).run_action, action)

    def action_help(self) -> None:
        """Show every key of the screen shown now; on the help itself, close it."""
        screen = self.screen
        if isinstance(screen, HelpScreen):
            screen.dismiss(None)
            return
        if screen is self.screen_stack[0]:
            current = self.query_one(ContentSwitcher).current or ""
            title = dict(BLADES).get(current, "regcache")
        else:
            labels = screen.query(".title")
            title = str(labels.first().render()) if labels else "this screen"
        self.push_screen(HelpScreen(help_sections(self, screen), printable(title)))

    def _key(self, blade: str | None, action: str) -> str:
        """The keys of ``action`` (on ``blade``, or the app's), as the footer shows them; "" when none."""
        owner = self.screen_stack[0].query_one(f"#{blade}", Blade) if blade else self
        keys = [self.get_key_display(b) for _, b in owner._bindings if b.action == action]
        return " ".join(dict.fromkeys(keys))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, (blade, title) in enumerate(BLADES, 1):
            yield SystemCommand(f"Go to {title} ({i})", f"Show the {title} blade (key {i})",
                                lambda b=blade: self.action_show_blade(b))
        actions = (
            ("New cache rule", "Create a cache rule (portal form)", "rules", "new_rule"),
            ("Edit rule credentials", "Attach or remove the selected rule's credential set", "rules",
             "edit_credentials"),
            ("Delete cache rule", "Delete the selected cache rule (asks first)", "rules", "delete_rule"),
            ("Cache rule details", "Cached repositories, tags, sizes and hits of the selected rule", "rules",
             "details"),
            ("Sync tags now", "Fetch new or moved tags matching the selected rule's filter", "rules", "sync_tags"),
            ("Rule settings", "Freshness, stale serving, retention and tag sync of the selected rule", "rules",
             "settings"),
            ("Warm an image", "Pull an image into the cache through the selected rule, no client needed", "rules",
             "warm"),
            ("Test rule with an image", "Upstream reference, credentials and digest; nothing cached", "rules",
             "test_rule"),
            ("Create credentials", "A credential set with values in the keyring or secret URIs", "credentials",
             "new_credentials"),
            ("Re-check credentials", "Check the selected credential set again and record the outcome",
             "credentials", "check_health"),
            ("Credentials details", "Health and its message, the rules using it; edit its secret ids",
             "credentials", "edit_credentials"),
            ("Delete credentials", "Delete the selected credential set (asks first)", "credentials",
             "delete_credentials"),
            ("Filter activity", "Filter the live pull log", "activity", "filter"),
            ("Add upstream", "A custom upstream registry, or a built-in URL override", "upstreams",
             "add_upstream"),
            ("Remove upstream", "Remove the selected custom upstream or URL override", "upstreams",
             "remove_upstream"),
            ("Create client token", "A login for clients, scoped to repositories; its password is shown once",
             "tokens", "new_token"),
            ("Delete client token", "Delete the selected client token (asks first)", "tokens", "delete_token"),
            ("Search cache rules", "Filter the cache rules by name, target, source or credentials", "rules",
             "search"),
            ("Purge cached content", "Open the selected rule's details to purge a tag, a digest or a repository",
             "rules", "details"),
        )
        blade_numbers = {blade: i for i, (blade, _) in enumerate(BLADES, 1)}
        for title, help_text, blade, action in actions:
            key = self._key(blade, action)
            # the key works on its blade: say which (e.g. "New cache rule (n)" ... "on Cache rules, key 2")
            where = f" · on {dict(BLADES)[blade]} (key {blade_numbers[blade]})"
            yield SystemCommand(f"{title} ({key})" if key else title, help_text + where,
                                lambda b=blade, a=action: self.run_blade_action(b, a))
        yield SystemCommand("Help: keys of this screen (? f1)", "Every key of the screen shown, and the app's",
                            self.action_help)
        yield SystemCommand("Client configuration", "containerd hosts.toml, podman registries.conf, docker daemon.json",
                            self.show_client_config)
        yield SystemCommand("Rules file: export, plan, apply", "Share one reviewed rules file across caches",
                            lambda: self.push_screen(RulesFileScreen()))
        yield SystemCommand("Evict now (gc)", "Apply retention and max-size now, least recently pulled first",
                            self.evict_now)

    def show_client_config(self) -> None:
        from regcache.proxy.config.client_config import DEFAULT_ADDRESS, client_address

        # the address the proxy listens on, as clients on this host reach it (never rewritten to `localhost`)
        listen = self.proxy_status.address
        self.push_screen(ClientConfigScreen(printable(client_address(listen) if listen != "-" else DEFAULT_ADDRESS)))

    @work(thread=True, exclusive=True, group="gc")
    def evict_now(self) -> None:
        from regcache.proxy.core.units import format_size

        freed = self.backend.run_job(lambda ops: ops.collect_garbage(only_if_configured=True)).bytes_freed
        self.call_from_thread(notify, self, f"Eviction freed {format_size(freed)}" if freed else
                              "Nothing to evict (no max-size exceeded, no retention expired)")

    # -- errors from workers -------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            message = str(error) if isinstance(error, RegcacheError) else f"{type(error).__name__}: {error}"
            notify(self, message, title="Error", severity="error", timeout=10)


def run_app(home: str | Path | None = None, listen: str = "127.0.0.1:5000", allow_anonymous: bool = False) -> None:
    """Open the TUI on the state directory ``home`` with the proxy listening on ``listen``."""
    from regcache.proxy.server import EmbeddedProxy, ProxyServer
    from regcache.proxy.state.store import resolve_home

    from .logs import LOG_FILE, configured_max_size, log_to_file

    backend = Backend.open(home)
    state_dir = resolve_home(home)
    # Nothing may print into the TUI's terminal: the proxy's log goes to the state directory, rotated by size.
    log_to_file(state_dir / LOG_FILE, configured_max_size(state_dir))
    try:
        proxy = EmbeddedProxy(ProxyServer(state_dir, listen, allow_anonymous=allow_anonymous))
        RegcacheApp(backend, proxy, freeze_heap=True).run()
    finally:
        backend.close()
