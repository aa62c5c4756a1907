"""A real full disk for tests: a small tmpfs mounted by the test (root only), and ballast to fill it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"4m"``) mounted at ``path`` for the duration; skips the test unless root."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int = 0) -> int:
    """Write ballast files under ``path`` until the disk is full but ``leave`` bytes; returns bytes written."""
    written = 0
    ballast = path / "ballast"
    with open(ballast, "wb") as f:
        chunk = b"\0" * 65536
        try:
            while True:
                n = os.write(f.fileno(), chunk)
                written += n
                if n < len(chunk):
                    break
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EFBIG):
                raise
    if leave:
        os.truncate(ballast, max(0, written - leave))
        written = max(0, written - leave)
    return written


def free(path: Path) -> None:
    """Remove the ballast: the disk has room again."""
    with contextlib.suppress(FileNotFoundError):
        (path / "ballast").unlink()
