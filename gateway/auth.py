"""Client API keys: issued and revoked by ``shadowtune keys``, stored as SHA-256 hashes only.

The key file is ``<log_dir>/keys.json``. The gateway re-reads it when it changes (checked
at most once a second), so a revoked key stops working without a restart. Each key has a
name; the name, never the key, is what the call log records.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from typing import Any

from gateway.errors import Unauthorized

KEY_PREFIX = "sk-st-"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyFile:
    def __init__(self, log_dir: str) -> None:
        self.path = os.path.join(log_dir, "keys.json")

    def load(self) -> list[dict[str, Any]]:
        try:
            with open(self.path) as f:
                return list(json.load(f)["keys"])
        except (FileNotFoundError, NotADirectoryError):  # no key file (yet): no keys
            return []

    def _save(self, keys: list[dict[str, Any]]) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"keys": keys}, f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def create(self, name: str) -> str:
        keys = self.load()
        if any(k["name"] == name and not k.get("revoked") for k in keys):
            raise ValueError(f"a key named {name!r} already exists")
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        keys.append(
            {"name": name, "hash": _hash(key), "prefix": key[:10], "created": time.time(), "revoked": None}
        )
        self._save(keys)
        return key

    def revoke(self, name: str) -> None:
        keys = self.load()
        found = False
        for k in keys:
            if k["name"] == name and not k.get("revoked"):
                k["revoked"] = time.time()
                found = True
        if not found:
            raise ValueError(f"no active key named {name!r}")
        self._save(keys)


class Authenticator:
    """Checks callers' bearer keys on the request path (a dict lookup)."""

    def __init__(self, log_dir: str, mode: str) -> None:
        self.mode = mode
        self.file = KeyFile(log_dir)
        self._by_hash: dict[str, str] = {}
        self._cache: dict[bytes, str] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._refresh(force=True)

    @property
    def open(self) -> bool:
        return self.mode == "open" or (self.mode == "auto" and not self._by_hash)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = os.stat(self.file.path).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):  # no key file (yet): no keys
            mtime = None
        if mtime == self._mtime and not force:
            return
        self._mtime = mtime
        self._by_hash = {k["hash"]: k["name"] for k in self.file.load() if not k.get("revoked")}
        self._cache.clear()

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
