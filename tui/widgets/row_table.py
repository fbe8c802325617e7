"""A DataTable of records: the cursor is a row, Home/End/g/G go to the first and last row, and its rows are
replaced in one step with the columns already as wide as their cells."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable


class RowTable(DataTable):
    """``DataTable`` with a row cursor; Home/End (and g/G, as in less and vim) move to the first/last row
    instead of scrolling sideways between columns."""

    BINDINGS = [
        Binding("home,g", "first_row", "First", show=False, id="table.first"),
        Binding("end,G", "last_row", "Last", show=False, id="table.last"),
    ]

    class Resized(Message):
        """The table's own size changed (a blade that fits its columns to the width listens: the blade's
        size may stay the same while the table's changes, e.g. when a search field opens above it)."""

        def __init__(self, table: RowTable) -> None:
            super().__init__()
            self.table = table

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", True)
        super().__init__(*args, **kwargs)

    #: what the table shows: each row's key and how its cells look (see :func:`_looks`)
    _shown: list[tuple[str, tuple[object, ...]]] | None = None

    def show_rows(self, rows: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Replace the rows (``(key, cells)``), keeping the cursor on the same key where it still exists.

        Rows that look the same as those shown are left alone (a refresh that read the same data does not
        redraw). The columns get their widths here, from the header and the cells, instead of later: a
        ``DataTable`` measures new rows when it is next idle and may draw before that, or not repaint after
        it (textual#4470), so a table could stay drawn with its columns at their headers' widths."""
        looks = [(key, tuple(_looks(cell) for cell in cells)) for key, cells in rows]
        if looks == self._shown:
            return
        self._shown = looks
        current = None
        if self.row_count:
            current = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        columns = list(self.ordered_columns)
        widths = [max([column.label.cell_len, *(_width(cells[i]) for _, cells in rows if i < len(cells))])
                  for i, column in enumerate(columns)]
        if widths != [column.width if not column.auto_width else -1 for column in columns]:
            labels = [column.label for column in columns]
            self.clear(columns=True)
            for label, width in zip(labels, widths):
                self.add_column(label, width=width)
        else:
            self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        keys = [key for key, _ in rows]
        if current in keys:
            self.move_cursor(row=keys.index(current))

    def on_resize(self, event: events.Resize) -> None:
        self.post_message(self.Resized(self))

    def action_first_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=0, column=self.cursor_column)

    def action_last_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1, column=self.cursor_column)


#: the narrowest a fitted column gets (a name cut shorter says nothing)
MIN_WIDTH = 6


def fit_widths(natural: list[int], room: int) -> list[int]:
    """Column widths within ``room`` characters: each column's ``natural`` width when they all fit, else
    the widest ones cut down first (never below :data:`MIN_WIDTH`), so short columns stay whole."""
    widths = list(natural)
    while sum(widths) > room:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= MIN_WIDTH:
            break
        widths[widest] -= 1
    return widths


def cut(value: str, width: int, *, middle: bool = False) -> str:
    """``value`` in at most ``width`` characters: its end replaced by ``…``, or with ``middle`` its middle
    (a long source keeps its registry and its repository's last part: ``docker.io/li…/ubuntu``)."""
    if len(value) <= width:
        return value
    if width <= 1:
        return "…"[:width]
    if not middle:
        return value[:width - 1] + "…"
    tail = (width - 1) // 2
    head = width - 1 - tail
    return value[:head] + "…" + value[len(value) - tail:]


def _looks(cell: object) -> object:
    """What a cell looks like: a ``Text``'s characters and styles (``Text.__eq__`` ignores its own style)."""
    if isinstance(cell, Text):
        return cell.plain, str(cell.style), tuple(cell.spans), cell.justify
    return cell


def _width(cell: object) -> int:
    return cell.cell_len if isinstance(cell, Text) else Text(str(cell)).cell_len
