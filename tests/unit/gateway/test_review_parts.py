"""The review page's parts on their own: partition pruning, the diffs, the SVG charts, the cache."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import LogStore, LogWriter
from gateway.store import windows as win
from gateway.store.ids import new_id
from gateway.web._charts import Marker, Point, Series, line_chart
from gateway.web._diff import json_diff, word_diff
from gateway.web._store import Cached

DAY = 86_400_000_000


def test_a_window_reads_only_the_day_partitions_it_touches(tmp_path):
    log = str(tmp_path / "log")
    base = int(dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC).timestamp() * 1e6)
    with LogWriter(log) as w:
        for d in range(5):
            for k in range(3):
                w.append("calls", {"call_id": f"call_{d}_{k}", "ts": base + d * DAY + k, "route": "r"})
    with LogStore.open(log) as s:
        assert win.days(s, "calls") == [f"2026-03-{10 + d}" for d in range(5)]
        rel = win.source(s, "calls", base + DAY, base + 2 * DAY)
        assert "date=2026-03-11" in rel and "date=2026-03-12" in rel  # [12:00 on the 11th, 12:00 on the 12th)
        assert "date=2026-03-10" not in rel and "date=2026-03-13" not in rel
        n = s.sql(f"SELECT count(*) AS n FROM {rel} WHERE epoch_us(ts) >= $lo", {"lo": base + DAY})[0]["n"]
        assert n == 6
        assert s.sql(f"SELECT count(*) AS n FROM {win.source(s, 'calls')}")[0]["n"] == 15
        assert "read_parquet" not in win.source(s, "calls", base + 30 * DAY, None)  # only the WAL tail


def test_a_call_id_names_the_days_to_read():
    cid = new_id("call")
    lo, hi = win.id_window(cid) or (0, 0)
    now = time.time_ns() // 1000
    assert lo < now < hi and hi - lo == 2 * DAY
    assert win.id_window("call_NOPE") is None
    assert win.id_window("chatcmpl-123") is None


def test_word_diff_marks_what_changed():
    assert word_diff("the date is 2024", "the date is 2023 now") == [
        ("same", "the date is "),
        ("del", "2024"),
        ("add", "2023 now"),
    ]
    assert word_diff("same", "same") == [("same", "same")]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_the_word_diff_rebuilds_both_texts(a, b):
    segs = word_diff(a, b)
    assert "".join(t for op, t in segs if op != "add") == a
    assert "".join(t for op, t in segs if op != "del") == b


def test_json_diff_compares_by_path():
    rows = json_diff(
        '{"a": 1, "b": {"c": [1, 2]}, "gone": true}',
        '```json\n{"a": 1.5, "b": {"c": [1, 3]}, "new": null}\n```',
    )
    assert rows == [
        ("$.a", "changed", "1", "1.5"),
        ("$.b.c[0]", "same", "1", "1"),
        ("$.b.c[1]", "changed", "2", "3"),
        ("$.gone", "removed", "true", ""),
        ("$.new", "added", "", "null"),
    ]
    assert json_diff("not json", "{}") is None
    assert json_diff('{"x": 1}', '{"x": true}') == [
        ("$.x", "changed", "1", "true")
    ]  # 1 == True, but not the same


def test_a_chart_escapes_every_text_and_carries_its_numbers():
    evil = '<script>alert(1)</script>"'
    svg = line_chart(
        "c1",
        evil,
        [
            Series(
                evil,
                "baseline",
                [Point(10, 0.5, evil, 0.4, 0.6), Point(20, 0.25, "b"), Point(99, 9.0, "out")],
            )
        ],
        (0, 30),
        markers=[Marker(15, evil, evil)],
    )
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'data-x="10" data-y="0.5" data-lo="0.4" data-hi="0.6"' in svg
    assert 'data-x="20" data-y="0.25"' in svg
    assert 'data-x="99"' not in svg  # outside the time range
    assert svg.count("<circle") == 2 and 'class="marker' in svg


def test_the_cache_answers_from_memory_and_recomputes_behind():
    calls = []
    gate = threading.Event()

    def slow():
        calls.append(1)
        assert gate.wait(5)
        return len(calls)

    async def scenario():
        cache = Cached(ttl=0.5)
        assert await cache.get("k", slow, wait=0.05) is None  # still being computed: the page says so
        gate.set()
        value, _ = await cache.get("k", slow, wait=2)
        assert value == 1
        gate.clear()
        await asyncio.sleep(0.6)
        stale, _ = await cache.get("k", slow, wait=2)  # stale: answered at once, recomputed behind
        assert stale == 1
        await asyncio.sleep(0.1)
        assert len(calls) == 2
        assert (await cache.get("k", slow, wait=2))[0] == 1  # one recomputation at a time
        gate.set()
        await asyncio.sleep(0.2)
        fresh, _ = await cache.get("k", slow, wait=2)
        assert fresh == 2 and len(calls) == 2

    asyncio.run(scenario())


def test_the_judges_point_for_the_day_a_window_starts_in_is_on_the_chart(tmp_path):
    """At 03:00 UTC a 24-hour window starts at 03:00 yesterday: the verdicts on yesterday's calls
    are drawn at the window's start, not at yesterday's midnight, off the chart (the e2e console
    test failed every night from 00:00 to 06:00 UTC for this)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gateway.web._dashboard import judge_chart
    from gateway.web._series import judge_days

    now = int(dt.datetime(2026, 3, 10, 3, tzinfo=dt.UTC).timestamp() * 1e6)
    lo, hi = now - DAY, now
    log = str(tmp_path / "log")
    calls = {"late": now - 6 * 3600 * 10**6, "early": now - 2 * 3600 * 10**6}  # 21:00 yesterday, 01:00 today
    with LogWriter(log) as w:
        for name, ts in calls.items():
            w.append("calls", {"call_id": f"call_{name}", "ts": ts, "route": "bot", "served": True})
    run = tmp_path / "log" / "evals" / "judge" / "run-1"
    run.mkdir(parents=True)
    verdicts = [
        {"run_id": "run-1", "route": "bot", "item_id": "late", "outcome": "baseline", "call_id": "call_late"},
        {
            "run_id": "run-1",
            "route": "bot",
            "item_id": "early",
            "outcome": "candidate",
            "call_id": "call_early",
        },
    ]
    pq.write_table(pa.Table.from_pylist(verdicts), run / "verdicts.parquet")
    with LogStore.open(log) as s:
        rows = judge_days(s, lo, hi)
    today = now // DAY * DAY
    assert [(r["t"], r["wins"], r["losses"]) for r in rows] == [(lo, 0, 1), (today, 1, 0)]
    chart = str(judge_chart(rows, (lo, hi)))
    assert chart.count("<circle") == 2 and "lost 1" in chart and "won 1" in chart
