"""One closed WAL segment → Parquet files (+ quarantine entries), then the segment removed.

The unit of work of the log writer (and of whatever process owns conversion). A segment
is converted whole or not at all: its rows go into the tables in one commit per table that
records the segment as a Delta app transaction (`gateway.store.table`), so converting it
again adds nothing, quarantine entries are keyed by segment and
line, and the segment is removed last, so a failure or a crash at any point leaves it to
be converted again with nothing counted twice (the caller counts from the returned
`Converted`, only once it returned).

A record that cannot become a row — a line that does not parse, an unknown table, a
``ts`` that cannot be read, a value that does not fit its column — goes to the
quarantine (`gateway.store.quarantine`) and never keeps the other records of its
segment out of the log (`gateway.store.rows.convert` falls back to record by record).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from gateway.store import layout, quarantine
from gateway.store import table as tables
from gateway.store.rows import Rejected, convert, group_by_table_and_date, parse_lines, redacted_line


@dataclass
class Converted:
    """What converting one segment did."""

    rows: int = 0
    """Records now Parquet rows."""
    files: int = 0
    corrupt: int = 0
    """Lines that did not parse (quarantined, included in ``quarantined``)."""
    quarantined: int = 0
    first_reason: str | None = None
    batches: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    """``(table, derived rows)`` per Parquet file written, for the writer's listeners."""


def stem_of_segment(seg: str) -> str:
    return os.path.basename(seg)[: -len(layout.WAL_SUFFIX)]


def convert_segment(
    log_dir: str,
    wal_dir: str,
    writer_id: str,
    seg: str,
    *,
    strict_tail: bool = True,
    valid_len: int | None = None,
) -> Converted:
    """Convert ``seg`` (its first ``valid_len`` bytes when given) and remove it.

    Raises `OSError` (the segment then stays, to be converted again) when a Parquet file
    or the quarantine cannot be written; `FileNotFoundError` when the segment is gone.
    """
    with open(seg, "rb") as f:
        data = f.read()
    if valid_len is not None:
        data = data[:valid_len]
    bad: list[tuple[int, bytes]] = []
    positions: list[int] = []
    records, corrupt = parse_lines(data, strict_tail=strict_tail, bad=bad, positions=positions)
    stem = stem_of_segment(seg)
    rejected: list[Rejected] = []
    out = Converted(corrupt=corrupt)
    groups: dict[str, list[tuple[str, Any]]] = {}
    for table, day, recs in group_by_table_and_date(records, rejected):
        arrow, rows = convert(table, recs, rejected)
        if arrow is None:
            continue
        groups.setdefault(table, []).append((day, arrow))
        out.batches.append((table, rows))
    # one atomic commit per table, recorded as (writer id, segment seq): exactly once across crashes
    out.files = tables.commit_segment(log_dir, stem, groups)
    entries = [quarantine.Entry(stem, n, None, "unparseable WAL line", line) for n, line in bad]
    if rejected:
        where = {id(r): n for r, n in zip(records, positions, strict=True)}
        lines = data.split(b"\n")
        for rec, reason in rejected:
            n = where[id(rec)]
            name = rec.get("_t")
            line = redacted_line(rec, lines[n])
            entries.append(quarantine.Entry(stem, n, name if isinstance(name, str) else None, reason, line))
    if entries:
        entries.sort(key=lambda e: e.line)
        quarantine.write(wal_dir, writer_id, entries)
    os.unlink(seg)
    out.rows = len(records) - len(rejected)
    out.quarantined = len(entries)
    out.first_reason = entries[0].reason if entries else None
    return out


def quarantine_segment(wal_dir: str, writer_id: str, seg: str, reason: str) -> int:
    """Every line of a segment that cannot be converted at all, to the quarantine; returns the count."""
    with open(seg, "rb") as f:
        data = f.read()
    stem = stem_of_segment(seg)
    entries = [
        quarantine.Entry(stem, n, None, reason, line) for n, line in enumerate(data.split(b"\n")) if line
    ]
    if entries:
        quarantine.write(wal_dir, writer_id, entries)
    os.unlink(seg)
    return len(entries)
