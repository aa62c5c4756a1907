"""The review pages' stores opened, and their cheap background values made, when the process starts.

A new process used to pay all of it on the first page someone opened after a deploy or a
restart: opening a `LogStore` (the Delta snapshot and the WAL tail: ~0.5-0.7 s at 10M calls
on local disk, ~0.9 s on object storage), the filter drop-downs' facets, and the random-sample
queue's pool (0.4 s locally, 2.4 s on S3; docs/benchmarks.md). `warm_up` does them once in the
background as the log agent starts, so a page opened a few seconds later finds them ready; a
page opened sooner waits for the store being opened, as it would have opened it itself.
The dashboards are not computed here (seconds to minutes of CPU at 10M calls): their numbers
are kept next to the log, and a restarted process shows the last ones at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.web import _common as web
from gateway.web import _queries as q
from gateway.web import queues

log = logging.getLogger("shadowtune.review")


async def warm_up(state: Any) -> None:
    """Open the review stores, compute the facets and the 24h sample pool (``state.review_warm_s``:
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
    except Exception as exc:  # the pages open their stores themselves, and say why they cannot
        log.info("review pages: warm-up at start failed: %r", exc)
    state.review_warm_s = time.monotonic() - t0
