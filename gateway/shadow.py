"""Shadow calls: which served calls get one (`ShadowSubmitter`), and the bounded runner
that makes them in the background (`ShadowRunner`): nothing on the user's path waits on it.

After a call is served, `ShadowSubmitter.after` looks at its plan: the variant to shadow is
submitted as a job that calls it with the same request body (`gateway.serving`) and logs its
answer as an ``attempt: shadow`` row; a call whose fallback already asked that variant, or
that the route's ``shadow_rate`` left out, is counted as skipped with its reason.

At most ``max_in_flight`` shadow calls run at once and ``queue_size`` wait; anything
beyond is skipped and counted by reason. A shadow call's failure is logged as its own row
and never surfaces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.serving import Attempt, CallContext, Serving, drain, log_sent
from gateway.store.ids import new_id

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


class ShadowSubmitter:
    """Decides, after a served call, whether it gets a shadow call, and submits it."""

    def __init__(self, serving: Serving, runner: ShadowRunner) -> None:
        self.serving = serving
        self.runner = runner

    def after(self, ctx: CallContext, why: str | None) -> None:
        """Called once the served call is logged; ``why`` is the reason its plan was constrained."""
        plan, state = ctx.plan, ctx.state
        if plan.shadow is not None and plan.shadow == ctx.rec.variant:
            self.runner.skip(state.route, "fallback")  # the fallback already asked that variant
        elif plan.shadow is not None:
            self.submit(ctx, plan.shadow)
        elif state.mode in ("shadow", "primary") and state.candidate is not None:
            self.runner.skip(state.route, why or "sampled")  # left out by the route's shadow_rate

    def submit(self, ctx: CallContext, variant: str) -> None:
        serving, state = self.serving, ctx.state
        name = state.candidate if variant == "candidate" else state.baseline

        async def job() -> None:
            t0 = time.perf_counter()
            # the caller's trace context goes along: the shadow span's link must find the served span
            row = ctx.rec.shadow_of(new_id("call"), time.time_ns() // 1000, variant, ctx.stream)
            attempt = Attempt(row.call_id, variant, name or "")
            await serving.open(attempt, ctx, name)
            log_sent(row, attempt, state.store_bodies)
            serving.upstream_fields(row, attempt.upstream, ctx)
            serving.log_attempt(row, attempt, t0, body=await drain(attempt), store_body=state.store_bodies)

        self.runner.submit(state.route, job)
