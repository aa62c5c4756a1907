"""Closed WAL segments converted in a child process of the log agent (``store.convert_process``).

The agent's two threads share one GIL: the tail (parse, telemetry, the feedback index) and
the conversion (derive, Arrow, Parquet, Delta commits) take turns on one core. With
``store.convert_process`` on, the conversion of a closed segment runs in a child process
instead, on another core, while the agent's tail goes on reading the WAL; the agent's own
thread only waits for the child's answer (`ConvertProcess.convert`).

The child does what the agent did in its thread, in the same code: it reads the segment
chunk by chunk into Arrow (`gateway.agent.tail.WalTailer.reparse`, the agent's path for a
segment whose rows it did not keep), converts it with `gateway.store.conversion.
convert_segment` (one commit per table, recorded as the segment's Delta app transaction:
exactly once) and returns the `Converted` counts (not its rows) for the agent to count. So
a child killed at any moment is an agent killed mid-conversion: the segment stays and is
converted again, nothing counted twice. The child dies with the agent (``PR_SET_PDEATHSIG``
on Linux, and it checks its parent before each segment), so no conversion outlives the
agent's host lock.

The cost, measured in ``docs/benchmarks.md``: every record is parsed twice (once by the tail
for telemetry, once by the child): a third to a half more CPU per row in all; the child's
memory (its imports and one segment's Arrow tables, ~170 MiB) comes on top of the agent's,
which no longer keeps the tail's tables (~235 MiB instead of ~340 in the agent bench). Off by
default: it can only pay where the host has a core to spare (on the shared 2-core machine of
``docs/benchmarks.md`` it was slower).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import ctypes.util
import multiprocessing as mp
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gateway.agent.process import release_freed_memory
from gateway.store.conversion import Converted

_PR_SET_PDEATHSIG = 1
_PARENT: int | None = None


class ChildDied(OSError):
    """The conversion process died (killed, out of memory): the segment stays, to be tried again."""


def _init_child(parent: int) -> None:
    """In the child: die with the agent, keep pandas out (as the agent does)."""
    global _PARENT
    _PARENT = parent
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent check below still holds
        pass
    if os.getppid() != parent:
        os._exit(1)  # the agent died before the signal was armed
    from gateway.agent.process import without_pandas

    without_pandas()


def _convert(log_dir: str, wal_dir: str, writer_id: str, seg: str) -> Converted:
    """In the child: one closed segment, as `gateway.agent.core.LogAgent.convert` would in its thread."""
    if _PARENT is not None and os.getppid() != _PARENT:
        os._exit(1)  # the agent is gone: its successor converts (its host lock is free)
    from gateway.agent.tail import WalTailer
    from gateway.store import conversion

    if not os.path.exists(seg):
        raise FileNotFoundError(seg)
    parsed = WalTailer(wal_dir).reparse(seg)  # None: a line too long to read in chunks (read whole)
    done = conversion.convert_segment(log_dir, wal_dir, writer_id, seg, parsed=parsed)
    done.batches = []  # the agent's listeners had the rows from its tail: only counts go back
    del parsed
    release_freed_memory()  # the segment's tables are freed
    return done


def _warm() -> int:
    """In the child: import what a conversion needs, before the first segment waits for it."""
    import gateway.agent.tail
    import gateway.store.conversion  # noqa: F401

    return os.getpid()


class ConvertProcess:
    """One child process that converts closed segments (started with the agent, again if it died)."""

    def __init__(self, log_dir: str, wal_dir: str, writer_id: str) -> None:
        self.log_dir = log_dir
        self.wal_dir = wal_dir
        self.writer_id = writer_id
        self.restarts = 0
        self._pool: cf.ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the child now (it imports pyarrow and delta-rs: about a second), not at the first segment."""
        self._ensure().submit(_warm)

    def _ensure(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=1,
                mp_context=mp.get_context("spawn"),  # the agent has threads: no fork
                initializer=_init_child,
                initargs=(os.getpid(),),
            )
        return self._pool

    def convert(self, seg: str) -> Converted:
        """Convert ``seg`` in the child and wait; raises what the conversion raised (`OSError`,
        `FileNotFoundError`), or `ChildDied` when the child died meanwhile."""
        try:
            job = self._ensure().submit(_convert, self.log_dir, self.wal_dir, self.writer_id, seg)
            result: Any = job.result()
        except BrokenProcessPool as exc:
            self.close()
            self.restarts += 1
            raise ChildDied(f"the conversion process died: {exc}") from exc
        assert isinstance(result, Converted)
        return result

    @property
    def pid(self) -> int | None:
        procs = getattr(self._pool, "_processes", None) or {}
        return next(iter(procs), None)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
