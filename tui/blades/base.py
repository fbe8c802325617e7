"""What every blade shares: data loaded in a worker, reloaded when shown and on a timer."""

from __future__ import annotations

from textual.containers import Vertical
from textual.widgets import DataTable

from ..backend import Backend


class Blade(Vertical):
    """A blade of the main screen; subclasses implement ``load`` (a thread worker)."""

    #: seconds between reloads while the blade is shown (CLI changes and new pulls appear)
    REFRESH_SECONDS = 5.0
    TITLE = ""

    @property
    def backend(self) -> Backend:
        return self.app.backend  # type: ignore[attr-defined]

    def on_mount(self) -> None:
        self.set_interval(self.REFRESH_SECONDS, self.reload_if_shown)

    def on_show(self) -> None:
        self.load()

    def reload_if_shown(self) -> None:
        if self.display and self.is_on_screen:
            self.load()

    def load(self) -> None:
        raise NotImplementedError

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

    @staticmethod
    def fill(table: DataTable, rows: list[tuple[str, tuple]]) -> None:
        """Replace the rows, keeping the cursor on the same key where it still exists."""
        current = None
        if table.row_count:
            current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        keys = [key for key, _ in rows]
        if current in keys:
            table.move_cursor(row=keys.index(current))
