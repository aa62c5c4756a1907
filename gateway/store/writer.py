"""LogWriter: the only code that writes the call log.

Durability contract:

1. The request path calls `LogWriter.append`, which serialises the record and does one
   plain ``write()`` to the current WAL segment (no fsync): once it returns, a killed
   process loses nothing, because the kernel holds the bytes.
2. A background thread rotates the segment every ``flush_interval`` seconds, turns the
   closed segment into Parquet files partitioned by table and date
   (``<log_dir>/<table>/date=YYYY-MM-DD/<segment>.parquet``, zstd), fsyncs them,
   renames them into place and only then deletes the segment.
3. Parquet file names are derived from the segment name, so converting a segment twice
   (a crash between the rename and the delete) overwrites the same files: on start,
   leftover segments of dead writers are replayed exactly once.
4. Each writer (one per worker process) owns its segments through an ``flock`` on
   ``<wal_dir>/<writer_id>.lock``; a starting writer adopts the segments whose lock
   nobody holds.

Nothing is dropped silently: when the WAL cannot be written (disk full, directory gone)
records wait in a bounded memory queue and are retried; past its bound they are
dropped, counted by reason in `WriterStats.dropped` and logged, and `healthy` turns
false so that ``/readyz`` reports the store degraded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.store import layout
from gateway.store.rows import derive, group_by_table_and_date, parse_lines, to_table

log = logging.getLogger("shadowtune.store")


@dataclass
class WriterStats:
    """Counters an operator sees (metrics, ``logs status``, ``/readyz``)."""

    appended: int = 0
    flushed_rows: int = 0
    parquet_files: int = 0
    corrupt_records: int = 0
    replayed_segments: int = 0
    wal_errors: int = 0
    flush_errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
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
    ) -> None:
        self.log_dir = log_dir
        self.wal_dir = wal_dir or layout.default_wal_dir(log_dir)
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.max_backlog_bytes = max_backlog_bytes
        self.compact_interval = compact_interval
        self.retention_days = retention_days
        self.writer_id = writer_id or f"{int(time.time() * 1000):013d}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._seq = 0
        self._seg_bytes = 0
        self._seg_records = 0
        self._closed: deque[str] = deque()  # closed segments waiting for conversion
        self._pending: deque[bytes] = deque()  # lines the WAL could not take yet
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._last_compact = time.monotonic()
        self.listeners: list[Callable[[str, list[dict[str, Any]]], None]] = []
        """Called in the writer thread with each batch of flushed (derived) records: telemetry hooks in here."""

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Take the writer lock, replay dead writers' segments, open a segment, start the thread."""
        try:
            os.makedirs(self.wal_dir, exist_ok=True)
            layout.ensure_store(self.log_dir)
            self._lock_fd = os.open(
                os.path.join(self.wal_dir, f"{self.writer_id}.lock"), os.O_CREAT | os.O_RDWR
            )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.replay()
            self._open_segment()
        except OSError as exc:
            self._error(f"cannot open the call log at {self.log_dir}: {exc}")
        self._thread = threading.Thread(target=self._run, name="shadowtune-log-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush everything to Parquet and release the lock."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        self._remove_current_if_empty()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.wal_dir, f"{self.writer_id}.lock"))
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- request path -------------------------------------------------------------------
    def append(self, table: str, record: dict[str, Any]) -> None:
        """Append one record to the WAL: one ``write()``, never blocks on the disk's flush."""
        record["_t"] = table
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            self.stats.appended += 1
            if self._fd is not None and not self._pending:
                try:
                    os.write(self._fd, line)
                    self._seg_bytes += len(line)
                    self._seg_records += 1
                    return
                except OSError as exc:
                    self.stats.wal_errors += 1
                    self.stats.last_error = f"WAL write failed: {exc}"
            self._queue_pending(line)

    def _queue_pending(self, line: bytes) -> None:
        if len(self._pending) >= self.max_pending:
            self._drop("queue_full", 1)
            return
        if not self._pending:
            log.error(
                "call log: %s; holding records in memory (max %d)", self.stats.last_error, self.max_pending
            )
        self._pending.append(line)
        self._wake.set()

    def _drop(self, reason: str, n: int) -> None:
        total = self.stats.dropped.get(reason, 0) + n
        self.stats.dropped[reason] = total
        if total & (total - 1) == 0:  # log at 1, 2, 4, 8, ... so a long outage does not flood the log
            log.error("call log: dropped %d record(s) so far: %s (%s)", total, reason, self.stats.last_error)

    # -- state --------------------------------------------------------------------------
    @property
    def backlog_bytes(self) -> int:
        """Bytes accepted but not yet in Parquet (closed segments, current one, memory queue)."""
        total = self._seg_bytes + sum(len(x) for x in self._pending)
        for seg in list(self._closed):
            with contextlib.suppress(OSError):
                total += os.path.getsize(seg)
        return total

    @property
    def healthy(self) -> bool:
        """False while records wait in memory, were dropped recently, or the backlog is too big."""
        return (
            self._fd is not None
            and not self._pending
            and self.stats.flush_errors == 0
            and self.backlog_bytes <= self.max_backlog_bytes
        )

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "writer_id": self.writer_id,
            "healthy": self.healthy,
            "appended": s.appended,
            "flushed_rows": s.flushed_rows,
            "parquet_files": s.parquet_files,
            "pending_in_memory": len(self._pending),
            "backlog_bytes": self.backlog_bytes,
            "closed_segments": len(self._closed),
            "corrupt_records": s.corrupt_records,
            "replayed_segments": s.replayed_segments,
            "wal_errors": s.wal_errors,
            "flush_errors": s.flush_errors,
            "dropped": dict(s.dropped),
            "last_error": s.last_error,
            "last_flush_at": s.last_flush_at,
        }

    # -- segments -----------------------------------------------------------------------
    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.wal_dir, f"{self.writer_id}.{seq:08d}{layout.WAL_SUFFIX}")

    def _open_segment(self) -> None:
        self._seg_records = 0
        self._seq += 1
        self._fd = os.open(self._segment_path(self._seq), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        self._seg_bytes = 0

    def _rotate(self) -> None:
        """Close the current segment (if it has data) and open the next one."""
        with self._lock:
            if self._fd is None:
                try:
                    os.makedirs(self.wal_dir, exist_ok=True)  # the log may be back after a failed start
                    if self._lock_fd is None:
                        lock_path = os.path.join(self.wal_dir, f"{self.writer_id}.lock")
                        self._lock_fd = os.open(lock_path, os.O_CREAT | os.O_RDWR)
                        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._open_segment()
                except OSError as exc:
                    self.stats.last_error = f"WAL open failed: {exc}"
                    return
            if self._fd is not None and self._segment_deleted():
                # someone removed the WAL (the log directory) under us: what it held is gone
                self._drop("wal_deleted", self._seg_records)
                os.close(self._fd)
                self._fd = None
                if self._lock_fd is not None:  # the lock file went with the directory
                    os.close(self._lock_fd)
                    self._lock_fd = None
                self._seg_bytes = self._seg_records = 0
                return
            self._drain_pending_locked()
            if self._seg_bytes == 0 or self._fd is None:
                return
            old_fd, old_path = self._fd, self._segment_path(self._seq)
            try:
                self._open_segment()
            except OSError as exc:
                self.stats.last_error = f"WAL rotate failed: {exc}"
                return
            os.close(old_fd)
            self._closed.append(old_path)

    def _segment_deleted(self) -> bool:
        assert self._fd is not None
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def _drain_pending_locked(self) -> None:
        while self._pending and self._fd is not None:
            line = self._pending[0]
            try:
                os.write(self._fd, line)
            except OSError as exc:
                self.stats.last_error = f"WAL write failed: {exc}"
                return
            self._seg_bytes += len(line)
            self._seg_records += 1
            self._pending.popleft()
        if not self._pending:
            self.stats.last_error = None if self.stats.flush_errors == 0 else self.stats.last_error

    def _remove_current_if_empty(self) -> None:
        path = self._segment_path(self._seq)
        with contextlib.suppress(OSError):
            if os.path.getsize(path) == 0:
                os.unlink(path)

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
            self._rotate()
            rows = 0
            while self._closed:
                seg = self._closed[0]
                try:
                    rows += self._convert_segment(seg, strict_tail=True)
                except FileNotFoundError:
                    self._drop("wal_segment_deleted", 1)  # a closed segment removed before its conversion
                    self._closed.popleft()
                    continue
                except OSError as exc:
                    self.stats.flush_errors += 1
                    self._error(f"cannot write Parquet for {os.path.basename(seg)}: {exc}")
                    break
                self._closed.popleft()
                self.stats.flush_errors = 0
            self.stats.last_flush_at = time.time()
            return rows

    def _convert_segment(self, seg: str, *, strict_tail: bool) -> int:
        with open(seg, "rb") as f:
            data = f.read()
        records, corrupt = parse_lines(data, strict_tail=strict_tail)
        if corrupt:
            self.stats.corrupt_records += corrupt
            log.warning("call log: skipped %d corrupt record(s) in %s", corrupt, os.path.basename(seg))
        stem = os.path.basename(seg)[: -len(layout.WAL_SUFFIX)]
        done: list[tuple[str, list[dict[str, Any]]]] = []
        for table, day, recs in group_by_table_and_date(records):
            rows = [derive(table, r) for r in recs]
            layout.write_parquet(self.log_dir, table, day, stem, to_table(table, rows, derived=True))
            self.stats.parquet_files += 1
            done.append((table, rows))
        os.unlink(seg)
        for table, rows in done:
            for listener in self.listeners:
                try:
                    listener(table, rows)
                except Exception as exc:  # a listener must never stop the log
                    log.warning("call log listener %r failed: %r", listener, exc)
        self.stats.flushed_rows += len(records)
        return len(records)

    def convert_segment(self, seg: str) -> int:
        """Convert one closed WAL segment (any writer's) to Parquet, then delete it; returns its rows.

        The log agent's entry point (`gateway.agent.core`). Raises ``OSError`` when the
        store refuses the write (the segment stays, to be tried again) and
        ``FileNotFoundError`` when the segment is already gone.
        """
        return self._convert_segment(seg, strict_tail=True)

    def housekeeping(self) -> None:
        """Compaction and retention, when their interval has passed (the log agent calls this)."""
        self._housekeeping()

    def replay(self) -> int:
        """Convert the segments of writers that are gone (exactly once); returns rows replayed."""
        rows = 0
        for owner, segments in layout.wal_segments_by_owner(self.wal_dir).items():
            if owner == self.writer_id:
                continue
            lock_path = os.path.join(self.wal_dir, f"{owner}.lock")
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer owns these
                for seg in segments:
                    with contextlib.suppress(FileNotFoundError):
                        rows += self._convert_segment(seg, strict_tail=True)
                        self.stats.replayed_segments += 1
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
            finally:
                os.close(fd)
        if rows:
            log.info("call log: replayed %d record(s) left by earlier writers", rows)
        return rows

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.compact_interval and now - self._last_compact >= self.compact_interval:
            self._last_compact = now
            layout.compact(self.log_dir, self.wal_dir)
            if self.retention_days:
                cutoff = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=self.retention_days)
                layout.prune(self.log_dir, cutoff)

    def _error(self, message: str) -> None:
        self.stats.last_error = message
        log.error("call log: %s", message)

    def __enter__(self) -> LogWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
