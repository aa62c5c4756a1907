"""Files written whole or not at all, and locks held on files: the one copy of each.

* `atomic_file` / `write_atomic` / `write_json_atomic`: the new content goes to a temporary file
  beside the target (``<name>.tmp-<pid>-<random>``, so a reader that globs ``*.json`` never sees
  it), is flushed and fsync'd, then renamed over the target, and the folder is fsync'd; a reader
  sees the old file or the new one, never half of one. On any error, the temporary file is removed
  and the target is untouched.
* `try_lock` / `try_locked`: an exclusive ``flock`` taken without waiting, for "only one process
  does this" (a job's leader, compaction, a dead writer's segments). The lock lives as long as its
  file descriptor: a process that dies (kill -9 too) releases it.
* `locked`: the same lock, waited for, around a read-modify-write.

Import-light (the standard library only), so a request worker, the trainer and the evals can use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["atomic_file", "locked", "try_lock", "try_locked", "write_atomic", "write_json_atomic"]

PathLike = str | os.PathLike[str]


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: PathLike, *, mode: int | None = None, sync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` when the block ends without an error.

    ``mode`` sets the file's permissions (e.g. ``0o600`` for a secret) before anything is written;
    ``sync=False`` skips the fsyncs (a cache that can be rebuilt).
    """
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        if mode is not None:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:  # a full disk, an error mid-write: no temporary file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        _fsync_dir(folder)


def write_atomic(path: PathLike, data: bytes | str, *, mode: int | None = None, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), whole or not at all."""
    with atomic_file(path, mode=mode, sync=sync) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(
    path: PathLike,
    data: object,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Callable[[object], object] | None = str,
    mode: int | None = None,
    sync: bool = True,
) -> None:
    """Replace ``path`` with ``data`` as JSON (`json.dumps` with these options), whole or not at all."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default)
    write_atomic(path, text, mode=mode, sync=sync)


def try_lock(path: PathLike, *, mode: int = 0o644) -> int | None:
    """A file descriptor holding an exclusive ``flock`` on ``path`` (created if missing), or None
    when another process holds it. The caller closes the descriptor to release the lock.

    Raises `OSError` when the lock file cannot be opened (a missing or read-only folder).
    """
    fd = os.open(os.fspath(path), os.O_CREAT | os.O_RDWR, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def try_locked(path: PathLike, *, mode: int = 0o644) -> Iterator[bool]:
    """True for the block when this process got the lock on ``path`` without waiting, else False.

    The lock's folder is created if missing; `OSError` when the lock file cannot be opened.
    """
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fd = try_lock(path, mode=mode)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def locked(path: PathLike, *, mode: int = 0o600) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` for the block, waiting for it (its folder is created).

    `OSError` when the lock file cannot be opened.
    """
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fd = os.open(os.fspath(path), os.O_CREAT | os.O_RDWR, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
