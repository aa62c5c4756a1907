"""The file backend: control-plane state in one directory, right for one host.

Layout (the same files earlier versions wrote, so an existing directory keeps working)::

    routes/state.json        live route state with its global version (atomic rename)
    routes/history.jsonl     audit trail, one JSON line per change
    keys.json                client keys (SHA-256 hashes), mode 0600
    controller/<route>.json  documents: controller state (other kinds under <kind>/)
    triggers/runs/<id>.json  trigger runs; triggers/state/<route>.json trigger state
    controller/decisions.jsonl  records (one ``write`` per line, O_APPEND)
    leases.json              job leases: owner, expiry, last run
    responses/<ab>/<sha256>.json  the origin of a Responses API id (its mtime is its expiry)

Every change happens under an exclusive ``flock`` on a lock file next to what it changes,
so several processes on one host are serialised. Readers never lock: files are replaced
atomically. Workers poll for changes by reading the file's bytes and comparing them with what
they last parsed, not by its mtime: a file system's clock tick (a few milliseconds on many
kernels, seconds on some) can give two quick changes one mtime, and a worker would then keep
the first (a split set twice, a key added then revoked). Over NFS the locks are not reliable:
use PostgreSQL (``store.state_url: postgresql://...``) for several hosts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from gateway.state.base import Health, Lease, RouteChange, StateUnavailable
from gateway.store.fileio import locked, write_json_atomic

_DOC_DIRS = {"trigger_run": "triggers/runs", "trigger_state": "triggers/state"}
_RECORD_FILES = {"decisions": "controller/decisions.jsonl"}


_SWEEP_EVERY = 256  # notes between two sweeps of one shard of response ids (256 shards)


class FileBackend:
    kind = "files"

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.health = Health(self.kind, self.root)
        self._routes_cache: tuple[bytes, int, dict[str, Any]] | None = None  # the file, version, doc
        self._notes = 0

    # -- helpers ---------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(locked(self._p(name)))
            except OSError as exc:
                self.health.failure(exc)
                raise StateUnavailable(f"the state directory {self.root} cannot be written: {exc}") from exc
            yield

    def _write_json(self, path: str, data: object, mode: int | None = None, *, sync: bool = True) -> None:
        try:
            write_json_atomic(path, data, indent=1, sort_keys=True, mode=mode, sync=sync)
        except OSError as exc:
            self.health.failure(exc)
            raise StateUnavailable(f"cannot write {path}: {exc}") from exc
        self.health.success()

    @staticmethod
    def _read_bytes(path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    @staticmethod
    def _read_json(path: str) -> Any:
        try:
            with open(path) as f:
                return json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None

    # -- routes ----------------------------------------------------------------------------
    def routes_if_newer(self, version: int) -> tuple[int, dict[str, Any]] | None:
        try:
            raw = self._read_bytes(self._p("routes", "state.json"))
        except OSError:
            return None  # unreadable for now: the backend's health says so when writes fail too
        if raw is None:
            return None
        cache = self._routes_cache
        if cache is None or cache[0] != raw:  # the bytes, not the mtime (see the module docstring)
            try:
                data = json.loads(raw)
            except ValueError:
                return None  # half-written by a foreign tool; the next poll will see the final file
            if not isinstance(data, dict):
                return None
            cache = self._routes_cache = (raw, int(data.get("version", 0)), data)
        return (cache[1], cache[2]) if cache[1] > version else None

    def change_routes(self, fn: RouteChange) -> int:
        path = self._p("routes", "state.json")
        with self._locked("routes/state.lock"):
            data = self._read_json(path) or {}
            version = int(data.get("version", 0))
            doc, entry = fn(version, data)
            new = {**doc, "version": version + 1}
            self._write_json(path, new)
            line = json.dumps({"ts": time.time(), "version": version + 1, **entry}, sort_keys=True)
            self._append(self._p("routes", "history.jsonl"), line)
            return version + 1

    def _append(self, path: str, line: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def _lines(self, path: str) -> list[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                raw = f.read().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for line in raw:
            with contextlib.suppress(ValueError):
                if line.strip():
                    out.append(json.loads(line))
        return out

    def history(self, route: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._lines(self._p("routes", "history.jsonl"))
        if route is not None:
            rows = [r for r in rows if r.get("route") == route]
        return rows[-limit:] if limit else rows

    # -- keys ------------------------------------------------------------------------------
    def _keys(self) -> list[dict[str, Any]]:
        data = self._read_json(self._p("keys.json"))
        return list(data["keys"]) if isinstance(data, dict) else []

    def keys_if_changed(self, marker: Any) -> tuple[Any, list[dict[str, Any]]] | None:
        """``(marker, keys)`` unless the file is still what ``marker`` (a digest of its bytes: see the
        module docstring) says it was; None then."""
        raw = self._read_bytes(self._p("keys.json"))
        digest = hashlib.blake2b(raw, digest_size=16).digest() if raw is not None else None
        if marker is not None and digest == marker:
            return None
        data = json.loads(raw) if raw is not None else None
        return digest, (list(data["keys"]) if isinstance(data, dict) else [])

    def add_key(self, record: dict[str, Any]) -> None:
        with self._locked("keys.lock"):
            keys = self._keys()
            if any(k["name"] == record["name"] and not k.get("revoked") for k in keys):
                raise ValueError(f"a key named {record['name']!r} already exists")
            self._write_json(self._p("keys.json"), {"keys": [*keys, record]}, mode=0o600)

    def revoke_key(self, name: str, at: float) -> None:
        with self._locked("keys.lock"):
            keys = self._keys()
            found = [k for k in keys if k["name"] == name and not k.get("revoked")]
            if not found:
                raise ValueError(f"no active key named {name!r}")
            for k in found:
                k["revoked"] = at
            self._write_json(self._p("keys.json"), {"keys": keys}, mode=0o600)

    # -- documents and records -------------------------------------------------------------
    def _doc_path(self, kind: str, name: str) -> str:
        return self._p(_DOC_DIRS.get(kind, kind), urllib.parse.quote(name, safe="") + ".json")

    def get_doc(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            data = self._read_json(self._doc_path(kind, name))
        except (OSError, ValueError) as exc:
            raise StateUnavailable(f"cannot read {kind} {name!r}: {exc}") from exc
        return data if isinstance(data, dict) else None

    def put_doc(self, kind: str, name: str, doc: dict[str, Any]) -> None:
        self._write_json(self._doc_path(kind, name), doc)

    def update_doc(
        self, kind: str, name: str, fn: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        path = self._doc_path(kind, name)
        with self._locked(os.path.relpath(path[: -len(".json")] + ".lock", self.root)):
            doc = fn(self.get_doc(kind, name))
            self._write_json(path, doc)
            return doc

    def list_docs(self, kind: str) -> list[dict[str, Any]]:
        folder = self._p(_DOC_DIRS.get(kind, kind))
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for n in names:
            with contextlib.suppress(OSError, ValueError):
                data = self._read_json(os.path.join(folder, n))
                if isinstance(data, dict):
                    out.append(data)
        return out

    def append_record(self, kind: str, record: dict[str, Any]) -> None:
        path = self._p(_RECORD_FILES.get(kind, f"{kind}.jsonl"))
        try:
            self._append(path, json.dumps(record, default=str))
        except OSError as exc:
            self.health.failure(exc)
            raise StateUnavailable(f"cannot append to {path}: {exc}") from exc

    def records(self, kind: str, route: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        rows = self._lines(self._p(_RECORD_FILES.get(kind, f"{kind}.jsonl")))
        if route is not None:
            rows = [r for r in rows if r.get("route") == route]
        return rows[-limit:] if limit else rows

    # -- leases ----------------------------------------------------------------------------
    def _leases(self, fn: Callable[[dict[str, Any], float], Any]) -> Any:
        with self._locked("leases.lock"):
            path = self._p("leases.json")
            try:
                data = self._read_json(path) or {}
            except ValueError:
                data = {}
            before = json.dumps(data, sort_keys=True)
            now = time.time()
            result = fn(data, now)
            if json.dumps(data, sort_keys=True) != before:
                self._write_json(path, data, sync=False)  # renewed every few seconds: no fsync each time
            return result

    def acquire_lease(self, name: str, owner: str, ttl: float) -> Lease:
        def take(data: dict[str, Any], now: float) -> Lease:
            rec = data.get(name)
            if rec is None:
                rec = data[name] = {"owner": owner, "expires_at": now + ttl, "last_run": now}
            elif rec.get("owner") == owner or float(rec.get("expires_at") or 0) < now:
                rec.update(owner=owner, expires_at=now + ttl)
            held = rec["owner"] == owner
            return Lease(name, rec["owner"], held, float(rec["expires_at"]), rec.get("last_run"), now)

        result: Lease = self._leases(take)
        return result

    def mark_run(self, name: str, owner: str, not_after: float, at: float | None = None) -> float | None:
        def mark(data: dict[str, Any], now: float) -> float | None:
            rec = data.get(name)
            if rec is None or rec.get("owner") != owner or float(rec.get("expires_at") or 0) < now:
                return None
            if rec.get("last_run") is not None and float(rec["last_run"]) > not_after:
                return None
            rec["last_run"] = now if at is None else at
            return float(rec["last_run"])

        result: float | None = self._leases(mark)
        return result

    def release_lease(self, name: str, owner: str) -> None:
        def release(data: dict[str, Any], now: float) -> None:
            rec = data.get(name)
            if rec is not None and rec.get("owner") == owner:
                rec["expires_at"] = 0.0

        self._leases(release)

    # -- Responses API ids -----------------------------------------------------------------
    def _response_path(self, response_id: str) -> str:
        digest = hashlib.sha256(response_id.encode("utf-8", "surrogatepass")).hexdigest()
        return self._p("responses", digest[:2], digest + ".json")

    def note_response(self, response_id: str, origin: dict[str, Any], ttl: float) -> None:
        """One small file per id, replaced atomically (no fsync: a lost id only sends its
        continuation to the baseline); its mtime is set to its expiry, which the sweep reads."""
        path = self._response_path(response_id)
        expires = time.time() + ttl
        self._write_json(path, {"id": response_id, "origin": origin, "expires_at": expires}, sync=False)
        with contextlib.suppress(OSError):
            os.utime(path, (expires, expires))
        self._notes += 1
        if self._notes % _SWEEP_EVERY == 0:
            self._sweep_responses(f"{(self._notes // _SWEEP_EVERY) % 256:02x}")

    def _sweep_responses(self, shard: str) -> int:
        folder = self._p("responses", shard)
        now = time.time()
        removed = 0
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return 0
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.name.endswith(".json") and entry.stat().st_mtime < now:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def response_origin(self, response_id: str) -> dict[str, Any] | None:
        try:
            data = self._read_json(self._response_path(response_id))
        except (OSError, ValueError):
            return None  # unreadable or half-written by a foreign tool: unknown
        if not isinstance(data, dict) or data.get("id") != response_id:
            return None
        if float(data.get("expires_at") or 0) < time.time():
            return None
        origin = data.get("origin")
        return origin if isinstance(origin, dict) else None

    def forget_response(self, response_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self._response_path(response_id))

    # -- notifications ---------------------------------------------------------------------
    def subscribe(self, callback: Callable[[str], None]) -> None:
        """No push on one host: workers poll (a small file read and compared)."""

    def close(self) -> None:
        pass
