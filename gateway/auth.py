"""Client API keys: issued and revoked by ``shadowtune keys``, stored as SHA-256 hashes only.

Keys live in the state backend (`gateway.state`): ``<state dir>/keys.json`` by default, or
the ``client_keys`` table of PostgreSQL. The gateway re-reads them when they change (within
a second; at once on a database notification), so a revoked key stops working without a
restart. Each key has a
name; the name, never the key, is what the call log records.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError, Unauthorized

if TYPE_CHECKING:
    from gateway.state.base import StateBackend

KEY_PREFIX = "sk-st-"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyFile:
    """Client keys in the state backend at ``location`` (a directory or a ``postgresql://`` URL)."""

    def __init__(self, location: str, *, backend: StateBackend | None = None) -> None:
        from gateway import state

        self.backend = backend or state.open_backend(location)
        self.path = os.path.join(location, "keys.json")  # the file backend's file

    def load(self) -> list[dict[str, Any]]:
        found = self.backend.keys_if_changed(None)
        return list(found[1]) if found else []

    def create(self, name: str) -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        record = {
            "name": name,
            "hash": _hash(key),
            "prefix": key[:10],
            "created": time.time(),
            "revoked": None,
        }
        self.backend.add_key(record)
        return key

    def revoke(self, name: str) -> None:
        self.backend.revoke_key(name, time.time())


class Authenticator:
    """Checks callers' bearer keys on the request path (a dict lookup).

    The key set is refreshed off the request path for a database backend (`refresh`, called
    by the background poll and on change notifications); the file backend's ``stat`` is cheap
    enough to do inline, at most once a second. While the backend is unreachable the last
    known keys keep working.
    """

    def __init__(self, location: str, mode: str, *, backend: StateBackend | None = None) -> None:
        self.mode = mode
        self.file = KeyFile(location, backend=backend)
        self._inline = self.file.backend.kind == "files"
        self._by_hash: dict[str, str] = {}
        self._cache: dict[bytes, str] = {}
        self._marker: Any = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.refresh()
        self.file.backend.subscribe(self._notified)

    @property
    def open(self) -> bool:
        return self.mode == "open" or (self.mode == "auto" and not self._by_hash)

    def _notified(self, what: str) -> None:
        if what in ("keys", "reconnected"):
            with contextlib.suppress(GatewayError):
                self.refresh()

    def refresh(self) -> bool:
        """Re-read the keys if they changed; True when they did."""
        with self._lock:
            self._checked = time.monotonic()
            found = self.file.backend.keys_if_changed(self._marker)
            if found is None:
                return False
            self._marker = found[0]
            by_hash = {k["hash"]: k["name"] for k in found[1] if not k.get("revoked")}
            self._cache = {}
            self._by_hash = by_hash
            return True

    def _refresh(self) -> None:
        if self._inline and time.monotonic() - self._checked >= 1.0:
            with contextlib.suppress(GatewayError):
                self.refresh()

    def check(self, authorization: bytes | None) -> str | None:
        """The key's name, or None in open mode; `Unauthorized` otherwise."""
        self._refresh()
        if self.open:
            return None
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        name = self._cache.get(authorization)
        if name is not None:
            return name
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        name = self._by_hash.get(_hash(token.strip())) if scheme.lower() == "bearer" else None
        if name is None:
            raise Unauthorized("invalid API key")
        if len(self._cache) < 10_000:
            self._cache[authorization] = name
        return name
