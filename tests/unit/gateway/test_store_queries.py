"""The typed store queries (`gateway.store.queries`) on a real log written by LogWriter and read by DuckDB."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store import LogStore, LogStoreError, LogWriter, queries
from gateway.store.ids import new_id

HOUR_US = 3600 * 1_000_000
NOW_US = int(time.time() * 1e6)


def _call(
    route: str, *, ts: int, variant: str = "baseline", served: bool = True, status: int = 200, **kw: Any
) -> dict[str, Any]:
    request = {"model": route, "messages": [{"role": "user", "content": f"q {ts}"}]}
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"a {ts}"}}]}
    return {
        "call_id": new_id("call"),
        "ts": ts,
        "endpoint": "chat.completions",
        "route": route,
        "variant": variant,
        "served": served,
        "mode": "shadow",
        "upstream_model": "m-" + variant,
        "request": json.dumps(request),
        "response": json.dumps(response),
        "output_text": f"a {ts}",
        "status": status,
        "latency_ms": 5.0,
        **kw,
    }


@pytest.fixture
def log(log_dir: str) -> dict[str, Any]:
    """One route's traffic over three hours, with every kind of call the filters must tell apart."""
    t0 = NOW_US - 3 * HOUR_US
    ids: dict[str, Any] = {"t0": t0, "ok": [], "pairs": []}
    with LogWriter(log_dir) as w:
        for i in range(6):  # served, successful baselines, each with a shadow candidate
            b = _call("support", ts=t0 + i * HOUR_US // 2, response_id=f"chatcmpl-{i}")
            c = _call(
                "support",
                ts=t0 + i * HOUR_US // 2,
                variant="candidate",
                served=False,
                parent_call_id=b["call_id"],
            )
            w.append("calls", b)
            w.append("calls", c)
            ids["ok"].append(b["call_id"])
            ids["pairs"].append((b["call_id"], c["call_id"]))
        failed = _call("support", ts=t0 + 10, status=502)  # served but failed: no filter keeps it
        w.append("calls", failed)
        ids["failed"] = failed["call_id"]
        b = _call("support", ts=t0 + 20)  # a baseline whose shadow candidate failed
        w.append("calls", b)
        w.append(
            "calls",
            _call(
                "support",
                ts=t0 + 20,
                variant="candidate",
                served=False,
                status=500,
                parent_call_id=b["call_id"],
            ),
        )
        ids["ok"].append(b["call_id"])
        ids["bad_shadow"] = b["call_id"]
        emb = _call("support", ts=t0 + 30, endpoint="embeddings")  # served, not a chat call
        w.append("calls", emb)
        ids["ok"].append(emb["call_id"])
        ids["embedding"] = emb["call_id"]
        other = _call("billing", ts=t0 + 40)
        w.append("calls", other)
        ids["other"] = other["call_id"]
        w.append(
            "events",
            {"event_id": new_id("evt"), "call_id": "call_nobody", "ts": t0, "kind": "thumbs", "value": "up"},
        )
        w.append(
            "events",
            {"event_id": new_id("evt"), "call_id": ids["ok"][0], "ts": t0, "kind": "thumbs", "value": "up"},
        )
        w.append(
            "events",
            {
                "event_id": new_id("evt"),
                "call_id": ids["ok"][1],
                "ts": t0,
                "kind": "regeneration",
                "value": "retry",
                "source": "detector",
            },
        )
    return ids


def _utc(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC)


def test_served_calls_are_the_routes_successful_served_calls_in_the_window(log_dir, log):
    with LogStore.open(log_dir) as store:
        every = queries.served_calls(store, "support")
        assert {r["call_id"] for r in every} == set(log["ok"])
        assert log["failed"] not in {r["call_id"] for r in every}
        window = queries.served_calls(
            store, "support", since=_utc(log["t0"] + HOUR_US), until=_utc(log["t0"] + 2 * HOUR_US)
        )
        assert {r["call_id"] for r in window} == set(log["ok"][2:4])
        sample = queries.served_calls(store, "support", limit=3)
        assert len(sample) == 3 and sample == queries.served_calls(store, "support", limit=3)  # stable sample
        assert json.loads(every[0]["request"] or "{}")["model"] == "support"


def test_count_served_counts_after_a_time(log_dir, log):
    with LogStore.open(log_dir) as store:
        assert queries.count_served(store, "support") == len(log["ok"])
        assert queries.count_served(store, "support", after=_utc(log["t0"] + 2 * HOUR_US)) == 1
        assert queries.count_served(store, "nobody") == 0


def test_shadow_pairs_leave_out_failed_baselines_and_failed_candidates(log_dir, log):
    with LogStore.open(log_dir) as store:
        pairs = queries.shadow_pairs(store, "support")
        assert [(p["call_id"], p["candidate_call_id"]) for p in pairs] == log["pairs"]
        assert pairs[0]["baseline_model"] == "m-baseline" and pairs[0]["candidate_model"] == "m-candidate"
        assert log["bad_shadow"] not in {p["call_id"] for p in pairs}
        assert len(queries.shadow_pairs(store, "support", limit=2)) == 2
        late = queries.shadow_pairs(store, "support", since=_utc(log["t0"] + 2 * HOUR_US))
        assert [p["call_id"] for p in late] == [log["pairs"][4][0], log["pairs"][5][0]]


def test_single_call_lookups_by_call_id_and_response_id(log_dir, log):
    with LogStore.open(log_dir) as store:
        assert queries.call_exists(store, log["ok"][0])
        assert not queries.call_exists(store, "call_nobody")
        found = queries.call_routes(store, ["chatcmpl-1", log["other"], "call_nobody"])
        assert {(r["call_id"], r["route"], r["variant"]) for r in found} == {
            (log["ok"][1], "support", "baseline"),
            (log["other"], "billing", "baseline"),
        }


def test_signal_queries(log_dir, log):
    with LogStore.open(log_dir) as store:
        assert [
            r for b in queries.regeneration_inputs(store, log["t0"], None) for r in b
        ] == []  # no sticky key
        assert queries.regenerated_call_ids(store) == {log["ok"][1]}
        assert queries.regenerated_call_ids(store, NOW_US) == set()  # marks older than the window left out
        orphans = queries.orphan_events(store, NOW_US)
        assert [o["call_id"] for o in orphans] == ["call_nobody"]
        assert queries.orphan_events(store, log["t0"]) == []  # nothing older than the cutoff


def test_regeneration_inputs_are_keyed_served_calls_in_bounded_batches(tmp_path):
    t0 = NOW_US - HOUR_US
    keyed = [_call("support", ts=t0 + i, user=f"u{i % 3}") for i in range(7)]
    keyed[1]["response_id"] = "chatcmpl-x"
    others = [
        _call("support", ts=t0 + 10),  # no sticky key: never a retry
        _call("support", ts=t0 + 11, user="u1", served=False, variant="candidate"),  # shadow
        _call("support", ts=t0 + 12, session_id=""),  # an empty key is no key
        _call("support", ts=t0 + 13, client_key="key_a"),
        _call("support", ts=t0 - 2 * HOUR_US, user="u1"),  # before the window
    ]
    named = [
        _call("support", ts=t0 + 20, user="u1", regenerate_of="chatcmpl-x"),
        _call("support", ts=t0 + 21, user="u1", regenerate_of=keyed[2]["call_id"]),
        _call("support", ts=t0 + 22, regenerate_of="call_from_long_ago"),
    ]
    with LogWriter(str(tmp_path)) as w:
        for rec in keyed + others + named:
            w.append("calls", rec)
    with LogStore.open(str(tmp_path)) as store:
        batches = list(queries.regeneration_inputs(store, t0, None, batch_rows=4))
        assert [len(b) for b in batches] == [4, 4, 2]
        ids = [r["call_id"] for b in batches for r in b]
        assert ids == [r["call_id"] for r in keyed] + [others[3]["call_id"]] + [
            r["call_id"] for r in named[:2]
        ]
        assert all(isinstance(r["ts_us"], int) for b in batches for r in b)
        found = queries.explicit_regenerations(store, t0, None, t0 + 15)
        assert [(r["call_id"], r["target"], r["target_ts_us"]) for r in found] == [
            (named[0]["call_id"], keyed[1]["call_id"], t0 + 1),  # a response id resolves to its call
            (named[1]["call_id"], keyed[2]["call_id"], t0 + 2),
            (named[2]["call_id"], "call_from_long_ago", None),  # outside the window: no gap
        ]
        assert queries.explicit_regenerations(store, t0, None, t0 + 22)[0]["call_id"] == named[2]["call_id"]


def test_training_calls_are_served_baseline_chat_calls_and_a_predicate_narrows_them(log_dir, log):
    with LogStore.open(log_dir) as store:
        rows = queries.training_calls(store, route="support")
        ids = [r["call_id"] for r in rows]
        assert log["embedding"] not in ids and log["other"] not in ids
        assert log["failed"] in ids  # status is the dataset build's own filter (it counts what it drops)
        assert rows[0]["thumbs_up"] == 1
        assert queries.training_call_ids(store, "thumbs_up > 0", route="support") == {log["ok"][0]}
        query, params = queries.training_query("support", _utc(log["t0"]), None)
        assert "FROM calls_with_outcomes" in query and params == ["support", _utc(log["t0"])]
        with pytest.raises(LogStoreError):
            queries.training_call_ids(store, "no_such_column = 1")
        with pytest.raises(LogStoreError, match="read-only"):
            queries.training_call_ids(store, "true); DELETE FROM calls WHERE (true")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.text(max_size=40))
def test_a_hostile_route_name_is_a_parameter_never_sql(log_dir, log, route):
    with LogStore.open(log_dir) as store:
        expected = {"support": set(log["ok"]), "billing": {log["other"]}}.get(route, set())
        assert queries.count_served(store, route) == len(expected)
        assert {r["call_id"] for r in queries.served_calls(store, route)} == expected
        assert len(queries.shadow_pairs(store, route)) == (len(log["pairs"]) if route == "support" else 0)


def test_regeneration_inputs_read_the_window_in_time_slices_in_order(tmp_path):
    t0 = NOW_US - HOUR_US
    # 40 keyed calls over 8 seconds, written out of order, plus one second holding more than a batch
    calls = [_call("support", ts=t0 + (i % 8) * 1_000_000 + i, user=f"u{i % 5}") for i in range(40)]
    calls += [_call("support", ts=t0 + 9_000_000 + i, user="heavy") for i in range(7)]
    with LogWriter(str(tmp_path)) as w:
        for rec in reversed(calls):
            w.append("calls", rec)
    with LogStore.open(str(tmp_path)) as store:
        batches = list(queries.regeneration_inputs(store, t0, None, batch_rows=6))
    got = [(r["ts_us"], r["call_id"]) for b in batches for r in b]
    assert got == sorted((c["ts"], c["call_id"]) for c in calls)  # every call once, in time order
    assert max(len(b) for b in batches) <= 6
    assert len(batches) >= 8  # sliced, not one query over the window


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 30), max_size=40),
    st.integers(1, 50),
    st.integers(0, 999_999),
    st.booleans(),
)
def test_time_slices_cover_the_window_in_order_each_about_a_batch(ns, rows, offset, open_end):
    lo = 1_700_000_000 * 1_000_000 + offset
    counts = [(1_700_000_000 + 2 * k, n) for k, n in enumerate(ns)]
    hi = None if open_end else (counts[-1][0] + 1) * 1_000_000 if counts else lo + 1
    slices = list(queries._slices(counts, rows, lo, hi))
    if not counts:
        assert slices == []
        return
    assert slices[0][0] == lo and slices[-1][1] == hi
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))  # contiguous

    def within(s: int, a: int, b: int | None) -> bool:  # a second's calls are at lo or later
        t = max(s * 1_000_000, lo)
        return a <= t and (b is None or t < b)

    for a, b in slices:
        held = [n for s, n in counts if within(s, a, b)]
        assert held and (sum(held) <= rows or len(held) == 1)  # a batch, or one second over it
    assert sorted(s for a, b in slices for s, _ in counts if within(s, a, b)) == [s for s, _ in counts]


def _explicit_by_hand(calls: list[dict[str, Any]], lo: int, hi: int | None, since: int) -> list[tuple]:
    """`queries.explicit_regenerations` computed over the records themselves (the oracle)."""
    window = [c for c in calls if c["served"] and c["ts"] >= lo and (hi is None or c["ts"] < hi)]
    out = []
    for c in sorted(window, key=lambda c: (c["ts"], c["call_id"])):
        if c.get("regenerate_of") is None or c["ts"] < since:
            continue
        answering = [w for w in window if w.get("response_id") == c["regenerate_of"]]
        target = (
            max(answering, key=lambda w: (w["ts"], w["call_id"]))["call_id"]
            if answering
            else c["regenerate_of"]
        )
        made = [w["ts"] for w in window if w["call_id"] == target]
        out.append((c["call_id"], c["ts"], target, min(made) if made else None))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spec=st.lists(
        st.tuples(
            st.integers(0, 40),  # ts offset (s)
            st.booleans(),  # served
            st.sampled_from([None, "chatcmpl-a", "chatcmpl-b", "chatcmpl-c"]),  # response id
            st.one_of(
                st.none(), st.integers(0, 30), st.sampled_from(["chatcmpl-a", "chatcmpl-b", "call_gone"])
            ),
        ),
        max_size=25,
    ),
    bounds=st.tuples(st.integers(0, 20), st.one_of(st.none(), st.integers(10, 45)), st.integers(0, 40)),
)
def test_explicit_regenerations_equal_a_brute_force_reading_of_the_records(tmp_path_factory, spec, bounds):
    """Whatever names what (call ids, response ids answered by several calls, ids outside the
    window or never seen, calls not served), the two-step query finds what the records say."""
    t0 = NOW_US - HOUR_US
    calls: list[dict[str, Any]] = []
    for off, served, response_id, of in spec:
        rec = _call("support", ts=t0 + off * 1_000_000, served=served, response_id=response_id)
        if isinstance(of, int):  # names an earlier record by its call id
            of = calls[of]["call_id"] if of < len(calls) else None
        rec["regenerate_of"] = of
        calls.append(rec)
    lo, hi, since = (t0 + b * 1_000_000 if b is not None else None for b in bounds)
    assert lo is not None and since is not None
    log_dir = str(tmp_path_factory.mktemp("log"))
    with LogWriter(log_dir) as w:
        for rec in calls:
            w.append("calls", rec)
    with LogStore.open(log_dir) as store:
        found = queries.explicit_regenerations(store, lo, hi, since)
    assert [(r["call_id"], r["ts_us"], r["target"], r["target_ts_us"]) for r in found] == _explicit_by_hand(
        calls, lo, hi, since
    )
