"""The calls list's bounded text search (`gateway.web._search`) on a real multi-day log.

The log is the review benchmark's (`bench.review_gen`, written through the store's commit
path): 30,000 calls over three days, several files per day partition of unequal sizes. Each
property is checked against a brute-force query over the whole log: walking a search page by
page -- on a budget so small that every page stops after one chunk, or on one large enough to
fill its pages -- shows every matching call exactly once, newest first, and no other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.review_gen import generate
from gateway.store import LogStore
from gateway.web import _queries as q
from gateway.web import _search

NOW = time.time()
NOW_US = int(NOW * 1e6)


def _log(
    factory: pytest.TempPathFactory, name: str, calls: int, days: float, batch: int
) -> Iterator[LogStore]:
    log = str(factory.mktemp(name) / "log")
    generate(log, calls, days=days, now=NOW, batch=batch)
    with LogStore.open(log) as s:
        yield s


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogStore]:
    yield from _log(tmp_path_factory, "search", 30_000, 3.0, 7_000)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogStore]:
    yield from _log(tmp_path_factory, "search-small", 1_500, 2.0, 400)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogStore]:
    """A log whose calls stopped 20 hours before now (a quiet night; a benchmark's log, hours later)."""
    log = str(tmp_path_factory.mktemp("search-quiet") / "log")
    generate(log, 6_000, days=2.0, now=NOW - 20 * 3600, batch=2_000)
    with LogStore.open(log) as s:
        yield s


def brute(store: LogStore, flt: q.CallFilter) -> list[str]:
    """Every matching call id, newest first (one query over the whole log, no pruning)."""
    where, params = flt.where()
    rows = store.sql(f"SELECT call_id FROM calls WHERE {where} ORDER BY ts DESC, call_id DESC", params)
    return [r["call_id"] for r in rows]


def search_page(
    store: LogStore, flt: q.CallFilter, before: _search.Cursor | None = None, **kw: Any
) -> _search.Found:
    """One page of ``flt``'s search at `NOW_US`, older than ``before``, down to the log's start."""
    where, params = flt.where(text=False)
    return _search.search(
        store,
        where,
        params,
        q.LIST_COLUMNS,
        terms=flt.text_terms(),
        need=q.PAGE_SIZE + 1,
        floor_us=q.oldest_us(store),
        before=before,
        now_us=NOW_US,
        **kw,
    )


def walk(store: LogStore, flt: q.CallFilter, **kw: Any) -> tuple[list[str], list[_search.Found]]:
    """Follow a search's pages the way the page's links do, to the floor (the log's start)."""
    before: _search.Cursor | None = None
    shown: list[str] = []
    pages: list[_search.Found] = []
    for _ in range(2000):
        found = search_page(store, flt, before, **kw)
        pages.append(found)
        page = found.rows[: q.PAGE_SIZE]
        shown += [r["call_id"] for r in page]
        if found.full:
            before = _search.Cursor(page[-1]["ts_us"], page[-1]["call_id"])
        elif found.complete:
            return shown, pages
        else:
            before = _search.Cursor(found.searched_from_us)
    raise AssertionError("the search never reached the log's start")


def test_the_estimates_come_from_the_partitions_row_counts(store):
    per_day = _search.day_rows(store)
    assert sum(per_day.values()) == 30_000 and len(per_day) >= 3
    whole = _search.rows_between(per_day, q.oldest_us(store), NOW_US + 1, NOW_US)
    assert whole == pytest.approx(30_000)
    assert 0 < _search.rows_between(per_day, NOW_US - 3_600_000_000, NOW_US, NOW_US) < 2_000


@pytest.mark.parametrize("text", ["order 12", "ORDER 4", "12 due?", "nothing like this"])
def test_a_search_on_a_spent_budget_stops_after_each_chunk_and_misses_nothing(store, text):
    flt = q.CallFilter(q=text)
    shown, pages = walk(store, flt, budget_s=0.0, first_rows=2_000)
    assert shown == brute(store, flt)
    assert len(pages) > 5  # it stopped early, page after page
    for found in pages:  # each page covered its own stretch, the next one the stretch before
        assert all(found.searched_from_us <= r["ts_us"] < found.upper_us + 1 for r in found.rows)


@pytest.mark.parametrize("text", ["order 12", "order 1", "order 77"])
def test_a_search_with_time_left_fills_its_pages_and_goes_on_after_the_last_call(store, text):
    flt = q.CallFilter(q=text, route="support")
    shown, pages = walk(store, flt, budget_s=60.0)
    expected = brute(store, flt)
    assert shown == expected and len(set(shown)) == len(shown)
    assert all(p.full for p in pages[:-1]) and pages[-1].complete
    assert len(pages) == max(1, -(-len(expected) // q.PAGE_SIZE))  # the last one may be a full 50


def test_chunks_are_planned_from_the_newest_call_not_from_now(quiet):
    """Planned from now, the empty hours count as calls: a chunk reached back until its estimate was
    met and held several times the calls it was sized for (at 10M calls, a 250 ms page)."""
    newest = _search.newest_us(quiet, _search.day_rows(quiet), NOW_US)
    assert newest == quiet.sql("SELECT epoch_us(max(ts)) AS m FROM calls")[0]["m"] < NOW_US - 19 * 3600e6
    flt = q.CallFilter(q="nothing like this")  # no match: the page is the first chunk, whole
    found = search_page(quiet, flt, budget_s=0.0, first_rows=200)
    assert found.chunks == 1 and not found.rows and found.upper_us == NOW_US
    held = quiet.sql(
        "SELECT count(*) AS n FROM calls WHERE epoch_us(ts) >= $lo", {"lo": found.searched_from_us}
    )[0]["n"]
    assert 200 <= held <= 2 * 200  # sized for 200 calls, from the newest one
    for text in ("order 1", "nothing like this"):  # and page after page, nothing missed
        flt = q.CallFilter(q=text)
        shown, _ = walk(quiet, flt, budget_s=0.0, first_rows=200)
        assert shown == brute(quiet, flt)


def test_a_call_id_finds_its_call(store):
    one = store.sql("SELECT call_id FROM calls ORDER BY ts LIMIT 1 OFFSET 12345")[0]["call_id"]
    shown, _ = walk(store, q.CallFilter(q=one), budget_s=60.0)
    assert shown == [one]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="order 12%_\\\"'{}:Wd", min_size=1, max_size=7))
def test_any_text_is_matched_literally_and_case_blind(small, text):
    flt = q.CallFilter(q=text)
    shown, _ = walk(small, flt, budget_s=0.0, first_rows=300)
    assert shown == brute(small, flt)
    low = text.lower()
    for row in small.sql(
        "SELECT call_id, request, output_text FROM calls WHERE call_id IN (SELECT unnest($ids))",
        {"ids": shown[:200]},
    ):
        assert row["call_id"] == text or any(
            low in (row[c] or "").lower() for c in ("request", "output_text")
        )


def test_a_page_that_stopped_on_its_budget_says_how_far_back_it_looked_and_links_on(store):
    from gateway.web import review
    from gateway.web._common import env

    flt = q.CallFilter(q="order 12", route="support")
    found = search_page(store, flt, budget_s=0.0, first_rows=2_000)
    assert not found.full and not found.complete
    rows = found.rows[: q.PAGE_SIZE]
    q.attach_outcomes(store, rows, min(r["ts_us"] for r in rows))
    for row in rows:  # (what the page handler adds)
        row.update(summary=row["request"], is_error=False)
    view = review._search_view(flt, found, rows)
    assert view is not None and view["older_url"] == (
        f"/review/calls?route=support&q=order+12&before={found.searched_from_us}"
    )
    html = env.get_template("calls.html").render(
        f=flt,
        rows=rows,
        facets={"routes": [], "variants": []},
        periods=list(q.PERIODS),
        search=view,
        who="local",
        version="test",
        csrf="x",
        nav="calls",
        here="/review/calls",
    )
    assert 'id="search-older"' in html and f"before={found.searched_from_us}" in html
    assert 'data-complete="false"' in html and f'data-from="{found.searched_from_us}"' in html
    assert 'rel="next"' not in html  # a page that is not full has no "older" of its own
