"""WalTailer: reads WAL segments as they are written and hands new records to listeners.

The agent's telemetry comes from here, not from Parquet flushes, so metrics and spans keep
flowing while the object store refuses writes. Only complete lines are consumed (a line
being written stays for the next poll); a segment is drained to its end before the agent
converts and deletes it, so each record reaches the listeners once per agent lifetime.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import orjson

from gateway.store.rows import derive, parse_lines
from gateway.store.wal import WAL_SUFFIX

log = logging.getLogger("shadowtune.agent")

Listener = Callable[[str, list[dict[str, Any]]], None]
MAX_READ = 16 * 2**20  # bytes read from one segment per poll


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
    def __init__(self, wal_dir: str, *, full_records: bool = False) -> None:
        self.wal_dir = wal_dir
        self.full_records = full_records  # every derived column (prompt/completion text in spans)
        self.listeners: list[Listener] = []
        self.records = 0
        self.corrupt = 0
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()

    def poll(self) -> int:
        """Read what every segment gained since the last poll; returns the records handed on."""
        try:
            names = sorted(n for n in os.listdir(self.wal_dir) if n.endswith(WAL_SUFFIX))
        except OSError:  # no WAL (yet), or not a directory: the writers report it
            return 0
        n = 0
        with self._lock:
            paths = {os.path.join(self.wal_dir, name) for name in names}
            for gone in set(self._offsets) - paths:
                del self._offsets[gone]  # converted (by us) or removed
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

    def _read(self, path: str, *, final: bool) -> int:
        offset = self._offsets.get(path, 0)
        total = 0
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(MAX_READ)
            except FileNotFoundError:
                self._offsets.pop(path, None)
                return total
            if not data:
                break
            end = data.rfind(b"\n") + 1
            if end == 0:
                if final or len(data) >= MAX_READ:
                    offset += len(data)  # a torn last line of a closed segment, or a giant line
                    self.corrupt += 1
                break
            offset += end
            total += self._emit(data[:end])
            if len(data) < MAX_READ:
                if final and end < len(data):
                    offset += len(data) - end
                    self.corrupt += 1
                break
        self._offsets[path] = offset
        return total

    def _emit(self, chunk: bytes) -> int:
        records, corrupt = parse_lines(chunk)
        self.corrupt += corrupt
        by_table: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            table = rec.get("_t")
            if not isinstance(table, str):
                continue
            try:
                if table == "calls" and not self.full_records:
                    by_table.setdefault(table, []).append(derive_for_telemetry(rec))
                else:
                    by_table.setdefault(table, []).append(derive(table, rec))
            except Exception as exc:  # a record that cannot be derived still counts as seen
                log.debug("tail: cannot derive a %s record: %r", table, exc)
        for table, rows in by_table.items():
            for listener in self.listeners:
                try:
                    listener(table, rows)
                except Exception as exc:  # a listener never stops the tail
                    log.warning("WAL tail listener %r failed: %r", listener, exc)
        self.records += len(records)
        return len(records)
