"""The review pages' stores opened, and their cheap background values made, when the process starts.

A new process used to pay all of it on the first page someone opened after a deploy or a
restart: opening a `LogStore` (the Delta snapshot and the WAL tail: ~0.5-0.7 s at 10M calls
on local disk, ~0.9 s on object storage), the filter drop-downs' facets, and the random-sample
queue's pool (0.4 s locally, 2.4 s on S3; docs/benchmarks.md). `warm_up` does them once in the
background as the log agent starts, so a page opened a few seconds later finds them ready; a
page opened sooner waits for the store being opened, as it would have opened it itself.
The 24-hour, 7-day and 30-day dashboards are computed too, shortest first, when no numbers are
kept for them (a brand-new deployment, or new routes or prices): 2-4 s and ~33 s of background
work for the first two at 10M calls on local disk (3 s and ~39 s on object storage), under the agent's query
bounds (`gateway.store.reader.limit_queries`), once; then they are kept next to the log, and a
restarted process shows the last ones at once (and recomputes them when a page asks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.web import _common as web
from gateway.web import _queries as q
from gateway.web import queues, review

log = logging.getLogger("shadowtune.review")

WARM_DASHBOARDS = ("24h", "7d", "30d")
"""Periods whose dashboard the warm-up computes when no numbers are kept, shortest first."""


async def warm_up(state: Any) -> None:
    """Open the review stores, compute the facets and the 24h sample pool (then
    ``state.review_warm_s`` says how long that took), then the dashboards nothing has computed
    yet (then ``state.review_dashboards_s``). Never raises: a log that cannot be read now is the
    pages' to report when asked."""
    t0 = time.monotonic()
    try:
        await asyncio.to_thread(web.shared_of(state).run, lambda store: None)
        background = web.background_of(state)
        await asyncio.to_thread(background.run, lambda store: None)
        await web.cache_of(state).get(("facets",), lambda: background.run(q.facets), wait=600)
        await queues.newest_pool_of(state, "24h", wait=600)
    except Exception as exc:  # the pages open their stores themselves, and say why they cannot
        log.info("review pages: warm-up at start failed: %r", exc)
        state.review_warm_s = state.review_dashboards_s = time.monotonic() - t0
        return
    state.review_warm_s = time.monotonic() - t0
    try:
        # the dashboards nothing has computed yet (a brand-new deployment, new routes or prices):
        # seconds (24h) to half a minute (7d, 30d) at 10M calls; kept ones are read when a page asks
        kept = web.cache_of(state).snapshots
        for period in WARM_DASHBOARDS:
            key, _ = review.dashboard_job(state, period)
            if kept is None or await asyncio.to_thread(kept.load, key) is None:
                await review.dashboard_numbers(state, period, wait=3600)
    except Exception as exc:  # the page computes it when asked, and says why it cannot
        log.info("review pages: a dashboard's warm-up failed: %r", exc)
    state.review_dashboards_s = time.monotonic() - t0
