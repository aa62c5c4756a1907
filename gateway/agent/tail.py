"""WalTailer: reads WAL segments as they are written and hands new records to listeners.

The agent's telemetry comes from here, not from Parquet flushes, so metrics and spans keep
flowing while the object store refuses writes. Only complete lines are consumed (a line
being written stays for the next poll); a segment is drained to its end before the agent
converts and deletes it, so each record reaches the listeners once per agent lifetime.

Each record is parsed and derived once, here (`gateway.store.rows.derive`): the listeners
(telemetry, the feedback index) get the derived rows, and with ``keep_rows`` the tailer
builds them into Arrow tables per segment right away (`gateway.store.conversion.Parsed`,
with the line numbers of what cannot become a row), so that the conversion of a closed
segment neither reads nor parses it again, and no Python rows are held between polls.
What is kept is bounded (``max_kept_bytes`` of Arrow data); a segment past the bound is
read again by the conversion (`Parsed.complete` is false).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.store.conversion import Parsed
from gateway.store.rows import derive, parse_lines
from gateway.store.wal import WAL_SUFFIX

log = logging.getLogger("shadowtune.agent")

Listener = Callable[[str, list[dict[str, Any]]], None]
MAX_READ = 4 * 2**20  # bytes read from one segment at a time (bounds the records held at once)
# Arrow bytes of parsed rows the tail keeps for the conversion. 48 MiB, measured with the agent bench
# (docs/benchmarks.md round 10): peak RSS 276-287 MiB in 7 runs against 299-310 in 5 at 64 MiB, no
# segment parsed twice (the tail waits for a conversion that makes progress), CPU a row within the spread
MAX_KEPT_BYTES = 48 * 2**20


TELEMETRY_FIELDS = (
    "response_id",
    "_response_model",
    "finish_reason",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)


def derive_for_telemetry(rec: dict[str, Any]) -> dict[str, Any]:
    """What telemetry needs of a call record (`TELEMETRY_FIELDS`), without assembling a whole stream.

    A streamed answer's id and model are in its first event, its finish reason and usage in
    its last ones: parsing those few instead of every chunk saves most of the cost of
    `gateway.store.rows.derive`, which the Parquet conversion runs anyway. Anything unusual
    (no ``data:`` events, a chunk that does not parse) falls back to the full derivation.
    """
    sse = rec.get("response_sse")
    if not isinstance(sse, str):
        return derive("calls", rec)
    head = sse.split("\n\n", 1)[0]
    ends = [e for e in sse.rsplit("\n\n", 5)[1:] if e.startswith("data: {")]
    if not head.startswith("data: {") or not ends:
        return derive("calls", rec)
    try:
        first = orjson.loads(head[6:])
        tail = [orjson.loads(e[6:]) for e in ends[-3:]]
    except orjson.JSONDecodeError:
        return derive("calls", rec)
    if not isinstance(first, dict) or not all(isinstance(c, dict) for c in tail):
        return derive("calls", rec)
    out = {k: v for k, v in rec.items() if k != "response_sse"}
    out.setdefault("response_id", first.get("id"))
    out["_response_model"] = first.get("model")
    for chunk in reversed([first, *tail]):
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            if out.get("input_tokens") is None:
                out["input_tokens"] = usage.get("prompt_tokens", usage.get("input_tokens"))
            if out.get("output_tokens") is None:
                out["output_tokens"] = usage.get("completion_tokens", usage.get("output_tokens"))
        choices = chunk.get("choices")
        if choices and isinstance(choices[0], dict) and choices[0].get("finish_reason") is not None:
            out.setdefault("finish_reason", choices[0]["finish_reason"])
    price_in, price_out = out.pop("price_in", None), out.pop("price_out", None)
    if out.get("cost_usd") is None and (price_in is not None or price_out is not None):
        out["cost_usd"] = (
            (out.get("input_tokens") or 0) * (price_in or 0.0)
            + (out.get("output_tokens") or 0) * (price_out or 0.0)
        ) / 1e6
    return out


class WalTailer:
    def __init__(
        self,
        wal_dir: str,
        *,
        full_records: bool = False,
        keep_rows: bool = False,
        max_kept_bytes: int = MAX_KEPT_BYTES,
        hold: Callable[[], bool] | None = None,
        max_hold_s: float = 2.0,
    ) -> None:
        """``hold``: when the kept tables reach ``max_kept_bytes`` and it returns True (the agent:
        while its conversions succeed, so they will free them), the tail waits for the conversion
        instead of reading ahead and dropping what it keeps (each segment it dropped is parsed a
        second time by the conversion: under a backlog, most of them). The wait lasts while the
        conversion makes progress: ``max_hold_s`` from the last kept segment it freed, after which
        the tail reads on (telemetry then stays current at the price of the second parse)."""
        self.wal_dir = wal_dir
        self.full_records = full_records  # every derived column (prompt/completion text in spans)
        self.keep_rows = keep_rows
        self.max_kept_bytes = max_kept_bytes
        self.listeners: list[Listener] = []
        self.records = 0
        self.corrupt = 0
        self._offsets: dict[str, int] = {}
        self._parsed: dict[str, Parsed] = {}
        self._kept_bytes = 0
        self.hold = hold
        self.max_hold_s = max_hold_s
        self._held_since: float | None = None
        self._lock = threading.Lock()
        self._published: dict[str, tuple[dict[str, list[Any]], int]] = {}
        self._pub_lock = threading.Lock()

    def poll(self) -> int:
        """Read what every segment gained since the last poll; returns the records handed on."""
        n = 0
        # listed under the lock: a listing older than another thread's read (a `drain` of a segment
        # created since) would take that segment for gone, forget its offset, and hand its records
        # to the listeners a second time
        with self._lock:
            try:
                names = os.listdir(self.wal_dir)
            except OSError:  # no WAL (yet), or not a directory: the writers report it
                return 0
            paths = {os.path.join(self.wal_dir, name) for name in names if name.endswith(WAL_SUFFIX)}
            for gone in set(self._offsets) - paths:
                del self._offsets[gone]  # converted (by us) or removed
                self._drop_parsed(gone)
            for path in sorted(paths):
                n += self._read(path, final=False)
        return n

    def drain(self, path: str) -> int:
        """Read a closed segment to its end (before it is converted and deleted)."""
        with self._lock:
            return self._read(path, final=True)

    def forget(self, path: str) -> None:
        with self._lock:
            self._offsets.pop(path, None)
            self._drop_parsed(path)

    def parsed(self, path: str) -> Parsed | None:
        """The rows kept for a drained segment, when complete (else the conversion reads it)."""
        with self._lock:
            kept = self._parsed.get(path)
            return kept if kept is not None and kept.complete else None

    def shared(self, path: str) -> tuple[dict[str, list[Any]], int] | None:
        """The Arrow tables kept for ``path`` per table, and the offset they end at, as of the last
        read of it; None when nothing complete is kept (`gateway.store.reader.share_tail`: the
        stores of this process read the unflushed tail from here instead of parsing and deriving
        it again). Takes only ``_pub_lock``, never the tail's lock: a store may be opened under
        a listener's lock (the feedback index), which the tail takes while it holds its own."""
        with self._pub_lock:
            return self._published.get(os.path.join(self.wal_dir, os.path.basename(path)))

    def _publish(self, path: str) -> None:
        """After a read of ``path`` (under ``_lock``): what `shared` answers for it (unchanged
        when the read found nothing new)."""
        kept = self._parsed.get(path)
        if kept is None or not kept.complete:
            self._unpublish(path)
            return
        offset = self._offsets.get(path, 0)
        with self._pub_lock:
            known = self._published.get(path)
        if known is not None and known[1] == offset:
            return
        tables: dict[str, list[Any]] = {}
        for (table, _day), chunks in kept.groups.items():
            tables.setdefault(table, []).extend(chunks)
        with self._pub_lock:
            self._published[path] = (tables, offset)

    def _unpublish(self, path: str) -> None:
        with self._pub_lock:
            self._published.pop(path, None)

    def reparse(self, path: str) -> Parsed | None:
        """A closed segment read again into Arrow, chunk by chunk (no listeners: they had it);
        for a segment whose tables were not kept (`Parsed.complete` false)."""
        other = WalTailer(self.wal_dir, keep_rows=True, max_kept_bytes=2**62)
        other._read(path, final=True)
        kept = other._parsed.get(path)
        return kept if kept is not None and kept.complete else None

    def _drop_parsed(self, path: str) -> None:
        self._unpublish(path)
        kept = self._parsed.pop(path, None)
        if kept is not None:
            self._kept_bytes -= kept.nbytes
            if kept.nbytes:
                self._held_since = None  # a conversion freed what it kept: the wait starts again

    def _incomplete(self, path: str) -> None:
        self._unpublish(path)
        kept = self._parsed.get(path)
        if kept is not None and kept.complete:
            self._kept_bytes -= kept.nbytes
            self._parsed[path] = Parsed(complete=False)

    def _holding(self, path: str) -> bool:
        """True: do not read ``path`` ahead now (its rows are kept, the budget is full, and the
        conversion is expected to free it soon: see ``hold``)."""
        if self._kept_bytes <= self.max_kept_bytes:
            self._held_since = None
            return False
        kept = self._parsed.get(path)
        if self.hold is None or kept is None or not kept.complete or not self.hold():
            return False
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since < self.max_hold_s

    def _read(self, path: str, *, final: bool) -> int:
        offset = self._offsets.get(path, 0)
        if self.keep_rows and path not in self._parsed:
            self._parsed[path] = Parsed(complete=offset == 0)
        total = 0
        while True:
            if not final and self._holding(path):
                break
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(MAX_READ)
            except FileNotFoundError:
                self._offsets.pop(path, None)
                self._drop_parsed(path)
                return total
            if not data:
                break
            end = data.rfind(b"\n") + 1
            if end == 0:
                if final or len(data) >= MAX_READ:
                    offset += len(data)  # a torn last line of a closed segment, or a giant line
                    self.corrupt += 1
                    self._torn(path, data, giant=len(data) >= MAX_READ)
                break
            offset += end
            total += self._emit(data[:end], path, final=final)
            if len(data) < MAX_READ:
                if final and end < len(data):
                    offset += len(data) - end
                    self.corrupt += 1
                    self._torn(path, data[end:], giant=False)
                break
        self._offsets[path] = offset
        if self.keep_rows:
            self._publish(path)
        return total

    def _torn(self, path: str, line: bytes, *, giant: bool) -> None:
        kept = self._parsed.get(path)
        if kept is None or not kept.complete:
            return
        if giant:  # the conversion reads it whole (the tail reads at most MAX_READ at once)
            self._incomplete(path)
        else:
            kept.add([], [], [(0, line)], [], 1)

    def _emit(self, chunk: bytes, path: str | None = None, *, final: bool = False) -> int:
        """Parse, derive and hand on one chunk of whole lines, with the cyclic GC paused: the
        chunk's records are tens of thousands of acyclic dicts, which would otherwise trigger
        collections that scan every live object (about a tenth of the tail's CPU)."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._emit_chunk(chunk, path, final)
        finally:
            if enabled:
                gc.enable()

    def _emit_chunk(self, chunk: bytes, path: str | None, final: bool) -> int:
        kept = self._parsed.get(path) if path is not None else None
        keep = kept is not None and kept.complete
        bad: list[tuple[int, bytes]] = []
        positions: list[int] = []
        records, corrupt = parse_lines(chunk, bad=bad, positions=positions)
        self.corrupt += corrupt
        by_table: dict[str, list[dict[str, Any]]] = {}
        rows: list[dict[str, Any]] = []
        at: list[int] = []
        rejected: list[tuple[int, str | None, str]] = []
        for rec, n in zip(records, positions, strict=True):
            table = rec.get("_t")
            if not isinstance(table, str):
                rejected.append((n, None, f"unknown table {table!r}"))
                continue
            try:
                if table == "calls" and not self.full_records and not keep:
                    row = derive_for_telemetry(rec)
                else:
                    row = derive(table, rec, copy=False)  # parsed here: nothing else holds it
            except Exception as exc:  # a record that cannot be derived still counts as seen
                log.debug("tail: cannot derive a %s record: %r", table, exc)
                rejected.append((n, table, f"{type(exc).__name__}: {exc}"[:500]))
                continue
            by_table.setdefault(table, []).append(row)
            rows.append(row)
            at.append(n)
        if kept is not None and kept.complete:
            # a segment drained for its conversion stays kept past the budget: it is converted next
            if not keep or (self._kept_bytes > self.max_kept_bytes and not (final and self.hold)):
                assert path is not None
                self._incomplete(path)
            else:
                self._kept_bytes += kept.add(rows, at, bad, rejected, chunk.count(b"\n"))
        for table, rows in by_table.items():
            for listener in self.listeners:
                try:
                    listener(table, rows)
                except Exception as exc:  # a listener never stops the tail
                    log.warning("WAL tail listener %r failed: %r", listener, exc)
        self.records += len(records)
        return len(records)
