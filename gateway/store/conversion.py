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

import pyarrow as pa

from gateway.store import layout, quarantine
from gateway.store import table as tables
from gateway.store.rows import (
    Rejected,
    _reason,
    convert,
    group_by_table_and_date,
    parse_lines,
    redacted_line,
    to_table,
)


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


@dataclass
class Parsed:
    """One segment as the agent's WAL tail parsed, derived and built it (`gateway.agent.tail`):
    Arrow tables per ``(table, day)``, so the conversion neither reads nor parses it again."""

    groups: dict[tuple[str, str], list[pa.Table]] = field(default_factory=dict)
    rejected: list[tuple[int, str | None, str]] = field(default_factory=list)
    """Records that cannot become rows: ``(line number, table, reason)`` (quarantined)."""
    bad: list[tuple[int, bytes]] = field(default_factory=list)
    """Lines that did not parse (or a torn last line): ``(line number, line)``."""
    rows: int = 0
    lines: int = 0
    """Lines consumed so far."""
    nbytes: int = 0
    """Arrow bytes held."""
    complete: bool = True
    """False: something was not kept; the conversion reads the segment itself."""

    def add(
        self,
        rows: list[dict[str, Any]],
        positions: list[int],
        bad: list[tuple[int, bytes]],
        rejected: list[tuple[int, str | None, str]],
        lines: int,
    ) -> int:
        """Add one chunk of ``lines`` lines: its derived rows (at chunk line ``positions``), the lines
        that did not parse and the records that could not be derived; returns the Arrow bytes added."""
        base = self.lines
        failed: list[Rejected] = []
        added = 0
        for table, day, recs in group_by_table_and_date(rows, failed):
            arrow, ok = _derived_to_arrow(table, recs, failed)
            if arrow is not None:
                self.groups.setdefault((table, day), []).append(arrow)
                self.rows += len(ok)
                added += arrow.nbytes
        where = {id(r): base + n for r, n in zip(rows, positions, strict=True)} if failed else {}
        for rec, reason in failed:
            name = rec.get("_t")
            self.rejected.append((where[id(rec)], name if isinstance(name, str) else None, reason))
        self.rejected.extend((base + n, t, reason) for n, t, reason in rejected)
        self.bad.extend((base + n, line) for n, line in bad)
        self.lines += lines
        self.nbytes += added
        return added


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
    parsed: Parsed | None = None,
) -> Converted:
    """Convert ``seg`` (its first ``valid_len`` bytes when given) and remove it.

    With ``parsed`` (the agent's tail read, parsed and derived the whole segment: see
    `gateway.agent.tail`), its rows are used and the segment is read again only for the raw
    lines of records to quarantine. Raises `OSError` (the segment then stays, to be
    converted again) when a Parquet file or the quarantine cannot be written;
    `FileNotFoundError` when the segment is gone.
    """
    if parsed is not None:
        return _convert_parsed(log_dir, wal_dir, writer_id, seg, parsed)
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


def _convert_parsed(log_dir: str, wal_dir: str, writer_id: str, seg: str, parsed: Parsed) -> Converted:
    """`convert_segment` from the tail's tables: the segment is read again only for quarantined lines."""
    if not os.path.exists(seg):
        raise FileNotFoundError(seg)
    stem = stem_of_segment(seg)
    groups: dict[str, list[tuple[str, Any]]] = {}
    for (table, day), chunks in sorted(parsed.groups.items()):
        groups.setdefault(table, []).append(
            (day, chunks[0] if len(chunks) == 1 else pa.concat_tables(chunks))
        )
    out = Converted(corrupt=len(parsed.bad))
    out.files = tables.commit_segment(log_dir, stem, groups)
    entries = [quarantine.Entry(stem, n, None, "unparseable WAL line", line) for n, line in parsed.bad]
    if parsed.rejected:
        with open(seg, "rb") as f:
            lines = f.read().split(b"\n")
        entries.extend(quarantine.Entry(stem, n, t, reason, lines[n]) for n, t, reason in parsed.rejected)
    if entries:
        entries.sort(key=lambda e: e.line)
        quarantine.write(wal_dir, writer_id, entries)
    os.unlink(seg)
    out.rows = parsed.rows
    out.quarantined = len(entries)
    out.first_reason = entries[0].reason if entries else None
    return out


def _derived_to_arrow(
    table: str, rows: list[dict[str, Any]], rejected: list[Rejected]
) -> tuple[Any, list[dict[str, Any]]]:
    """`gateway.store.rows.convert` for rows derived already: the batch, or row by row if it fails."""
    try:
        return to_table(table, rows, derived=True), rows
    except Exception:  # some row does not fit the schema: find it, keep the others
        kept = []
        for row in rows:
            try:
                to_table(table, [row], derived=True)
            except Exception as exc:
                rejected.append((row, _reason(exc)))
                continue
            kept.append(row)
        return (to_table(table, kept, derived=True) if kept else None), kept


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
