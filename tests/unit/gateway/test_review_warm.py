"""The review pages warm up as the log agent starts (`gateway.web._warm`): the stores are open,
the facets and the 24h sample pool computed, before the first reviewer opens a page."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from bench.review_gen import generate
from gateway.config import Settings
from gateway.web import _queries as q
from gateway.web._warm import warm_up


def state_for(log_dir: str) -> SimpleNamespace:
    settings = Settings.model_validate({"store": {"log_dir": log_dir}, "server": {"auth": "open"}})
    return SimpleNamespace(ctx=SimpleNamespace(settings=settings))


def test_warm_up_opens_the_stores_and_computes_the_facets_and_the_sample_pool(tmp_path: Path) -> None:
    log_dir = str(tmp_path / "log")
    generate(log_dir, 2_000, days=1.0, now=time.time(), batch=700)
    state = state_for(log_dir)
    asyncio.run(warm_up(state))
    assert state.review_warm_s > 0
    assert state.review_store._store is not None  # the calls pages' store, open
    assert state.review_background_store._store is not None  # the aggregates' store, open
    items = state.review_cache._items
    facets = items[("facets",)][1]
    assert set(facets["routes"]) == {r["route"] for r in generated_routes(state)}
    until, pool = items[("sample-pool", "24h")][1]
    assert abs(until - q.now_us()) < 600e6
    assert 0 < len(pool) <= 800 and all(r["served"] for r in pool)


def generated_routes(state: SimpleNamespace) -> list[dict[str, str]]:
    return state.review_store.run(
        lambda s: s.sql("SELECT DISTINCT route FROM calls WHERE route IS NOT NULL AND served")
    )


def test_warm_up_never_raises_on_a_log_that_is_not_there(tmp_path: Path) -> None:
    state = state_for(str(tmp_path / "missing"))
    asyncio.run(warm_up(state))  # no exception: the pages report it when asked
    assert state.review_warm_s >= 0
    assert state.review_store._store is None
