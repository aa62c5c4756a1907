"""What a test needs from the machine: a skip on a developer's machine that lacks it, a failure under CI.

`.ci/run` exports ``CI=1`` and provides everything named here (Chromium and PostgreSQL from Debian's
packages; per-thread I/O accounting from the kernel of the machines it runs on), so a missing part there
is a broken run, never a silently skipped test.
"""

from __future__ import annotations

import os

import pytest


def require(present: bool, missing: str, hint: str) -> None:
    """Fail under CI, else skip, when ``present`` is false (``missing``: what is absent; ``hint``: how to get it)."""
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{missing} under CI")
    pytest.skip(f"{missing} ({hint})")
