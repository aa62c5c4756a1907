"""Shared control-plane state: one backend per process, chosen by ``store.state_url``.

* a directory (the default: ``store.state_dir``, else the log directory): `FileBackend`,
  right for one host with any number of worker processes;
* ``postgresql://user@host/db``: `PostgresBackend`, for several hosts.

`open_backend(location)` returns the process's backend for a location (cached, so the
workers' route state, keys and job leases share one connection pool). This module and its
backends never import the server: the gateway, the CLI, evals and the trainer all reach the
state through it (or through the admin API).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from gateway.state.base import Health, Lease, StateBackend, StateUnavailable

_backends: dict[str, StateBackend] = {}
_lock = threading.Lock()


def is_database_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def open_backend(location: str) -> StateBackend:
    """The backend for ``location`` (a directory or a ``postgresql://`` URL), made once per process."""
    with _lock:
        backend = _backends.get(location)
        if backend is None:
            backend = new_backend(location)
            _backends[location] = backend
        return backend


def new_backend(location: str) -> StateBackend:
    """A backend object of its own for ``location`` (as another process would have); `open_backend` shares one."""
    if is_database_url(location):
        from gateway.state.postgres import PostgresBackend

        return PostgresBackend(location)
    from gateway.state.files import FileBackend

    return FileBackend(location.removeprefix("file://"))


def describe(location: str) -> str:
    """``location`` fit for a log line (no password)."""
    if is_database_url(location):
        from gateway.state.postgres import redact

        return redact(location)
    return location


def close_all() -> None:
    with _lock:
        for backend in _backends.values():
            backend.close()
        _backends.clear()


def location_of(settings: Any) -> str:
    """Where ``settings`` put the state: ``store.state_url``, else the state directory."""
    store = settings.store
    return str(getattr(store, "state_url", None) or store.state_path)


__all__ = [
    "Health",
    "Lease",
    "LeaseBusy",
    "StateBackend",
    "StateUnavailable",
    "close_all",
    "describe",
    "hold",
    "is_database_url",
    "location_of",
    "new_backend",
    "open_backend",
]


@contextlib.contextmanager
def hold(backend: StateBackend, name: str, *, ttl: float = 60.0, what: str | None = None) -> Iterator[Lease]:
    """Hold the lease ``name`` for the duration of a block (renewed every ``ttl / 3`` seconds).

    Raises `LeaseBusy` when another live owner holds it. The lease is released at the end;
    a holder that dies stops renewing and the lease expires after ``ttl``."""
    import os
    import secrets
    import socket

    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    lease = backend.acquire_lease(name, owner, ttl)
    if not lease.held:
        raise LeaseBusy(f"{what or name} is already in progress (held by {lease.owner})")
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl / 3):
            with contextlib.suppress(StateUnavailable):
                backend.acquire_lease(name, owner, ttl)

    keeper = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    keeper.start()
    try:
        yield lease
    finally:
        done.set()
        keeper.join(5)
        with contextlib.suppress(StateUnavailable):
            backend.release_lease(name, owner)


class LeaseBusy(Exception):
    """Another live process holds the lease."""
