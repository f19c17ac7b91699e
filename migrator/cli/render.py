"""How the CLI's tables show times and fit a terminal: one place for every command.

Times are the operator's local time and always keep their seconds: ``23:14:05`` today,
``2026-11-29 23:14:05`` before today. Ages read ``12 s ago``. Lists are compact tables whose key
columns (ids, times) never wrap or lose characters; commands that list things take ``--wide`` for
the secondary columns.
"""

from __future__ import annotations

import datetime as dt

import typer
from rich import box
from rich.table import Table

WIDE_OPTION = typer.Option(False, "--wide", help="Show every column (the default fits 80 columns).")

# The shortest move id prefix a list shows (a git-like prefix that `migrator status PREFIX` takes).
ID_PREFIX = 8


def _as_datetime(value) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def clock(value, now: dt.datetime | None = None) -> str:
    """``23:14:05`` for a time today, ``2026-11-29 23:14:05`` for an earlier (or later) day; local time.

    ``value`` is a datetime or an ISO 8601 string (naive ones are taken as UTC, as the control database
    stores them); None or "" gives ""."""
    when = _as_datetime(value)
    if when is None:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    when = when.astimezone()
    today = (now or dt.datetime.now(dt.UTC)).astimezone().date()
    return when.strftime("%H:%M:%S" if when.date() == today else "%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    """``12 s ago``, ``4 min ago``, ``3 h ago``, ``2 d ago``."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s ago"
    if s < 2 * 3600:
        return f"{s // 60} min ago"
    if s < 2 * 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def list_table(title: str | None = None) -> Table:
    """A compact table for lists: a rule under the header, no borders, two spaces between columns."""
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")


def key_column(table: Table, header: str, **kwargs) -> None:
    """A key column (ids, times, counts): it never wraps, and the other columns give up width before it
    does (it is cut only on a terminal too narrow for the key columns alone)."""
    table.add_column(header, no_wrap=True, min_width=len(header), **kwargs)


def text_column(table: Table, header: str, **kwargs) -> None:
    """A free-text column: it folds onto more lines rather than widening the table."""
    table.add_column(header, overflow="fold", **kwargs)


def short_column(table: Table, header: str, **kwargs) -> None:
    """A secondary column of one-word values (names, states, steps): when the terminal is too narrow it
    gives up width before the key columns do, its values cut with an ellipsis rather than wrapped."""
    table.add_column(header, overflow="ellipsis", **kwargs)


def id_prefixes(ids: list[str], length: int = ID_PREFIX) -> dict[str, str]:
    """Each id's shortest prefix of at least ``length`` hex digits that no other listed id shares."""
    out = {}
    for i in ids:
        n = length
        while n < len(i) and any(o != i and o.startswith(i[:n]) for o in ids):
            n += 1
        out[i] = i[:n]
    return out
