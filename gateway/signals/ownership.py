"""Who may post feedback on a call, and whether a post repeats one already stored.

`FeedbackIndex` answers both from the log itself, so it holds across workers and replicas:

* **Recent records** come from the writers' live WAL segments (every worker's), read
  incrementally: each poll reads only the bytes appended since the last one, so a lookup for a
  call made a moment ago costs a directory listing and a few lines of JSON, not a new snapshot.
* **Older records** (flushed before this process started reading) come from the Parquet log
  through one `gateway.store.LogStore`, refreshed when a call is not found.

`owner` gives the call's ``client_key`` (the name of the key that made it), looked up by
``call_id`` or by the response's ``chatcmpl-`` id; a call not found is looked for again for up
to ``wait_s`` (a streamed call is logged just after its last byte). `existing` gives the latest
event of one ``(call, kind, poster)``; a post equal to it is a repeat and is not stored again.
Two workers racing on the same repeat may both store it: the ``user_events`` view keeps only
the latest, so it still counts once.

Blocking (file reads, DuckDB): call it from a worker thread. Under ``shadowtune serve`` it
lives in the host's log agent, fed by the agent's WAL tail (`gateway.agent.tail.WalTailer`:
one parse of each record for telemetry, conversion and ownership), and request workers ask
it over the agent's socket (`gateway.agent.feedback`): they never load DuckDB.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gateway.recent import RecentMap
from gateway.signals.feedback import CallOwner, poster_id, same_feedback
from gateway.store import LogStore, layout
from gateway.store.reader import POSTER_SQL
from gateway.store.rows import derive, parse_lines

_OWNER_SQL = """
SELECT call_id, client_key FROM calls WHERE call_id = $id OR response_id = $id
ORDER BY served DESC NULLS LAST LIMIT 1
"""

_EXISTING_SQL = f"""
SELECT event_id, value, value_num, comment FROM events
WHERE call_id IN ($call, $posted) AND kind = $kind AND {POSTER_SQL} = $poster
ORDER BY ts DESC, event_id DESC LIMIT 1
"""


class _WalTail:
    """Calls and events appended to the live WAL segments since this process started reading."""

    def __init__(self, wal_dir: str, max_entries: int) -> None:
        self.wal_dir = wal_dir
        self.max_entries = max_entries
        self.offsets: dict[str, int] = {}
        self.owners: RecentMap[str, tuple[str, str | None]] = RecentMap(max_entries)
        """Call and response ids -> ``(call_id, client_key)`` (a tuple, not a `CallOwner`: the agent's
        tail adds tens of thousands a second, and a frozen dataclass costs a microsecond to build)."""
        self.events: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()

    def poll(self) -> None:
        live = layout.wal_stems(self.wal_dir)
        for stem in list(self.offsets):
            if stem not in live:
                del self.offsets[stem]
        for stem in sorted(live):
            offset = self.offsets.get(stem, 0)
            with (
                contextlib.suppress(FileNotFoundError),
                open(os.path.join(self.wal_dir, stem + layout.WAL_SUFFIX), "rb") as f,
            ):
                f.seek(offset)
                data = f.read()
                end = data.rfind(b"\n") + 1  # a line being written is read next time
                if end:
                    self.offsets[stem] = offset + end
                    for rec in parse_lines(data[:end])[0]:
                        self.add(rec)

    def add(self, rec: dict[str, Any], *, derived: bool = False) -> None:
        table = rec.get("_t")
        if table == "calls" and rec.get("call_id"):
            self.add_calls([rec if derived else derive("calls", rec)])
        elif table == "events" and rec.get("call_id") and rec.get("kind"):
            posted = str(rec["call_id"])
            call = self.owners.get(posted)
            for cid in {posted, call[0] if call else posted}:
                self._put(self.events, (cid, str(rec["kind"]), poster_id(rec)), rec)

    def add_calls(self, rows: list[dict[str, Any]]) -> None:
        """`add` for a batch of derived ``calls`` rows (the agent's tail: tens of thousands a second)."""
        owners = self.owners
        for row in rows:
            call_id = row.get("call_id")
            if not call_id:
                continue
            owner = (str(call_id), row.get("client_key"))
            owners[owner[0]] = owner
            response_id = row.get("response_id")
            if response_id and row.get("served") is not False:
                owners[str(response_id)] = owner

    def _put(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)


class FeedbackIndex:
    """Call owners and stored feedback: the WAL tail first, then the Parquet log."""

    def __init__(
        self,
        log_dir: str,
        wal_dir: str | None = None,
        *,
        wait_s: float = 0.5,
        max_entries: int = 200_000,
        poll: Callable[[], object] | None = None,
    ) -> None:
        """``poll``: read the WAL's new records now, which reach `on_records` (the agent's tail);
        without it, the index reads the WAL itself."""
        self.log_dir = log_dir
        self.wal_dir = wal_dir or layout.default_wal_dir(log_dir)
        self.wait_s = wait_s
        self._tail = _WalTail(self.wal_dir, max_entries)
        self._poll = poll
        self._store: LogStore | None = None
        self._snapshot_at = 0.0
        self._lock = threading.Lock()

    def on_records(self, table: str, rows: list[dict[str, Any]]) -> None:
        """A listener of the agent's WAL tail: derived rows just appended to the WAL."""
        with self._lock:
            if table == "calls":
                self._tail.add_calls(rows)
                return
            for row in rows:
                self._tail.add(row if "_t" in row else dict(row, _t=table), derived=True)

    def _fresh(self) -> None:
        """Read the WAL up to now (call without ``_lock``: the tail's listener takes it)."""
        if self._poll is not None:
            self._poll()

    def _poll_own_locked(self) -> None:
        if self._poll is None:
            self._tail.poll()

    def _sql(self, query: str, params: dict[str, Any], *, newer_than: float | None) -> list[dict[str, Any]]:
        """Query the Parquet log, on a snapshot taken after ``newer_than`` (monotonic time) when given."""
        if self._store is None:
            self._store = LogStore(self.log_dir, wal_dir=self.wal_dir)
            self._snapshot_at = time.monotonic()
        elif newer_than is not None and self._snapshot_at <= newer_than:
            self._snapshot_at = time.monotonic()
            self._store.refresh()
        return self._store.sql(query, params)

    def owner(self, call_id: str, *, wait: bool = True) -> CallOwner | None:
        """The call named ``call_id`` (its id or response id), or None when it is not in the log.

        With ``wait``, looks again for up to ``wait_s`` when it is not found.
        """
        asked = time.monotonic()
        deadline = asked + (self.wait_s if wait else 0.0)
        while True:
            self._fresh()
            with self._lock:
                self._poll_own_locked()
                recent = self._tail.owners.get(call_id)
                found = CallOwner(recent[0], recent[1], recent=True) if recent is not None else None
                if found is None:
                    rows = self._sql(_OWNER_SQL, {"id": call_id}, newer_than=asked)
                    if rows:
                        found = CallOwner(str(rows[0]["call_id"]), rows[0]["client_key"])
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def existing(self, call_id: str, posted: str, kind: str, poster: str) -> dict[str, Any] | None:
        """The latest stored event of ``(call, kind, poster)``, for the call's resolved id or the id posted.

        The Parquet log is asked on the snapshot at hand (`owner` refreshes it for a call the
        WAL tail did not have). An event another worker wrote and flushed between two polls
        may be missed: stored again, it still counts once in ``user_events``.
        """
        self._fresh()
        with self._lock:
            self._poll_own_locked()
            for cid in (call_id, posted):
                rec = self._tail.events.get((cid, kind, poster))
                if rec is not None:
                    return rec
            params = {"call": call_id, "posted": posted, "kind": kind, "poster": poster}
            rows = self._sql(_EXISTING_SQL, params, newer_than=None)
        return rows[0] if rows else None

    def remember(self, record: dict[str, Any]) -> None:
        """An event this process just appended: a repeat of it is known before the WAL is read again."""
        with self._lock:
            self._tail.add(dict(record, _t="events"))

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


__all__ = ["CallOwner", "FeedbackIndex", "same_feedback"]
