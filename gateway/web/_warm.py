"""The review pages' stores opened, and their cheap background values made, when the process starts.

A new process used to pay all of it on the first page someone opened after a deploy or a
restart: opening a `LogStore` (the Delta snapshot and the WAL tail: ~0.5-0.7 s at 10M calls
on local disk, ~0.9 s on object storage), the filter drop-downs' facets, and the random-sample
queue's pool (0.4 s locally, 2.4 s on S3; docs/benchmarks.md). `warm_up` does them once in the
background as the log agent starts, so a page opened a few seconds later finds them ready; a
page opened sooner waits for the store being opened, as it would have opened it itself.
The 24-hour dashboard is computed too (2-4 s of background CPU at 10M calls) when no kept numbers
exist (a brand-new deployment), or read back and refreshed in the background; the longer periods
are not (half a minute and more at 10M calls): they are computed when first asked for, and kept
next to the log, so a restarted process shows the last ones at once.
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


async def warm_up(state: Any) -> None:
    """Open the review stores, compute the facets, the 24h sample pool and dashboard (``state.review_warm_s``:
    the seconds it took, once done).

    Never raises: a log that cannot be read now is the pages' to report when asked.
    """
    t0 = time.monotonic()
    try:
        await asyncio.to_thread(web.shared_of(state).run, lambda store: None)
        background = web.background_of(state)
        await asyncio.to_thread(background.run, lambda store: None)
        await web.cache_of(state).get(("facets",), lambda: background.run(q.facets), wait=600)
        await queues.newest_pool_of(state, "24h", wait=600)
        # the default dashboard: on a brand-new deployment nothing is kept yet (seconds at 10M calls);
        # after a restart the kept numbers are read back, and recomputed in the background if old
        await review.dashboard_numbers(state, "24h", wait=600)
    except Exception as exc:  # the pages open their stores themselves, and say why they cannot
        log.info("review pages: warm-up at start failed: %r", exc)
    state.review_warm_s = time.monotonic() - t0
