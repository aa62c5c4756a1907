"""LogAgent: the host's one consumer of the WAL (telemetry, Parquet, compaction, retention).

Two threads, so that a slow or failing object store never delays telemetry:

* the tail thread (`WalTailer.poll`, every ``store.tail_interval``) reads every segment of every
  writer as it grows and hands the records to the listeners (`gateway.telemetry`);
* the convert thread (every ``store.flush_interval``) converts closed segments with
  `LogWriter.convert_segment`: every segment of a writer but its newest (its open one), and
  all segments of a writer whose ``flock`` is free (a dead worker: see `gateway.store.wal`).
  A segment is drained by the tailer before it is converted, and converted from the rows the
  tailer parsed and derived (each record is parsed once: `gateway.agent.tail.Parsed`). When the store refuses a
  write, the segment stays in the WAL and is tried again at the next round; the failure is
  counted in ``flush_errors`` and ``/readyz`` reports the store degraded.

`HostStats` sums what the request workers report once a second (shadow queue, skips, WAL
drops) into one view for the host's metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.agent.convert_process import ConvertProcess
from gateway.agent.process import release_freed_memory
from gateway.agent.tail import WalTailer
from gateway.config import Settings
from gateway.store import layout, quarantine
from gateway.store.fileio import try_lock
from gateway.store.reader import QueryLimits, limit_queries, share_tail
from gateway.store.wal import WalAppender, default_wal_dir
from gateway.store.writer import LogWriter

log = logging.getLogger("shadowtune.agent")

AGENT_LOCK = "agent.lock"  # not a writer's lock: no segment is ever named after it
FRESH_S = 5.0  # a worker report older than this no longer counts in gauges
TRIM_ROWS = 10_000
"""Rows converted between two `release_freed_memory` calls within a round (and once at its end): a
round that catches up a backlog converts many segments, and the heap each one freed would otherwise
stay the process's until the round ends (about 10 ms a call on a 300 MiB heap)."""


@dataclass
class AgentStats:
    converted_segments: int = 0
    reparsed_segments: int = 0  # converted from a second read: the tail had not kept their rows
    flush_errors: int = 0
    consecutive_failures: int = 0
    adopted_writers: int = 0
    last_error: str | None = None
    last_flush_at: float | None = None
    dropped: dict[str, int] = field(default_factory=dict)


class HostStats:
    """The request workers' own numbers (shadow queue, skips, WAL drops), summed for the host."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def update(self, writer_id: str, report: dict[str, Any]) -> None:
        with self._lock:
            self._reports[writer_id] = (time.monotonic(), report)

    def _fresh(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            return [r for t, r in self._reports.values() if now - t <= FRESH_S]

    def _all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for _, r in self._reports.values()]

    @property
    def workers(self) -> int:
        return len(self._fresh())

    # the attributes `gateway.telemetry` reads from ``ctx.shadow``
    @property
    def depth(self) -> int:
        return sum(int(r.get("shadow", {}).get("depth", 0)) for r in self._fresh())

    @property
    def in_flight(self) -> int:
        return sum(int(r.get("shadow", {}).get("in_flight", 0)) for r in self._fresh())

    @property
    def skipped(self) -> Counter[tuple[str, str]]:
        """Counters: a worker that is gone keeps its last counts (a counter never goes down)."""
        total: Counter[tuple[str, str]] = Counter()
        for r in self._all():
            for route, reason, n in r.get("shadow", {}).get("skipped", ()):
                total[(str(route), str(reason))] += int(n)
        return total

    def dropped(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self._all():
            for reason, n in r.get("wal", {}).get("dropped", {}).items():
                total[str(reason)] += int(n)
        return total

    def pending_bytes(self) -> int:
        return sum(int(r.get("wal", {}).get("pending_bytes", 0)) for r in self._fresh())

    def status(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "shadow": {"depth": self.depth, "in_flight": self.in_flight},
            "reports": [r for r in self._fresh()],
        }


def query_limits_of(settings: Settings) -> QueryLimits:
    """The bounds of the agent process's DuckDB queries (``store.query_*``)."""
    store = settings.store
    temp = store.query_temp_dir or os.path.join(tempfile.gettempdir(), "shadowtune-duckdb")
    return QueryLimits(memory_mb=store.query_memory_mb, threads=store.query_threads, temp_dir=temp)


class LogAgent:
    """See the module docstring. ``own`` is the agent's own appender (review page, detectors)."""

    def __init__(self, settings: Settings, *, own: WalAppender | None = None) -> None:
        store = settings.store
        self.settings = settings
        limit_queries(query_limits_of(settings))  # the review pages' and jobs' queries in this process
        self.log_dir = store.log_dir
        self.wal_dir = store.wal_dir or default_wal_dir(store.log_dir)
        self.flush_interval = store.flush_interval
        self.tail_interval = min(store.tail_interval, store.flush_interval)
        self.max_backlog_bytes = store.max_backlog_mb * 2**20
        self.converter = LogWriter(
            store.log_dir,
            wal_dir=self.wal_dir,
            flush_interval=store.flush_interval,
            compact_interval=store.compact_interval,
            retention_days=store.retention_days,
            max_backlog_bytes=store.max_backlog_mb * 2**20,
            create_bucket=store.create_bucket,
        )
        self.own = own
        # in a child process (store.convert_process), or from the rows the tail parsed and derived
        self.child = (
            ConvertProcess(store.log_dir, self.wal_dir, self.converter.writer_id)
            if store.convert_process
            else None
        )
        # one parse per record: the tail's derived rows feed telemetry, the feedback index and conversion
        self.tailer = WalTailer(
            self.wal_dir,
            full_records=settings.telemetry.capture_content,
            keep_rows=self.child is None,
            hold=self._hold_tail,
        )
        self.host = HostStats()
        self.stats = AgentStats()
        self._convert_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._store_ready = False
        self._stopped = False
        self._first_round_pending = False
        self._unshare: Callable[[], None] = lambda: None

    @staticmethod
    def wal_dir_of(settings: Settings) -> str:
        return settings.store.wal_dir or default_wal_dir(settings.store.log_dir)

    # -- life cycle ---------------------------------------------------------------------
    def start(self, *, first_round_in_background: bool = False) -> None:
        """Start the tail and convert threads, after a first tail poll and conversion round (the
        backlog a restarted agent finds), or with ``first_round_in_background`` right away: the
        agent process then answers the workers (``/metrics``, ``/admin/status``) while it catches up."""
        try:
            os.makedirs(self.wal_dir, exist_ok=True)
        except OSError as exc:  # the writers report it too; the rounds try again
            self._error(f"cannot create the WAL directory {self.wal_dir}: {exc}")
        self._first_round_pending = first_round_in_background
        if self.child is not None:
            self.child.start()
        else:  # the stores of this process (jobs, review pages) read the tail the tailer has parsed
            self._unshare = share_tail(self.wal_dir, self.tailer.shared)
        if not first_round_in_background:
            self._first_round()
        for name, target in (("tail", self._tail_loop), ("convert", self._convert_loop)):
            t = threading.Thread(target=target, name=f"shadowtune-agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, *, drain_timeout: float = 15.0) -> int:
        """Stop the threads, then convert until every writer is gone (or the timeout); returns rows."""
        if self._stopped:
            return 0
        self._stopped = True
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=30)
        if self.own is not None:
            self.own.close()
        deadline = time.monotonic() + drain_timeout
        rows = 0
        while True:
            self.tailer.poll()
            rows += self.convert()
            if not self._live_writers_with_data() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if self.child is not None:
            self.child.close()
        self._unshare()
        return rows

    def _hold_tail(self) -> bool:
        """The tail's budget of kept rows is full: while conversions succeed, it waits for the next
        one (started now) rather than read ahead and have those segments parsed twice."""
        if self.stats.consecutive_failures:
            return False  # the store refuses writes: the tail reads on, for telemetry
        self._wake.set()
        return True

    def _ensure_store(self) -> bool:
        if not self._store_ready:
            try:
                layout.ensure_store(self.log_dir)
                self._store_ready = True
            except (OSError, layout.LogStoreError) as exc:
                self._error(f"cannot open the call log at {self.log_dir}: {exc}")
        return self._store_ready

    def _tail_loop(self) -> None:
        while not self._stop.wait(self.tail_interval):
            try:
                self.tailer.poll()
            except Exception as exc:  # the tail must survive anything
                log.error("agent: WAL tail failed: %r", exc)

    def _first_round(self) -> None:
        if self._ensure_store():
            self.tailer.poll()
            self.convert()

    def _convert_loop(self) -> None:
        if self._first_round_pending:
            try:
                self._first_round()
            except Exception as exc:  # the converter must survive anything
                self._error(f"agent: conversion round failed: {exc!r}")
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)  # or sooner, when the tail waits for a conversion
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self.convert():
                    self._wake.set()  # more segments may have closed meanwhile: look again at once
                ready = self._store_ready and self.stats.consecutive_failures == 0
                if ready and self.converter.housekeeping():
                    release_freed_memory()  # a compaction's batches
            except Exception as exc:  # the converter must survive anything
                self._error(f"agent: conversion round failed: {exc!r}")

    # -- conversion ---------------------------------------------------------------------
    def convert(self) -> int:
        """One round: convert every closed segment of every writer; returns rows written."""
        with self._convert_lock, self._host_lock() as mine:
            if not mine:
                return 0  # another agent on this WAL directory is converting (one ``serve`` per host)
            if not self._ensure_store():
                self.stats.flush_errors += 1
                self.stats.consecutive_failures += 1
                return 0
            rows = trimmed_at = 0
            failed = False
            for owner, segments in self._segments().items():
                if not segments or failed:
                    continue
                lock_fd = self._lock_if_dead(owner)
                closed = segments if lock_fd is not None else segments[:-1]
                done = 0
                try:
                    for seg in closed:
                        self.tailer.drain(seg)
                        try:
                            rows += self._convert_one(seg)
                        except FileNotFoundError:
                            pass
                        except OSError as exc:
                            self._error(f"cannot write Parquet for {os.path.basename(seg)}: {exc}")
                            failed = True
                            break
                        self.tailer.forget(seg)
                        if rows - trimmed_at >= TRIM_ROWS:  # a backlog's round converts many segments
                            release_freed_memory()
                            trimmed_at = rows
                        self.stats.converted_segments += 1
                        done += 1
                    if lock_fd is not None and done == len(closed):
                        self.stats.adopted_writers += 1
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(self.wal_dir, f"{owner}.lock"))
                finally:
                    if lock_fd is not None:
                        os.close(lock_fd)
            if failed:
                self.stats.flush_errors += 1
                self.stats.consecutive_failures += 1
            else:
                self.stats.consecutive_failures = 0
                self.stats.last_error = None
            self.stats.last_flush_at = time.time()
            if rows > trimmed_at:
                release_freed_memory()
            return rows

    def _convert_one(self, seg: str) -> int:
        """One closed segment (drained by the tail) to the table; returns its rows."""
        if self.child is not None:
            return self.converter.count_converted(seg, self.child.convert(seg))
        parsed = self.tailer.parsed(seg)
        if parsed is None:  # the tail did not keep it whole: read and parse it a second time
            self.stats.reparsed_segments += 1
            parsed = self.tailer.reparse(seg)
        return self.converter.convert_segment(seg, parsed)

    @contextlib.contextmanager
    def _host_lock(self) -> Iterator[bool]:
        """``<wal_dir>/agent.lock`` for the round: two agents on one WAL never convert at once."""
        try:
            fd = try_lock(os.path.join(self.wal_dir, AGENT_LOCK))
        except OSError:
            yield True  # no WAL directory: nothing to race for (the round reports why)
            return
        if fd is None:
            yield False
            return
        try:
            yield True
        finally:
            os.close(fd)

    def _segments(self) -> dict[str, list[str]]:
        try:
            return layout.wal_segments_by_owner(self.wal_dir)
        except OSError:  # the WAL directory is not there (the writers report why)
            return {}

    def _lock_if_dead(self, owner: str) -> int | None:
        """The owner's lock fd if nobody holds it (its writer is gone), else None."""
        if self.own is not None and owner == self.own.writer_id and not self._stop.is_set():
            return None
        try:
            return try_lock(os.path.join(self.wal_dir, f"{owner}.lock"))
        except OSError:
            return None

    def _live_writers_with_data(self) -> bool:
        """True while any segment is left (a live writer's, or one the store refused)."""
        return any(segments for segments in self._segments().values())

    def flush(self, *, timeout: float | None = None) -> int:
        """Convert now, then wait (bounded) until the segments open now are closed and converted."""
        rows = self.convert()
        waiting = set()
        for _, segments in self._segments().items():
            # a segment listed here can be converted and deleted by the convert loop meanwhile
            with contextlib.suppress(OSError):
                if segments and os.path.getsize(segments[-1]) > 0:
                    waiting.add(segments[-1])
        deadline = time.monotonic() + (timeout if timeout is not None else 2 * self.flush_interval + 1)
        while waiting and time.monotonic() < deadline:
            time.sleep(min(0.05, self.flush_interval))
            rows += self.convert()
            waiting = {p for p in waiting if os.path.exists(p)}
        return rows

    # -- state --------------------------------------------------------------------------
    @property
    def backlog_bytes(self) -> int:
        """Bytes in the WAL not yet in Parquet (every writer), plus what workers hold in memory."""
        return layout.wal_summary(self.wal_dir).bytes + self.host.pending_bytes()

    def dropped(self) -> dict[str, int]:
        total = self.host.dropped()
        if self.own is not None:
            total.update(self.own.stats.dropped)
        total.update(self.converter.stats.dropped)  # records the conversion quarantined
        return dict(total)

    @property
    def healthy(self) -> bool:
        return self.stats.consecutive_failures == 0 and self.backlog_bytes <= self.max_backlog_bytes

    def status(self) -> dict[str, Any]:
        s, c = self.stats, self.converter.stats
        return {
            "agent_pid": os.getpid(),
            "convert_process": None
            if self.child is None
            else {"pid": self.child.pid, "restarts": self.child.restarts},
            "healthy": self.healthy,
            "backlog_bytes": self.backlog_bytes,
            "flushed_rows": c.flushed_rows,
            "parquet_files": c.parquet_files,
            "corrupt_records": c.corrupt_records,
            "converted_segments": s.converted_segments,
            "reparsed_segments": s.reparsed_segments,
            "adopted_writers": s.adopted_writers,
            "flush_errors": s.flush_errors,
            "tailed_records": self.tailer.records,
            "dropped": (dropped := self.dropped()),
            "quarantined": dropped.get("quarantined", 0),
            "quarantine_dir": quarantine.directory(self.wal_dir),
            "pending_in_memory": sum(
                int(r.get("wal", {}).get("pending_in_memory", 0)) for r in self.host.status()["reports"]
            ),
            "last_error": s.last_error,
            "last_flush_at": s.last_flush_at,
            "workers": self.host.workers,
        }

    def _error(self, message: str) -> None:
        if message != self.stats.last_error:
            log.error("call log: %s", message)
        self.stats.last_error = message


class AgentLog:
    """``ctx.writer`` inside the agent: appends go to the agent's own WAL writer, the rest is the host's."""

    def __init__(self, agent: LogAgent, own: WalAppender) -> None:
        self.agent = agent
        self.own = own
        self.stats = self  # `gateway.telemetry` reads ``ctx.writer.stats.dropped``

    def append(self, table: str, record: dict[str, Any]) -> None:
        self.own.append(table, record)

    @property
    def dropped(self) -> dict[str, int]:
        return self.agent.dropped()

    @property
    def backlog_bytes(self) -> int:
        return self.agent.backlog_bytes

    @property
    def healthy(self) -> bool:
        return self.agent.healthy

    def status(self) -> dict[str, Any]:
        return self.agent.status()

    def flush(self) -> int:
        self.own.rotate()
        return self.agent.flush()


def call_resolver(settings: Settings, wal_dir: str) -> Callable[[list[str]], dict[str, tuple[str, str]]]:
    """Route and variant of calls by call id or response id, from the log (telemetry's lookup for
    outcome events on calls it no longer remembers; at most ``store.tail_read_max_mb`` of WAL parsed)."""
    log_dir, bound = settings.store.log_dir, settings.store.tail_read_max_mb * 2**20

    def resolve(ids: list[str]) -> dict[str, tuple[str, str]]:
        from gateway.store import LogStore, queries

        with LogStore.open(log_dir, wal_dir=wal_dir, max_tail_bytes=bound) as store:
            rows = queries.call_routes(store, ids)
        out: dict[str, tuple[str, str]] = {}
        for r in rows:
            found = (r["route"] or "", r["variant"] or "baseline")
            out[r["call_id"]] = found
            if r["response_id"]:
                out[r["response_id"]] = found
        return out

    return resolve
