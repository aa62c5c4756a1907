"""Bounded background runner for shadow calls: nothing on the user's path waits on it.

At most ``max_in_flight`` shadow calls run at once and ``queue_size`` wait; anything
beyond is skipped and counted by reason, as are requests sampled out by a route's
``shadow_rate``. A shadow call's failure is logged as its own row and never surfaces.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("shadowtune.shadow")

ShadowJob = Callable[[], Coroutine[Any, Any, None]]


class ShadowRunner:
    def __init__(self, max_in_flight: int = 64, queue_size: int = 256) -> None:
        self.max_in_flight = max_in_flight
        self.queue_size = queue_size
        self.in_flight = 0
        self.started = 0
        self.skipped: Counter[tuple[str, str]] = Counter()  # (route, reason) -> count
        self._queue: deque[ShadowJob] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def skip(self, route: str, reason: str) -> None:
        self.skipped[(route, reason)] += 1

    def submit(self, route: str, job: ShadowJob) -> None:
        if self.in_flight < self.max_in_flight:
            self._start(job)
        elif len(self._queue) < self.queue_size:
            self._queue.append(job)
        else:
            self.skip(route, "queue_full")

    def _start(self, job: ShadowJob) -> None:
        self.in_flight += 1
        self.started += 1
        task = asyncio.get_running_loop().create_task(job())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        if not task.cancelled() and task.exception() is not None:
            log.warning("shadow call failed outside its own handling: %r", task.exception())
        if self._queue:
            self._start(self._queue.popleft())

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for running shadow calls, then cancel what is left."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        self._queue.clear()

    def status(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "queued": self.depth,
            "started": self.started,
            "skipped": [
                {"route": r, "reason": why, "count": n} for (r, why), n in sorted(self.skipped.items())
            ],
        }
