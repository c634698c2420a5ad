"""Paging arithmetic shared by the counted pages (readings, their minutes, gas values, quarter-hour
peaks): where a page's rows are, counted oldest first, and which group (a span, an hour) holds a row.

Deep pages are located by counts per SPAN (InfluxQL's windows start at the epoch), then read with a
small OFFSET inside their span: InfluxQL's OFFSET reads every row it skips.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

SPAN = dt.timedelta(days=30)


def page_rows(count: int, offset: int, limit: int, descending: bool) -> tuple[int, int]:
    """The first and last row numbers, counted oldest first, of a page of `count` rows (offset < count)."""
    if descending:
        return max(0, count - offset - limit), count - 1 - offset
    return offset, min(count, offset + limit) - 1


def row_in(groups: Iterable[tuple[int, int]], row: int) -> tuple[int, int] | None:
    """Row number `row` across consecutive (key, rows) groups, oldest first -> (its group's key, its
    number inside that group); None past the last group."""
    for key, rows in groups:
        if row < rows:
            return key, row
        row -= rows
    return None
