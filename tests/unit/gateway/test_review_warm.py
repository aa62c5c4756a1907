"""The review pages warm up as the log agent starts (`gateway.web._warm`): the stores are open,
the facets, the 24h sample pool and the dashboards computed, before the first reviewer opens a page."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from bench.review_gen import generate
from gateway.config import Settings
from gateway.web import _queries as q
from gateway.web import review
from gateway.web._warm import warm_up


def state_for(log_dir: str) -> SimpleNamespace:
    settings = Settings.model_validate({"store": {"log_dir": log_dir}, "server": {"auth": "open"}})
    routes = SimpleNamespace(snapshot=SimpleNamespace(routes={}))  # no configured routes: the log's
    return SimpleNamespace(ctx=SimpleNamespace(settings=settings, routes=routes))


def test_warm_up_opens_the_stores_and_computes_the_facets_and_the_sample_pool(tmp_path: Path) -> None:
    log_dir = str(tmp_path / "log")
    generate(log_dir, 2_000, days=1.0, now=time.time(), batch=700)
    state = state_for(log_dir)
    asyncio.run(warm_up(state))
    assert state.review_dashboards_s >= state.review_warm_s > 0
    assert state.review_store._store is not None  # the calls pages' store, open
    assert state.review_background_store._store is not None  # the aggregates' store, open
    items = state.review_cache._items
    facets = items[("facets",)][1]
    assert set(facets["routes"]) == {r["route"] for r in generated_routes(state)}
    until, pool = items[("sample-pool", "24h")][1]
    assert abs(until - q.now_us()) < 600e6
    assert 0 < len(pool) <= 800 and all(r["served"] for r in pool)
    for period, seconds in (("24h", 86_400), ("7d", 7 * 86_400), ("30d", 30 * 86_400)):  # nothing kept yet
        (numbers,) = [v for k, (_, v) in items.items() if k[0] == "dashboard" and k[1] == period]
        assert {r["route"] for r in numbers["table"]} == set(facets["routes"])
        assert numbers["hi"] - numbers["lo"] == seconds * 1_000_000
        calls = routed_calls(state, numbers["lo"], numbers["hi"])
        assert sum(r["calls"] for r in numbers["table"]) == calls > 0


def test_a_restart_reads_the_kept_dashboards_instead_of_computing_them(tmp_path: Path) -> None:
    log_dir = str(tmp_path / "log")
    generate(log_dir, 1_000, days=1.0, now=time.time(), batch=500)
    asyncio.run(warm_up(state_for(log_dir)))
    again = state_for(log_dir)  # a new process on the same log: the numbers are kept next to it
    computed: list[str] = []
    real = review.dashboard_numbers

    async def counting(state: SimpleNamespace, period: str, **kw: float) -> object:
        computed.append(period)
        return await real(state, period, **kw)

    review.dashboard_numbers = counting  # type: ignore[assignment]
    try:
        asyncio.run(warm_up(again))
    finally:
        review.dashboard_numbers = real  # type: ignore[assignment]
    assert computed == []
    assert again.review_background_store._store is not None


def routed_calls(state: SimpleNamespace, lo: int, hi: int) -> int:
    """Routed calls in the dashboard's window (its bounds: `gateway.web._series.window`)."""
    rows = state.review_store.run(
        lambda s: s.sql(
            "SELECT count(*) AS n FROM calls WHERE route IS NOT NULL "
            "AND epoch_us(ts) >= $lo AND epoch_us(ts) < $hi",
            {"lo": lo, "hi": hi},
        )
    )
    return int(rows[0]["n"])


def generated_routes(state: SimpleNamespace) -> list[dict[str, str]]:
    return state.review_store.run(
        lambda s: s.sql("SELECT DISTINCT route FROM calls WHERE route IS NOT NULL AND served")
    )


def test_warm_up_never_raises_on_a_log_that_is_not_there(tmp_path: Path) -> None:
    state = state_for(str(tmp_path / "missing"))
    asyncio.run(warm_up(state))  # no exception: the pages report it when asked
    assert state.review_warm_s >= 0
    assert state.review_store._store is None
