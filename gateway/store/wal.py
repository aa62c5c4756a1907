"""WalAppender: the request worker's half of the call log (the WAL), with no pyarrow.

A request worker appends each record as one JSON line with one ``write()`` to its current
segment ``<wal_dir>/<writer_id>.<seq>.wal.ndjson`` and does nothing else with the log:
the host's log agent (`gateway.agent`) converts the segments to Parquet, compacts, keeps
retention and makes telemetry from them.

Segment protocol (shared with `gateway.agent.core.LogAgent`):

1. A writer holds an ``flock`` on ``<wal_dir>/<writer_id>.lock`` for as long as it lives,
   and creates its first segment only once it holds the lock: a segment whose owner's lock
   is free belongs to a dead writer, and all of its segments are closed.
2. A writer's newest segment is its open one; every older one is closed. Rotation opens
   segment ``seq + 1`` under the append lock, so every ``write()`` to segment ``seq``
   returned before ``seq + 1`` appeared in the directory: whoever sees ``seq + 1`` reads
   all of ``seq``.
3. Only the agent deletes a segment, after its Parquet files are in place; Parquet names
   derive from the segment name, so converting a segment twice (agent killed in between)
   rewrites the same files: every record lands exactly once.

A line goes in whole or not at all: a short write (disk full) is completed, and when the
rest cannot be written the segment is cut back to the line's start and the line is retried
whole later, so a torn line is never left in the middle of a segment. With
``wal_fsync_ms`` set, a thread ``fdatasync``s the segment that often when it was written to
(group commit: one sync covers every record since the last), so a machine crash loses at
most that window; the request path never waits for it.

Nothing is dropped silently: when the WAL cannot be written, records wait in a bounded
memory queue and are retried at each rotation; past the bound they are dropped, counted by
reason in `WalStats.dropped`, and `healthy` turns false.

This is the one implementation of segment open/close, whole-line writes and group commit:
request workers use it directly, and `gateway.store.writer.LogWriter` (CLI commands, one
process owning its log) writes through one.
"""

from __future__ import annotations

import contextlib
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

from gateway.store import quarantine  # import-light (orjson only)

log = logging.getLogger("shadowtune.store")

WAL_SUFFIX = ".wal.ndjson"
"""Same as `gateway.store.layout.WAL_SUFFIX` (kept here so that workers never import pyarrow)."""


def default_wal_dir(log_dir: str) -> str:
    """Same as `gateway.store.layout.default_wal_dir`, without pyarrow."""
    if "://" in log_dir and not log_dir.startswith("file://"):
        return os.path.abspath("shadowtune-wal")
    return os.path.join(log_dir.removeprefix("file://"), "wal")


def new_writer_id(suffix: str = "") -> str:
    """``<ms>-<pid>-<hex>``: sorts by start time, names the process that wrote a file."""
    tail = suffix or secrets.token_hex(3)
    return f"{int(time.time() * 1000):013d}-{os.getpid()}-{tail}"


@dataclass
class WalStats:
    appended: int = 0
    wal_errors: int = 0
    short_writes: int = 0
    segments: int = 0
    wal_fsyncs: int = 0
    wal_fsync_s: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None


class WalAppender:
    """One writer's WAL segments (see the module docstring for the protocol)."""

    def __init__(
        self,
        wal_dir: str,
        *,
        rotate_interval: float = 1.0,
        max_pending: int = 100_000,
        writer_id: str | None = None,
        lazy: bool = False,
        wal_fsync_ms: float = 0.0,
        stats: WalStats | None = None,
        rotate_thread: bool = True,
    ) -> None:
        self.wal_dir = wal_dir
        self.wal_fsync_ms = wal_fsync_ms
        """Group commit: ``fdatasync`` the segment this often when written to (0: never; see `sync`)."""
        self.rotate_interval = rotate_interval
        self.max_pending = max_pending
        self.writer_id = writer_id or new_writer_id()
        self.lazy = lazy  # open the lock and a segment at the first append (the agent's own writer)
        self.stats = stats if stats is not None else WalStats()
        self.rotate_thread = rotate_thread  # False: the owner calls `rotate` (LogWriter's flush thread)
        self.flush_hooks: list[Callable[[], int]] = []
        """Called by `flush` after the rotation (in one process, the embedded agent's conversion)."""
        self.on_pending: Callable[[], None] | None = None
        """Called (under the append lock) when a record has to wait in memory: retry soon."""
        self.valid_len: dict[str, int] = {}
        """Retired segments whose torn last line could not be cut back: where their whole lines end."""
        self._retired: list[str] = []  # segments closed by a failed write, handed out by `rotate`
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._seq = 0
        self._seg_bytes = 0
        self._seg_records = 0
        self._pending: deque[bytes] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._unsynced = False  # bytes in the current segment since the last fdatasync
        self._dir_unsynced = False  # a new segment whose directory entry is not synced yet
        self._sync_thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the writer lock now (before `start`), or raise `OSError`."""
        with self._lock:
            self._lock_locked()

    @property
    def seq(self) -> int:
        """The current (or last) segment's seq; the next segment is ``seq + 1``."""
        return self._seq

    @seq.setter
    def seq(self, value: int) -> None:
        with self._lock:
            self._seq = value

    def start(self) -> None:
        self._started = True
        if not self.lazy:
            with self._lock:
                self._open_locked()
        if self.rotate_thread:
            self._thread = threading.Thread(target=self._run, name="shadowtune-wal-rotate", daemon=True)
            self._thread.start()
        if self.wal_fsync_ms > 0:
            self._sync_thread = threading.Thread(
                target=self._sync_loop, name="shadowtune-wal-fsync", daemon=True
            )
            self._sync_thread.start()

    def close(self) -> None:
        """Close the current segment and release the lock; the agent converts what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=10)
            self.sync()
        with self._lock:
            self._drain_pending_locked()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                with contextlib.suppress(OSError):
                    if os.path.getsize(self._segment_path(self._seq)) == 0:
                        os.unlink(self._segment_path(self._seq))
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._lock_path)
                os.close(self._lock_fd)
                self._lock_fd = None
        if self._pending:
            self._drop("shutdown", len(self._pending))
            self._pending.clear()

    @property
    def _lock_path(self) -> str:
        return os.path.join(self.wal_dir, f"{self.writer_id}.lock")

    def _lock_locked(self) -> None:
        if self._lock_fd is None:
            os.makedirs(self.wal_dir, exist_ok=True)
            fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            self._lock_fd = fd

    @property
    def is_open(self) -> bool:
        """Whether a segment is open for appends."""
        return self._fd is not None

    def _open_locked(self) -> bool:
        """Take the writer lock (if not held) and open the next segment; False if the disk said no."""
        try:
            self._lock_locked()
            path = self._segment_path(self._seq + 1)
            # 0600: a segment holds raw bodies until the agent converts (and redacts) them
            self._fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            self._seq += 1
            self._seg_bytes = self._seg_records = 0
            self.stats.segments += 1
            self._unsynced = False
            self._dir_unsynced = True
            return True
        except OSError as exc:
            self.stats.wal_errors += 1
            self.stats.last_error = f"WAL open failed: {exc}"
            return False

    # -- group commit -------------------------------------------------------------------
    def _sync_loop(self) -> None:
        while not self._stop.wait(self.wal_fsync_ms / 1000):
            self.sync()

    def sync(self) -> None:
        """``fdatasync`` the current segment if anything was written to it since the last sync.

        Runs off the request path (the sync thread): appends never wait for it. A machine crash
        then loses at most ``wal_fsync_ms`` of answered calls; a killed process loses nothing.
        """
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
        except OSError as exc:
            self.stats.last_error = f"WAL fsync failed: {exc}"
            with self._lock:
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

    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.wal_dir, f"{self.writer_id}.{seq:08d}{WAL_SUFFIX}")

    # -- request path -------------------------------------------------------------------
    def append(self, table: str, record: dict[str, Any]) -> None:
        """Append one record: one ``write()`` to the current segment, never a flush or fsync."""
        record["_t"] = table
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as exc:  # not JSON (a lone surrogate, an int over 64 bits, an object)
            salvaged = self._salvage(table, record, exc)
            if salvaged is None:
                return
            line = salvaged
        with self._lock:
            self.stats.appended += 1
            if self._fd is None and self.lazy and self._started and not self._pending:
                self._open_locked()
            if self._fd is not None and not self._pending:
                try:
                    self._write_locked(line)
                    return
                except OSError as exc:
                    self.stats.wal_errors += 1
                    self.stats.last_error = f"WAL write failed: {exc}"
            self._queue_pending(line)

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

    def _write_locked(self, line: bytes) -> None:
        """Write one whole line to the current segment, or raise `OSError` having left none of it.

        A short write (disk full) is completed; when the rest cannot be written, the segment is
        cut back to the line's start and the caller retries the line whole later, so no torn
        line is ever left in the middle of a segment and no record is counted twice.
        """
        assert self._fd is not None
        done = os.write(self._fd, line)
        if done != len(line):
            self.stats.short_writes += 1
            try:
                while done < len(line):
                    n = os.write(self._fd, line[done:])
                    if n <= 0:
                        raise OSError(28, "No space left on device (short write)")
                    done += n
            except OSError:
                try:
                    os.ftruncate(self._fd, self._seg_bytes)
                except OSError:  # cannot cut back: retire the segment, remembering where its lines end
                    self._retire_locked()
                raise
        self._seg_bytes += len(line)
        self._seg_records += 1
        self._unsynced = True

    def _retire_locked(self) -> None:
        """Close the current segment for good after a write that could not be cut back."""
        assert self._fd is not None
        path = self._segment_path(self._seq)
        os.close(self._fd)
        self._fd = None
        if self._seg_bytes:
            self.valid_len[path] = self._seg_bytes
            self._retired.append(path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._seg_bytes = self._seg_records = 0

    def _queue_pending(self, line: bytes) -> None:
        if len(self._pending) >= self.max_pending:
            self._drop("queue_full", 1)
            return
        if not self._pending:
            log.error(
                "call log: %s; holding records in memory (max %d)", self.stats.last_error, self.max_pending
            )
        self._pending.append(line)
        if self.on_pending is not None:
            self.on_pending()

    def count_dropped(self, reason: str, n: int) -> None:
        """Count ``n`` records dropped for ``reason`` (the owner's, e.g. quarantined at conversion)."""
        with self._lock:
            self._drop(reason, n)

    def _drop(self, reason: str, n: int) -> None:
        total = self.stats.dropped.get(reason, 0) + n
        self.stats.dropped[reason] = total
        if total & (total - 1) == 0:  # log at 1, 2, 4, 8, ...
            log.error("call log: dropped %d record(s) so far: %s (%s)", total, reason, self.stats.last_error)

    # -- rotation -----------------------------------------------------------------------
    def rotate(self) -> list[str]:
        """Close the current segment if it has data, and open the next (see protocol, point 2).

        Returns the segments closed since the last call (the one rotated out, and any that a
        failed write retired), oldest first. With group commit, a closed segment is synced
        whole once, outside the append lock.
        """
        with self._lock:
            old, unsynced, closed = self._rotate_locked()
            closed = [*self._retired, *closed]
            self._retired.clear()
        if old is not None:
            try:
                if unsynced and self.wal_fsync_ms > 0:
                    self._fdatasync(old)
            except OSError:
                pass  # recorded in last_error; the segment is converted (and synced as Parquet) next
            finally:
                os.close(old)
        return closed

    def _rotate_locked(self) -> tuple[int | None, bool, list[str]]:
        """Swap in a new segment: (the old segment's fd to close, whether it has unsynced bytes, its path)."""
        if self._fd is None:
            if self.lazy and not self._pending:
                return None, False, []
            if not self._open_locked():
                return None, False, []
        if self._segment_deleted():
            # someone removed the WAL (the log directory) under us: what it held is gone
            self._drop("wal_deleted", self._seg_records)
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
            if self._lock_fd is not None:  # the lock file went with the directory
                os.close(self._lock_fd)
                self._lock_fd = None
            self._seg_bytes = self._seg_records = 0
            return None, False, []
        self._drain_pending_locked()
        if self._seg_bytes == 0 or self._fd is None:
            return None, False, []
        old, path, unsynced = self._fd, self._segment_path(self._seq), self._unsynced
        seg_bytes, seg_records = self._seg_bytes, self._seg_records
        if not self._open_locked():
            self._fd, self._seg_bytes, self._seg_records = old, seg_bytes, seg_records
            return None, False, []
        return old, unsynced, [path]

    def _segment_deleted(self) -> bool:
        try:
            return os.fstat(self._fd).st_nlink == 0  # type: ignore[arg-type]
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
        if not self._pending and (self.stats.last_error or "").startswith("WAL"):
            self.stats.last_error = None

    def flush(self) -> int:
        """Rotate now, then run the flush hooks; returns the rows they converted."""
        self.rotate()
        return sum(hook() for hook in self.flush_hooks)

    def _run(self) -> None:
        while not self._stop.wait(self.rotate_interval):
            try:
                self.rotate()
            except Exception as exc:  # the rotation thread must survive anything
                self.stats.last_error = f"WAL rotation: {exc!r}"
                log.error("call log: %s", self.stats.last_error)

    # -- state --------------------------------------------------------------------------
    @property
    def pending_bytes(self) -> int:
        """Bytes waiting in memory because the WAL could not take them."""
        return sum(len(x) for x in list(self._pending))

    @property
    def backlog_bytes(self) -> int:
        """Bytes of this writer not yet handed to the agent (open segment, memory queue)."""
        return self._seg_bytes + self.pending_bytes

    @property
    def healthy(self) -> bool:
        return (self._fd is not None or (self.lazy and self._lock_fd is None)) and not self._pending

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "writer_id": self.writer_id,
            "healthy": self.healthy,
            "wal_open": self._fd is not None or (self.lazy and self._lock_fd is None),
            "appended": s.appended,
            "pending_in_memory": len(self._pending),
            "backlog_bytes": self.backlog_bytes,
            "segments": s.segments,
            "wal_errors": s.wal_errors,
            "short_writes": s.short_writes,
            "wal_fsync_ms": self.wal_fsync_ms,
            "wal_fsyncs": s.wal_fsyncs,
            "wal_fsync_avg_ms": round(s.wal_fsync_s / s.wal_fsyncs * 1000, 3) if s.wal_fsyncs else None,
            "dropped": dict(s.dropped),
            "last_error": s.last_error,
        }

    def __enter__(self) -> WalAppender:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
