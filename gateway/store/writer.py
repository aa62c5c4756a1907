"""LogWriter: the only code that writes the call log.

Durability contract:

1. `LogWriter.append` writes through a `gateway.store.wal.WalAppender` (the request
   workers' WAL writer): the record is serialised and written with one plain ``write()``
   to the current WAL segment (no fsync); once it returns, a killed process loses
   nothing, because the kernel holds the bytes. Whole lines, short-write retry and
   ``wal_fsync_ms`` group commit are the appender's (see `gateway.store.wal`).
2. A background thread rotates the segment every ``flush_interval`` seconds, turns the
   closed segment into Parquet files partitioned by table and date
   (``<log_dir>/<table>/date=YYYY-MM-DD/<segment>.parquet``, zstd), commits them to the
   table's Delta log (`gateway.store.table`) and only then deletes the segment.
3. The commit records the segment as a Delta app transaction (writer id, segment seq), so
   a segment converted again after a crash between the commit and the delete adds
   nothing: on start, leftover segments of dead writers are replayed exactly once.
4. Each writer (one per worker process) owns its segments through an ``flock`` on
   ``<wal_dir>/<writer_id>.lock``; a starting writer adopts the segments whose lock
   nobody holds.

5. A record that cannot become a row (see `gateway.store.quarantine`) is quarantined,
   never retried: its segment is converted record by record, the others go to Parquet.
   A segment that still fails (I/O) stays and is retried; one that keeps failing for
   another reason is quarantined whole. Replay at start never raises: a segment it
   cannot convert now is adopted and retried by the background thread.

Nothing is dropped silently: when the WAL cannot be written (disk full, directory gone)
records wait in a bounded memory queue and are retried; past its bound they are
dropped, counted by reason in `WriterStats.dropped` and logged, and `healthy` turns
false so that ``/readyz`` reports the store degraded. Every record appended is, in the
end, a Parquet row or counted once in ``dropped`` (``queue_full``, ``wal_deleted``,
``quarantined``, ...).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.store import conversion, layout, quarantine
from gateway.store import table as tables
from gateway.store.conversion import Parsed
from gateway.store.wal import WalAppender, WalStats

log = logging.getLogger("shadowtune.store")

_MAX_FAILURES = 3
# small Parquet files written since the last compaction that bring the next one forward: each read
# (review pages, `logs`) opens every file, and 137 one-second files made a call page 10-20x slower
COMPACT_AFTER_FILES = 64
"""Conversions of one segment that may fail for a reason other than I/O before it is quarantined."""


@dataclass
class WriterStats(WalStats):
    """Counters an operator sees (metrics, ``logs status``, ``/readyz``): the WAL's and the conversion's."""

    flushed_rows: int = 0
    parquet_files: int = 0
    corrupt_records: int = 0
    replayed_segments: int = 0
    flush_errors: int = 0
    last_flush_at: float | None = None


class LogWriter:
    """Append-only writer of the call log (see the module docstring for the contract)."""

    def __init__(
        self,
        log_dir: str,
        *,
        wal_dir: str | None = None,
        flush_interval: float = 1.0,
        max_pending: int = 100_000,
        max_backlog_bytes: int = 256 * 2**20,
        compact_interval: float = 600.0,
        retention_days: int | None = None,
        writer_id: str | None = None,
        wal_fsync_ms: float = 0.0,
        create_bucket: bool = False,
    ) -> None:
        self.log_dir = log_dir
        self.wal_dir = wal_dir or layout.default_wal_dir(log_dir)
        self.flush_interval = flush_interval
        self.max_backlog_bytes = max_backlog_bytes
        self.compact_interval = compact_interval
        self.retention_days = retention_days
        self.create_bucket = create_bucket
        self.stats = WriterStats()
        self.wal = WalAppender(
            self.wal_dir,
            max_pending=max_pending,
            writer_id=writer_id,
            wal_fsync_ms=wal_fsync_ms,
            stats=self.stats,
            rotate_thread=False,  # this writer's flush thread rotates, then converts
        )
        self.writer_id = self.wal.writer_id
        self._closed: deque[str] = deque()  # closed segments waiting for conversion
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.wal.on_pending = self._wake.set  # a record waits in memory: retry soon
        self._flush_lock = threading.Lock()
        self._last_compact = time.monotonic()
        self._files_at_compact = 0  # stats.parquet_files at the last compaction
        self._failures: dict[str, int] = {}  # segment -> conversions failed for a non-I/O reason
        self._adopted: dict[str, int] = {}  # dead owner -> its lock fd, held until its segments are done
        self.listeners: list[Callable[[str, list[dict[str, Any]]], None]] = []
        """Called in the writer thread with each batch of flushed (derived) records: telemetry hooks in here."""

    @property
    def max_pending(self) -> int:
        return self.wal.max_pending

    @property
    def wal_fsync_ms(self) -> float:
        return self.wal.wal_fsync_ms

    @property
    def _sync_thread(self) -> threading.Thread | None:
        return self.wal._sync_thread

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Take the writer lock, replay dead writers' segments, open a segment, start the thread."""
        try:
            os.makedirs(self.wal_dir, exist_ok=True)
            layout.ensure_store(self.log_dir, create_bucket=self.create_bucket, wal_dir=self.wal_dir)
            self.wal.acquire()
        except OSError as exc:
            self.wal.start()  # no segment: appends wait in memory, the flush thread retries the WAL
            self._error(f"cannot open the call log at {self.log_dir}: {exc}")
        else:
            self.replay()  # never raises: what it cannot convert now is retried in the background
            try:
                # a reused writer id continues after its committed segments (exactly-once is by seq)
                self.wal.seq = max(self.wal.seq, tables.committed_seq(self.log_dir, self.writer_id))
            except OSError as exc:
                self._error(f"cannot open the call log at {self.log_dir}: {exc}")
            self.wal.start()
            if not self.wal.is_open:
                self._error(f"cannot open the call log at {self.log_dir}: {self.stats.last_error}")
        self._thread = threading.Thread(target=self._run, name="shadowtune-log-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush everything to Parquet and release the lock."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        self.wal.close()  # syncs, closes (and removes when empty) the current segment, releases the lock
        for owner in list(self._adopted):  # segments still unconverted: the next start retries them
            os.close(self._adopted.pop(owner))

    # -- request path -------------------------------------------------------------------
    def append(self, table: str, record: dict[str, Any]) -> None:
        """Append one record to the WAL: one ``write()``, never blocks on the disk's flush."""
        self.wal.append(table, record)

    def sync_wal(self) -> None:
        """``fdatasync`` the current segment if anything was written to it since the last sync."""
        self.wal.sync()

    def _drop(self, reason: str, n: int) -> None:
        self.wal.count_dropped(reason, n)

    # -- state --------------------------------------------------------------------------
    @property
    def backlog_bytes(self) -> int:
        """Bytes accepted but not yet in Parquet (closed segments, current one, memory queue)."""
        total = self.wal.backlog_bytes
        for seg in list(self._closed):
            with contextlib.suppress(OSError):
                total += os.path.getsize(seg)
        return total

    @property
    def healthy(self) -> bool:
        """False while records wait in memory, were dropped recently, or the backlog is too big."""
        return (
            self.wal.healthy and self.stats.flush_errors == 0 and self.backlog_bytes <= self.max_backlog_bytes
        )

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            **self.wal.status(),
            "healthy": self.healthy,
            "backlog_bytes": self.backlog_bytes,
            "flushed_rows": s.flushed_rows,
            "parquet_files": s.parquet_files,
            "closed_segments": len(self._closed),
            "corrupt_records": s.corrupt_records,
            "replayed_segments": s.replayed_segments,
            "flush_errors": s.flush_errors,
            "quarantined": s.dropped.get("quarantined", 0),
            "quarantine_dir": quarantine.directory(self.wal_dir),
            "last_flush_at": s.last_flush_at,
        }

    # -- background ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
                self._housekeeping()
            except Exception as exc:  # the writer thread must survive anything
                self._error(f"writer thread: {exc!r}")

    def flush(self) -> int:
        """Rotate and convert every closed segment to Parquet now; returns rows written."""
        with self._flush_lock:
            self._closed.extend(self.wal.rotate())
            rows = 0
            while self._closed:
                seg = self._closed[0]
                try:
                    rows += self._convert_segment(seg, strict_tail=True)
                except FileNotFoundError:
                    self._drop("wal_segment_deleted", 1)  # a closed segment removed before its conversion
                except OSError as exc:  # the disk or the object store: the segment stays, retried
                    self.stats.flush_errors += 1
                    self._error(f"cannot write Parquet for {os.path.basename(seg)}: {exc}")
                    break
                except Exception as exc:  # not I/O: never let one segment keep the others out
                    failures = self._failures[seg] = self._failures.get(seg, 0) + 1
                    self._error(f"cannot convert {os.path.basename(seg)} ({failures}): {exc!r}")
                    if failures < _MAX_FAILURES:
                        self.stats.flush_errors += 1
                        break
                    try:
                        n = conversion.quarantine_segment(
                            self.wal_dir, self.writer_id, seg, f"segment conversion failed: {exc!r}"
                        )
                        self._drop("quarantined", n)
                    except OSError as err:
                        self.stats.flush_errors += 1
                        self._error(f"cannot quarantine {os.path.basename(seg)}: {err}")
                        break
                self._closed.popleft()
                self._failures.pop(seg, None)
                self.wal.valid_len.pop(seg, None)
                self.stats.flush_errors = 0
            self._release_adopted()
            self.stats.last_flush_at = time.time()
            return rows

    def _convert_segment(self, seg: str, *, strict_tail: bool, parsed: Parsed | None = None) -> int:
        """Segment → Parquet (+ quarantine), then removed; its records are counted once, here."""
        done = conversion.convert_segment(
            self.log_dir,
            self.wal_dir,
            self.writer_id,
            seg,
            strict_tail=strict_tail,
            valid_len=self.wal.valid_len.get(seg),
            parsed=parsed,
        )
        return self.count_converted(seg, done)

    def count_converted(self, seg: str, done: conversion.Converted) -> int:
        """Count what converting ``seg`` did (once, here; also for a conversion done in another
        process: `gateway.agent.convert_process`); returns its rows."""
        self.stats.parquet_files += done.files
        if done.corrupt:
            self.stats.corrupt_records += done.corrupt
            log.warning("call log: skipped %d corrupt record(s) in %s", done.corrupt, os.path.basename(seg))
        if done.quarantined:
            self._drop("quarantined", done.quarantined)
            log.warning(
                "call log: quarantined %d record(s) of %s in %s (first: %s)",
                done.quarantined,
                os.path.basename(seg),
                quarantine.directory(self.wal_dir),
                done.first_reason,
            )
        for table, rows in done.batches:
            for listener in self.listeners:
                try:
                    listener(table, rows)
                except Exception as exc:  # a listener must never stop the log
                    log.warning("call log listener %r failed: %r", listener, exc)
        self.stats.flushed_rows += done.rows
        return done.rows

    def convert_segment(self, seg: str, parsed: Parsed | None = None) -> int:
        """Convert one closed WAL segment (any writer's) to Parquet, then delete it; returns its rows.

        The log agent's entry point (`gateway.agent.core`). Raises ``OSError`` when the
        store refuses the write (the segment stays, to be tried again) and
        ``FileNotFoundError`` when the segment is already gone. ``parsed``: the segment's rows
        as the agent's WAL tail parsed and derived them (the segment is not parsed again).
        """
        return self._convert_segment(seg, strict_tail=True, parsed=parsed)

    def housekeeping(self) -> bool:
        """Compaction and retention, when their interval has passed (the log agent calls this);
        True when they ran."""
        return self._housekeeping()

    def replay(self) -> int:
        """Convert the segments of writers that are gone (exactly once); returns rows replayed.

        Never raises: a segment it cannot convert now is adopted (its owner's lock held)
        and retried by the background thread.
        """
        rows = 0
        try:
            owners = layout.wal_segments_by_owner(self.wal_dir)
        except OSError as exc:
            self._error(f"cannot list the WAL: {exc}")
            return 0
        for owner, segments in owners.items():
            if owner == self.writer_id or owner in self._adopted:
                continue
            lock_path = os.path.join(self.wal_dir, f"{owner}.lock")
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_RDWR)
            except OSError as exc:
                self._error(f"cannot replay {owner}'s segments: {exc}")
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live writer owns these
            left = []
            for seg in segments:
                try:
                    rows += self._convert_segment(seg, strict_tail=True)
                    self.stats.replayed_segments += 1
                except FileNotFoundError:
                    continue
                except Exception as exc:  # the gateway starts anyway; the writer thread retries it
                    self._error(f"cannot replay {os.path.basename(seg)} now, will retry: {exc!r}")
                    left.append(seg)
            if left:
                self._adopted[owner] = fd
                self._closed.extend(left)
                continue
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            os.close(fd)
        if rows:
            log.info("call log: replayed %d record(s) left by earlier writers", rows)
        return rows

    def _release_adopted(self) -> None:
        """Drop the locks of dead writers whose adopted segments are all converted."""
        for owner in list(self._adopted):
            prefix = os.path.join(self.wal_dir, owner + ".")
            if any(seg.startswith(prefix) for seg in self._closed):
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.wal_dir, f"{owner}.lock"))
            os.close(self._adopted.pop(owner))

    def _housekeeping(self) -> bool:
        now = time.monotonic()
        due = now - self._last_compact >= self.compact_interval
        many = self.stats.parquet_files - self._files_at_compact >= COMPACT_AFTER_FILES
        if self.compact_interval and (due or many):
            if due:  # the interval's own round, with retention
                self._last_compact = now
            self._files_at_compact = self.stats.parquet_files
            layout.compact(self.log_dir, self.wal_dir)
            if due and self.retention_days:
                cutoff = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=self.retention_days)
                layout.prune(self.log_dir, cutoff)
            return True
        return False

    def _error(self, message: str) -> None:
        self.stats.last_error = message
        log.error("call log: %s", message)

    def __enter__(self) -> LogWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
