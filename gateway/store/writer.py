"""LogWriter: the only code that writes the call log.

Durability contract:

1. The request path calls `LogWriter.append`, which serialises the record and does one
   plain ``write()`` to the current WAL segment (no fsync): once it returns, a killed
   process loses nothing, because the kernel holds the bytes. A line goes in whole or
   not at all: a short write is completed, and when the rest cannot be written (disk
   full) the segment is cut back to the line's start and the line is retried whole
   later, so a torn line is never left in the middle of a segment.
   With ``wal_fsync_ms`` set, a background thread also calls ``fdatasync`` on the segment
   every ``wal_fsync_ms`` when something was written (group commit: one sync covers every
   record appended since the last one), so a machine crash loses at most that window;
   the request path never waits for it.
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
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.store import conversion, layout, quarantine
from gateway.store import table as tables

log = logging.getLogger("shadowtune.store")

_MAX_FAILURES = 3
# small Parquet files written since the last compaction that bring the next one forward: each read
# (review pages, `logs`) opens every file, and 137 one-second files made a call page 10-20x slower
COMPACT_AFTER_FILES = 64
"""Conversions of one segment that may fail for a reason other than I/O before it is quarantined."""


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
    short_writes: int = 0
    wal_fsyncs: int = 0
    wal_fsync_s: float = 0.0
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
        wal_fsync_ms: float = 0.0,
        create_bucket: bool = False,
    ) -> None:
        self.log_dir = log_dir
        self.wal_dir = wal_dir or layout.default_wal_dir(log_dir)
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.max_backlog_bytes = max_backlog_bytes
        self.compact_interval = compact_interval
        self.retention_days = retention_days
        self.wal_fsync_ms = wal_fsync_ms
        self.create_bucket = create_bucket
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
        self._files_at_compact = 0  # stats.parquet_files at the last compaction
        self._unsynced = False  # bytes in the current segment since the last fdatasync
        self._dir_unsynced = False  # a segment created since the last directory fsync
        self._valid_len: dict[str, int] = {}  # closed segments whose tail could not be cut back
        self._failures: dict[str, int] = {}  # segment -> conversions failed for a non-I/O reason
        self._adopted: dict[str, int] = {}  # dead owner -> its lock fd, held until its segments are done
        self._sync_thread: threading.Thread | None = None
        self.listeners: list[Callable[[str, list[dict[str, Any]]], None]] = []
        """Called in the writer thread with each batch of flushed (derived) records: telemetry hooks in here."""

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Take the writer lock, replay dead writers' segments, open a segment, start the thread."""
        try:
            os.makedirs(self.wal_dir, exist_ok=True)
            layout.ensure_store(self.log_dir, create_bucket=self.create_bucket, wal_dir=self.wal_dir)
            self._lock_fd = os.open(
                os.path.join(self.wal_dir, f"{self.writer_id}.lock"), os.O_CREAT | os.O_RDWR
            )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._error(f"cannot open the call log at {self.log_dir}: {exc}")
        else:
            self.replay()  # never raises: what it cannot convert now is retried in the background
            try:
                # a reused writer id continues after its committed segments (exactly-once is by seq)
                self._seq = max(self._seq, tables.committed_seq(self.log_dir, self.writer_id))
                self._open_segment()
            except OSError as exc:
                self._error(f"cannot open the call log at {self.log_dir}: {exc}")
        self._thread = threading.Thread(target=self._run, name="shadowtune-log-writer", daemon=True)
        self._thread.start()
        if self.wal_fsync_ms > 0:
            self._sync_thread = threading.Thread(
                target=self._sync_loop, name="shadowtune-wal-fsync", daemon=True
            )
            self._sync_thread.start()

    def close(self) -> None:
        """Flush everything to Parquet and release the lock."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=30)
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
        for owner in list(self._adopted):  # segments still unconverted: the next start retries them
            os.close(self._adopted.pop(owner))

    # -- request path -------------------------------------------------------------------
    def append(self, table: str, record: dict[str, Any]) -> None:
        """Append one record to the WAL: one ``write()``, never blocks on the disk's flush."""
        record["_t"] = table
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as exc:  # not JSON (a surrogate, an int over 64 bits, an object)
            salvaged = self._salvage(table, record, exc)
            if salvaged is None:
                return
            line = salvaged
        with self._lock:
            self.stats.appended += 1
            if self._fd is not None and not self._pending:
                try:
                    self._write_locked(line)
                    return
                except OSError as exc:
                    self.stats.wal_errors += 1
                    self.stats.last_error = f"WAL write failed: {exc}"
            self._queue_pending(line)

    def _write_locked(self, line: bytes) -> None:
        """Write one whole line to the current segment, or raise `OSError` having written none of it."""
        assert self._fd is not None
        n = os.write(self._fd, line)
        if n != len(line):
            self._finish_short_write(line, n)
        self._seg_bytes += len(line)
        self._seg_records += 1
        self._unsynced = True

    def _finish_short_write(self, line: bytes, done: int) -> None:
        assert self._fd is not None
        self.stats.short_writes += 1
        try:
            while done < len(line):
                n = os.write(self._fd, line[done:])
                if n <= 0:
                    raise OSError(28, "No space left on device (short write)")
                done += n
        except OSError:
            try:  # cut the segment back to the line's start: the line is retried whole
                os.ftruncate(self._fd, self._seg_bytes)
            except OSError:  # cannot: retire the segment, remembering where its whole lines end
                path = self._segment_path(self._seq)
                self._valid_len[path] = self._seg_bytes
                os.close(self._fd)
                self._fd = None
                if self._seg_bytes:
                    self._closed.append(path)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                self._seg_bytes = self._seg_records = 0
            raise

    def _salvage(self, table: str, record: dict[str, Any], exc: Exception) -> bytes | None:
        """A record orjson cannot write: its strings scrubbed, or else quarantined (None)."""
        line, reason, error = quarantine.salvage(
            self.wal_dir, self.writer_id, table, record, exc, self.stats.appended
        )
        if line is not None:
            return line
        with self._lock:
            self.stats.appended += 1
            if error is not None:
                self.stats.last_error = error
            self._drop(reason or "quarantined", 1)
        return None

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
            "wal_open": self._fd is not None,
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
            "short_writes": s.short_writes,
            "quarantined": s.dropped.get("quarantined", 0),
            "quarantine_dir": quarantine.directory(self.wal_dir),
            "wal_fsync_ms": self.wal_fsync_ms,
            "wal_fsyncs": s.wal_fsyncs,
            "wal_fsync_avg_ms": round(s.wal_fsync_s / s.wal_fsyncs * 1000, 3) if s.wal_fsyncs else None,
            "dropped": dict(s.dropped),
            "last_error": s.last_error,
            "last_flush_at": s.last_flush_at,
        }

    # -- segments -----------------------------------------------------------------------
    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.wal_dir, f"{self.writer_id}.{seq:08d}{layout.WAL_SUFFIX}")

    def _open_segment(self) -> None:
        seq = self._seq + 1
        self._fd = os.open(self._segment_path(seq), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        self._seq = seq
        self._seg_bytes = self._seg_records = 0
        self._unsynced = False
        self._dir_unsynced = True

    def _rotate(self) -> None:
        """Close the current segment (if it has data) and open the next one."""
        with self._lock:
            unsynced = self._unsynced
            old_fd = self._rotate_locked()
        if old_fd is not None:
            try:
                if unsynced and self.wal_fsync_ms > 0:  # outside the lock: appends do not wait for it
                    self._fdatasync(old_fd)
            except OSError:
                pass  # recorded in last_error; the segment is converted (and fsynced as Parquet) next
            finally:
                os.close(old_fd)

    def _rotate_locked(self) -> int | None:
        """Swap in a new segment; returns the old segment's fd for the caller to close."""
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
                return None
        if self._fd is not None and self._segment_deleted():
            # someone removed the WAL (the log directory) under us: what it held is gone
            self._drop("wal_deleted", self._seg_records)
            os.close(self._fd)
            self._fd = None
            if self._lock_fd is not None:  # the lock file went with the directory
                os.close(self._lock_fd)
                self._lock_fd = None
            self._seg_bytes = self._seg_records = 0
            return None
        self._drain_pending_locked()
        if self._seg_bytes == 0 or self._fd is None:
            return None
        old_fd, old_path = self._fd, self._segment_path(self._seq)
        try:
            self._open_segment()
        except OSError as exc:
            self.stats.last_error = f"WAL rotate failed: {exc}"
            return None
        self._closed.append(old_path)
        return old_fd

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
                self._write_locked(line)
            except OSError as exc:
                self.stats.last_error = f"WAL write failed: {exc}"
                return
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
                        with self._lock:
                            self._drop("quarantined", n)
                    except OSError as err:
                        self.stats.flush_errors += 1
                        self._error(f"cannot quarantine {os.path.basename(seg)}: {err}")
                        break
                self._closed.popleft()
                self._failures.pop(seg, None)
                self._valid_len.pop(seg, None)
                self.stats.flush_errors = 0
            self._release_adopted()
            self.stats.last_flush_at = time.time()
            return rows

    def _convert_segment(self, seg: str, *, strict_tail: bool) -> int:
        """Segment → Parquet (+ quarantine), then removed; its records are counted once, here."""
        done = conversion.convert_segment(
            self.log_dir,
            self.wal_dir,
            self.writer_id,
            seg,
            strict_tail=strict_tail,
            valid_len=self._valid_len.get(seg),
        )
        self.stats.parquet_files += done.files
        if done.corrupt:
            self.stats.corrupt_records += done.corrupt
            log.warning("call log: skipped %d corrupt record(s) in %s", done.corrupt, os.path.basename(seg))
        if done.quarantined:
            with self._lock:
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

    # -- group commit -------------------------------------------------------------------
    def _sync_loop(self) -> None:
        while not self._stop.wait(self.wal_fsync_ms / 1000):
            self.sync_wal()

    def sync_wal(self) -> None:
        """``fdatasync`` the current segment if anything was written to it since the last sync."""
        with self._lock:
            if not self._unsynced or self._fd is None:
                return
            fd = os.dup(self._fd)  # the segment may rotate meanwhile: sync through our own fd
            new_segment = self._dir_unsynced
            self._unsynced = self._dir_unsynced = False
        try:
            self._fdatasync(fd)
            if new_segment:  # the segment's directory entry must survive the crash too
                dir_fd = os.open(self.wal_dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError:
            self._dir_unsynced = self._dir_unsynced or new_segment
        finally:
            os.close(fd)

    def _fdatasync(self, fd: int) -> None:
        t0 = time.perf_counter()
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self.stats.last_error = f"WAL fdatasync failed: {exc}"
            with self._lock:
                self._unsynced = True
            raise
        self.stats.wal_fsyncs += 1
        self.stats.wal_fsync_s += time.perf_counter() - t0

    def _housekeeping(self) -> None:
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

    def _error(self, message: str) -> None:
        self.stats.last_error = message
        log.error("call log: %s", message)

    def __enter__(self) -> LogWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
