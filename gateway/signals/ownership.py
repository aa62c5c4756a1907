"""Who may post feedback on a call, and whether a post repeats one already stored.

`FeedbackIndex` answers both from the log itself (Parquet plus the writers' WAL tail, through
one `gateway.store.LogStore` per process), so it holds across workers and replicas:

* `owner`: the call's ``client_key`` (the name of the key that made it), looked up by
  ``call_id`` or by the response's ``chatcmpl-`` id. A call not found is looked for again on a
  fresh snapshot for up to ``wait_s`` (a streamed call is logged just after its last byte).
* `existing`: the latest event of one ``(call, kind, poster)``; a post whose value, number and
  comment equal it is a repeat and is not stored again. Two workers racing on the same repeat
  may both store it: the ``user_events`` view keeps only the latest, so it still counts once.

Blocking (DuckDB): call it from a worker thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from gateway.store import LogStore
from gateway.store.reader import POSTER_SQL

_OWNER_SQL = """
SELECT client_key FROM calls WHERE call_id = $id OR response_id = $id
ORDER BY served DESC NULLS LAST LIMIT 1
"""

_EXISTING_SQL = f"""
SELECT event_id, value, value_num, comment FROM events_resolved
WHERE call_id = $call AND kind = $kind AND {POSTER_SQL} = $poster
ORDER BY ts DESC, event_id DESC LIMIT 1
"""

_RESOLVE_SQL = """
SELECT call_id FROM calls WHERE response_id = $id AND served LIMIT 1
"""


@dataclass(frozen=True)
class CallOwner:
    """A logged call and the name of the client key that made it (None in open mode)."""

    call_id: str
    client_key: str | None


class FeedbackIndex:
    """Call owners and stored feedback, read from the log (one `LogStore`, refreshed on a miss)."""

    def __init__(self, log_dir: str, wal_dir: str | None = None, *, wait_s: float = 0.5) -> None:
        self.log_dir = log_dir
        self.wal_dir = wal_dir
        self.wait_s = wait_s
        self._store: LogStore | None = None
        self._lock = threading.Lock()

    def _sql(self, query: str, params: dict[str, Any], *, fresh: bool) -> list[dict[str, Any]]:
        with self._lock:
            if self._store is None:
                self._store = LogStore(self.log_dir, wal_dir=self.wal_dir)
            elif fresh:
                self._store.refresh()
            return self._store.sql(query, params)

    def owner(self, call_id: str, *, wait: bool = True) -> CallOwner | None:
        """The call named ``call_id`` (its id or response id), or None when it is not in the log.

        Takes a fresh snapshot first; with ``wait``, looks again for up to ``wait_s``.
        """
        deadline = time.monotonic() + (self.wait_s if wait else 0.0)
        fresh = True
        while True:
            rows = self._sql(_OWNER_SQL, {"id": call_id}, fresh=fresh)
            if rows:
                resolved = self._sql(_RESOLVE_SQL, {"id": call_id}, fresh=False)
                return CallOwner(resolved[0]["call_id"] if resolved else call_id, rows[0]["client_key"])
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def existing(self, call_id: str, kind: str, poster: str) -> dict[str, Any] | None:
        """The latest stored event of ``(call_id, kind, poster)`` in the snapshot `owner` took, or None.

        ``call_id`` is the resolved id (`CallOwner.call_id`) when the call was found.
        """
        rows = self._sql(_EXISTING_SQL, {"call": call_id, "kind": kind, "poster": poster}, fresh=False)
        return rows[0] if rows else None

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def same_feedback(stored: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether ``record`` repeats ``stored`` (same value, number and comment)."""
    return (
        stored.get("value") == record.get("value")
        and stored.get("value_num") == record.get("value_num")
        and stored.get("comment") == record.get("comment")
    )
