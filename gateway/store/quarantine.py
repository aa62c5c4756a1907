"""The quarantine: WAL records that cannot become rows, kept with the reason, never lost.

A record the writer cannot convert (a line that does not parse, an unknown table, a
``ts`` it cannot read, a value that does not fit its column even after
`gateway.protocol.record.CallRecord.to_wal`) does not stop the records around it: it is
written here and counted (``dropped["quarantined"]`` or ``dropped["corrupt"]``), and the
rest of its segment goes to Parquet.

::

    <wal_dir>/quarantine/<writer_id>.ndjson

One JSON object per line::

    {"at": "2026-12-01T06:40:24.123456+00:00", "writer_id": "...", "segment": "<stem>",
     "line": 17, "table": "calls", "reason": "ArrowTypeError: ...", "raw": "<the WAL line>"}

``raw`` is the record's line as it was in the WAL (``raw_b64`` instead when the line is
not UTF-8). ``segment`` and ``line`` identify the record: a segment converted twice (a
crash between the quarantine write and the segment's removal) writes the same entries
again, and `scan` counts each record once. The file is fsynced before the segment it came
from is removed, so a quarantined record survives a machine crash like a Parquet row.
``shadowtune logs status`` and ``/healthz`` report what is here; an operator fixes a
record by hand and appends it again (or deletes the file once read).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import orjson

DIRNAME = "quarantine"


@dataclass(slots=True)
class Entry:
    """One quarantined record: where it was, why, and its line."""

    segment: str
    line: int
    table: str | None
    reason: str
    raw: bytes


def directory(wal_dir: str) -> str:
    return os.path.join(wal_dir, DIRNAME)


def write(wal_dir: str, writer_id: str, entries: list[Entry]) -> str:
    """Append ``entries`` to this writer's quarantine file, durably; returns its path."""
    folder = directory(wal_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{writer_id}.ndjson")
    at = dt.datetime.now(dt.UTC).isoformat()
    out = bytearray()
    for e in entries:
        obj: dict[str, Any] = {
            "at": at,
            "writer_id": writer_id,
            "segment": e.segment,
            "line": e.line,
            "table": e.table,
            "reason": e.reason,
        }
        try:
            obj["raw"] = e.raw.decode("utf-8")
        except UnicodeDecodeError:
            obj["raw_b64"] = base64.b64encode(e.raw).decode()
        out += orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    # 0600 like the WAL: a line that does not parse is kept unredacted
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        start = os.fstat(fd).st_size
        try:
            _write_all(fd, bytes(out))
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):  # leave no torn entry behind: retried whole
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(28, "No space left on device (short write)")
        view = view[n:]


def scan(wal_dir: str) -> dict[str, Any]:
    """What the quarantine holds: distinct records, by reason, the files and the latest entry."""
    folder = directory(wal_dir)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".ndjson"))
    except FileNotFoundError:
        names = []
    seen: set[tuple[str, int]] = set()
    reasons: dict[str, int] = {}
    latest: dict[str, Any] | None = None
    size = 0
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        size += len(data)
        for line in data.splitlines():
            try:
                entry = orjson.loads(line)
                key = (str(entry["segment"]), int(entry["line"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if key in seen:
                continue
            seen.add(key)
            kind = str(entry.get("reason", "")).split(":", 1)[0]
            reasons[kind] = reasons.get(kind, 0) + 1
            if latest is None or str(entry.get("at", "")) >= str(latest.get("at", "")):
                latest = {k: entry.get(k) for k in ("at", "segment", "line", "table", "reason")}
    return {
        "records": len(seen),
        "by_reason": reasons,
        "files": [os.path.join(folder, n) for n in names],
        "bytes": size,
        "latest": latest,
    }


def scrub(value: Any) -> Any:
    """A copy of ``value`` that orjson can write: strings made valid UTF-8, big ints and objects as text."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {str(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if (
        value is None
        or isinstance(value, bool | float)
        or (isinstance(value, int) and -(2**63) <= value < 2**64)
    ):
        return value
    return repr(value)


def salvage(
    wal_dir: str, writer_id: str, table: str, record: dict[str, Any], exc: Exception, seq: int
) -> tuple[bytes | None, str | None, str | None]:
    """A record orjson could not write (``exc``), for a WAL writer's ``append``.

    Returns ``(line, None, None)`` when its strings, scrubbed, make a line; else the record is
    quarantined and the result is ``(None, drop reason, error)``: ``quarantined``, or
    ``unserializable`` with the error when even the quarantine cannot be written.
    """
    try:
        return orjson.dumps(scrub(record), option=orjson.OPT_APPEND_NEWLINE), None, None
    except TypeError:
        pass
    entry = Entry("append", seq, table, f"not JSON: {exc}", repr(record).encode())
    try:
        write(wal_dir, writer_id, [entry])
    except OSError as err:
        return None, "unserializable", f"quarantine write failed: {err}"
    return None, "quarantined", None
