"""What every blade shares: data loaded in a worker, reloaded when shown and on a timer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from textual import work
from textual.containers import Vertical
from textual.widgets import DataTable
from textual.worker import Worker

from ..backend import Backend
from ..messages import ConfigurationChanged
from ..screens.confirm import ConfirmScreen
from ..text import notify, notify_refusal

if TYPE_CHECKING:
    from regcache.proxy.jobs.operations import Operations


class Blade(Vertical):
    """A blade of the main screen; subclasses implement ``load_in_thread`` (a thread worker)."""

    #: seconds between reloads while the blade is shown (CLI changes and new pulls appear)
    REFRESH_SECONDS = 5.0
    #: what ConfigurationChanged says when this blade changed something
    CHANGES = ""

    @property
    def backend(self) -> Backend:
        return self.app.backend  # type: ignore[attr-defined]

    #: the load in flight, and whether another was asked for meanwhile (run once it ends)
    _loading: Worker[None] | None = None
    _load_again = False

    def on_mount(self) -> None:
        self.set_interval(self.REFRESH_SECONDS, self.reload_if_shown)

    def on_show(self) -> None:
        self.load()

    def reload_if_shown(self) -> None:
        if self.display and self.is_on_screen:
            self.load()

    def load(self) -> None:
        """(Re)load the blade's data, off the UI thread: starts :meth:`load_in_thread`.

        One load at a time: a thread worker cannot be stopped, so a second one started beside it (the first
        load and the timer's refresh) would only look cancelled and still show what it read, late and out
        of order (the Activity log added events twice: DuplicateKey). A load asked for meanwhile runs once
        the one in flight ends."""
        if self._loading is not None and not self._loading.is_finished:
            self._load_again = True
            return
        self._load_again = False
        self._loading = self.load_in_thread()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # not stopped: the app reports a worker's error
        if event.worker is self._loading and event.worker.is_finished and self._load_again:
            self.load()

    def load_in_thread(self) -> Worker[None]:
        """Read the blade's data and show it; subclasses implement it as a thread worker
        (``@work(thread=True, exclusive=True, group="NAME-load")``), so a reload replaces one still running."""
        raise NotImplementedError

    def deliver(self, show: Callable[..., None], *args: object) -> None:
        """From a load's thread: run ``show(*args)`` on the UI thread, unless the blade is gone by then (the
        app quit while the load ran: its widgets are being removed, a query for them would fail)."""

        def if_still_shown() -> None:
            if self.app.is_running and self.is_attached and not (self._closing or self._closed):
                show(*args)

        self.app.call_from_thread(if_still_shown)

    def focus_main(self) -> None:
        """Focus the blade's main widget (its table) when the blade is shown."""
        tables = self.query(DataTable)
        if tables:
            tables.first().focus()

    def selected_key(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def changed(self, message: str) -> None:
        """After a change: say so (``message`` may hold data: it is shown as text), reload, and tell the
        other blades."""
        notify(self, message)
        self.load()
        self.post_message(ConfigurationChanged(self.CHANGES))

    def confirm_change(self, title: str, detail: str, change: Callable[[Backend], object], done: str) -> None:
        """Ask first; on yes run ``change`` off the UI thread and report ``done`` (or the engine's error).

        ``title`` and ``detail`` are shown as text; values interpolated into a multi-line ``detail`` go
        through :func:`regcache.tui.text.printable` so their line breaks cannot forge lines."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_change(change, done)

        self.app.push_screen(ConfirmScreen(title, detail), answered)

    @work(thread=True, group="blade-change")
    def run_change(self, change: Callable[[Backend], object], done: str | Callable[[object], str]) -> None:
        self._report(lambda: self.backend.call(change), done)

    @work(thread=True, group="blade-job")
    def run_job(self, job: Callable[[Operations], Awaitable[object]], done: str | Callable[[object], str]) -> None:
        """Run a job (warm, tag sync, gc) in the engine, off the UI thread, without holding the backend."""
        self._report(lambda: self.backend.run_job(job), done)

    def _report(self, run: Callable[[], object], done: str | Callable[[object], str]) -> None:
        try:
            result = run()
        except BaseException as exc:
            notify_refusal(self, exc)
            return
        self.app.call_from_thread(self.changed, done(result) if callable(done) else done)
