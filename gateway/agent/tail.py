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

from gateway.store.rows import derive, parse_lines
from gateway.store.wal import WAL_SUFFIX

log = logging.getLogger("shadowtune.agent")

Listener = Callable[[str, list[dict[str, Any]]], None]
MAX_READ = 16 * 2**20  # bytes read from one segment per poll


class WalTailer:
    def __init__(self, wal_dir: str) -> None:
        self.wal_dir = wal_dir
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
