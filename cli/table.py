"""Table: rich's Table fitted to the console width without cutting a word to "…" (every
result table of the CLI is one)."""

import copy

from rich import box, table
from rich.measure import Measurement


class Table(table.Table):
    """rich's Table, fitted to the console without cutting a word to "…".

    A piped result is 80 columns wide (no terminal to ask), and rich shrinks the widest
    columns first, ending a model name or a figure in "…": a wrong value, not a short one.
    So each column is given at least its longest word, the rest of the width shared out by
    what each column would like; where the boxed table cannot give every column its longest
    word, the box goes (a rule under the header, columns apart by spaces), then the padding;
    only a table too wide for even that folds a word, and still loses no character."""

    LAYOUTS = (  # tried in turn until every column gets its longest word
        {},
        {
            "box": box.SIMPLE_HEAD,
            "show_edge": False,
            "pad_edge": False,
            "padding": (0, 1),
            "collapse_padding": True,
        },
        {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False, "padding": (0, 0)},
    )

    def add_column(self, *args, overflow="fold", **kwargs) -> None:
        super().add_column(*args, overflow=overflow, **kwargs)

    def __rich_console__(self, console, options):
        fitted = copy.copy(self)
        fitted.columns = [copy.copy(c) for c in self.columns]  # fitting never changes the table itself
        fitted._fit(console, options)
        yield from table.Table.__rich_console__(fitted, console, options)

    def _fit(self, console, options) -> None:
        if self.width is not None or not self.columns:
            return
        ranges = [_column_range(console, options, c) for c in self.columns]
        for layout in self.LAYOUTS:
            for name, value in layout.items():
                setattr(self, name, value)
            room = options.max_width - self._overhead()
            lo, hi = sum(r[0] for r in ranges), sum(r[1] for r in ranges)
            if hi <= room:
                return  # fits as it is: rich lays it out
            if lo <= room:
                break
        else:
            return  # no layout gives every column its longest word: rich folds (overflow above)
        spare = room - lo  # shared by how much each column would still like
        wants = [h - m for m, h in ranges]
        extra = [spare * w // max(sum(wants), 1) for w in wants]
        for column, (m, _), e in zip(self.columns, ranges, extra, strict=True):
            if column.width is None:
                column.width = m + e

    def _overhead(self) -> int:
        """Columns of the table that are not cell content: borders, dividers, padding."""
        n = len(self.columns)
        left, right = self.padding[3], self.padding[1]
        pads = 0
        for i in range(n):
            lpad, rpad = left, right
            if self.collapse_padding and i > 0:
                lpad = max(0, lpad - right)
            if not self.pad_edge:
                lpad = 0 if i == 0 else lpad
                rpad = 0 if i == n - 1 else rpad
            pads += lpad + rpad
        borders = (n - 1 + (2 if self.show_edge else 0)) if self.box else 0
        return pads + borders


def _column_range(console, options, column) -> tuple[int, int]:
    """(longest word, whole line) over a column's header and cells: its narrowest unbroken
    width and the width it would like."""
    if column.width is not None:
        return column.width, column.width
    cells = [column.header, *column.cells] if column.header else list(column.cells)
    sizes = [Measurement.get(console, options, cell) for cell in cells]
    low = max((s.minimum for s in sizes), default=1)
    high = max((s.maximum for s in sizes), default=1)
    low = max(low, column.min_width or 0)
    return low, max(low, high)
