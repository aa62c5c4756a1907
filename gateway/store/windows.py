"""Time-pruned reads of the call log: only the day partitions a time window touches.

The ``calls`` and ``events`` views read every file of the snapshot; DuckDB then prunes row
groups by their statistics but still opens each file's footer (on object storage, a request
per file). `source` returns a SQL relation over the files of the days that meet
``[lo_us, hi_us)`` (the ``date=`` partition, UTC) plus the unflushed WAL tail, so a query
over the last day of a month-long log touches one partition. The caller still filters on
``ts``: a partition is a whole day.

>>> rel = source(store, "calls", lo_us, hi_us)
>>> store.sql(f"SELECT count(*) AS n FROM {rel} WHERE epoch_us(ts) >= $lo", {"lo": lo_us})

Call ids made by `gateway.store.ids.new_id` carry their creation time, so one call's page
reads the partitions around that time only (`id_window`).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from gateway.store.ids import id_time

if TYPE_CHECKING:
    from gateway.store.reader import LogStore

DAY_US = 86_400_000_000


def day_of(us: int) -> str:
    """The ``date=`` partition of a timestamp in epoch microseconds."""
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)).date().isoformat()


def day_start_us(day: str) -> int:
    """The start of a ``date=`` partition (``YYYY-MM-DD``, UTC) in epoch microseconds: `day_of`'s inverse."""
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000


def days(store: LogStore, table: str) -> list[str]:
    """The day partitions the snapshot has for ``table``, oldest first."""
    return sorted({f.day for f in store.data_files.get(table, ())})


def source(
    store: LogStore, table: str, lo_us: int | None = None, hi_us: int | None = None, *, tail: bool = True
) -> str:
    """A parenthesised relation: ``table``'s rows in the day partitions meeting ``[lo_us, hi_us)``.

    ``None`` leaves that side open. The WAL tail (rows not committed yet) is included unless
    ``tail`` is false.
    """
    lo_day = day_of(lo_us) if lo_us is not None else ""
    hi_day = day_of(hi_us - 1) if hi_us is not None else "9999-12-31"
    files = [f for f in store.data_files.get(table, ()) if lo_day <= f.day <= hi_day]
    rest = f" UNION ALL BY NAME SELECT * FROM _{table}_tail" if tail else ""
    if not files:
        return f"(SELECT * FROM _{table}_tail{'' if tail else ' LIMIT 0'})"
    return f"(SELECT * FROM {store.parquet(files)}{rest})"


def id_window(call_id: str, *, margin_us: int = DAY_US) -> tuple[int, int] | None:
    """``[lo, hi)`` around the time a `new_id` call id encodes; None for an id of another shape."""
    try:
        t = int(id_time(call_id) * 1_000_000)
    except (ValueError, IndexError):
        return None
    if not call_id.startswith("call_") or len(call_id) != 31 or t <= 0:
        return None
    return t - margin_us, t + margin_us
