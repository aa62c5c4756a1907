"""The state backend interface: what every backend (files, PostgreSQL) provides.

The control plane's state is small and shared by every worker of every replica: the live
route state with its version, the audit history of changes, client keys (hashes only),
named documents (controller state, trigger state and runs), append-only records
(controller decisions), job leases, and which upstream created a Responses API response id
(`note_response`, kept for a TTL). `StateBackend` is the whole contract; the request
path never calls it (workers keep a snapshot and refresh it in the background).

Failures to reach the backend raise `StateUnavailable`, an OpenAI-shaped 503: a change
attempted during an outage is refused, never queued or lost. `health()` says whether the
last operation worked, for ``/healthz``, metrics and the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import GatewayError

RouteChange = Callable[[int, dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]
"""``fn(version, doc) -> (new_doc, history_entry)``, called under the backend's write lock."""


class StateUnavailable(GatewayError):
    """The state backend cannot be reached: nothing was changed."""

    status = 503
    type = "server_error"
    code = "state_unavailable"


@dataclass(frozen=True)
class Lease:
    """One job lease as the backend saw it (times on the backend's clock, epoch seconds)."""

    name: str
    owner: str | None
    held: bool
    """True when the caller holds it (just taken, renewed, or taken over from a dead holder)."""
    expires_at: float
    last_run: float | None
    now: float


class Health:
    """The backend's health as its last operations saw it (thread-safe enough: plain assignments)."""

    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location
        self.ok = True
        self.last_error: str | None = None
        self.down_since: float | None = None
        self.failures = 0
        self.listening: bool | None = None

    def success(self) -> None:
        if not self.ok:
            import logging

            logging.getLogger("shadowtune.state").warning(
                "state backend %s is reachable again after %.1f s",
                self.location,
                time.time() - (self.down_since or time.time()),
            )
        self.ok = True
        self.down_since = None

    def failure(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self.ok:
            import logging

            logging.getLogger("shadowtune.state").error(
                "state backend %s is unavailable (serving on the last known state; changes are refused): %s",
                self.location,
                self.last_error,
            )
            self.down_since = time.time()
        self.ok = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "location": self.location,
            "healthy": self.ok,
            "down_since": self.down_since,
            "failures": self.failures,
            "last_error": self.last_error,
            "listening": self.listening,
        }


class StateBackend(Protocol):
    """Shared control-plane state. Every method may raise `StateUnavailable`."""

    kind: str
    health: Health

    # -- live route state and its audit history ---------------------------------------------
    def routes_if_newer(self, version: int) -> tuple[int, dict[str, Any]] | None:
        """``(version, doc)`` when the stored state is newer than ``version`` (cheap otherwise)."""

    def change_routes(self, fn: RouteChange) -> int:
        """Apply ``fn`` atomically with its history entry; returns the new version."""

    def history(self, route: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries (oldest first; the last ``limit``), of one route or all."""

    # -- client keys ---------------------------------------------------------------------
    def keys_if_changed(self, marker: Any) -> tuple[Any, list[dict[str, Any]]] | None:
        """``(marker, keys)`` when the keys changed since ``marker`` (None: never read)."""

    def add_key(self, record: dict[str, Any]) -> None:
        """Store a key record; `ValueError` when an active key has the same name."""

    def revoke_key(self, name: str, at: float) -> None:
        """Revoke the active key ``name``; `ValueError` when there is none."""

    # -- documents and records -----------------------------------------------------------
    def get_doc(self, kind: str, name: str) -> dict[str, Any] | None: ...

    def put_doc(self, kind: str, name: str, doc: dict[str, Any]) -> None: ...

    def update_doc(
        self, kind: str, name: str, fn: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        """Read, change and write one document with no other `update_doc` of it in between: ``fn``
        gets the stored document (None: none yet) and returns the one to store, which is returned.
        For documents two writers change in part (the controller's fields, an operator's pause)."""

    def list_docs(self, kind: str) -> list[dict[str, Any]]:
        """Every document of ``kind``, ordered by name."""

    def append_record(self, kind: str, record: dict[str, Any]) -> None: ...

    def records(self, kind: str, route: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Records of ``kind`` (of one route), oldest first; the last ``limit``."""

    # -- job leases ----------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, ttl: float) -> Lease:
        """Take the lease if it is free, expired or ours, and extend it by ``ttl`` seconds.

        A lease taken for the first time gets ``last_run = now``: its first run is one
        interval later, never at once."""

    def mark_run(self, name: str, owner: str, not_after: float, at: float | None = None) -> float | None:
        """Record a run (at ``at``, its scheduled time, else now) if ``owner`` still holds the
        lease and the last run is at or before ``not_after``; returns the recorded time, or
        None (the lease was lost, or someone else ran it)."""

    def release_lease(self, name: str, owner: str) -> None: ...

    # -- Responses API ids -----------------------------------------------------------------
    def note_response(self, response_id: str, origin: dict[str, Any], ttl: float) -> None:
        """Remember ``origin`` (route, variant, upstream, client key) of ``response_id`` for ``ttl``
        seconds; expired entries are swept now and then by the writers."""

    def response_origin(self, response_id: str) -> dict[str, Any] | None:
        """What `note_response` stored for ``response_id``, unless it expired or was forgotten."""

    def forget_response(self, response_id: str) -> None: ...

    # -- notifications -------------------------------------------------------------------
    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("routes" | "keys")`` (from another thread) when a change is made anywhere."""

    def close(self) -> None: ...
