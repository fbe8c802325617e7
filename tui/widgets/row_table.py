"""A DataTable of records: the cursor is a row, and Home/End/g/G go to the first and last row."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable


class RowTable(DataTable):
    """``DataTable`` with a row cursor; Home/End (and g/G, as in less and vim) move to the first/last row
    instead of scrolling sideways between columns."""

    BINDINGS = [
        Binding("home,g", "first_row", "First", show=False, id="table.first"),
        Binding("end,G", "last_row", "Last", show=False, id="table.last"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", True)
        super().__init__(*args, **kwargs)

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
