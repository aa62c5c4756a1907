"""`gateway.store.outcomes`' cells and cross sums equal brute-force sums over the calls written.

Every metric kind on one log: rates (thumbs with repeats and changed minds, regenerations,
errors), a mean over the calls that have a value (rating, posted twice by one user and once
by another; latency with gaps), a custom metric, calls without a user (their own units),
reviewers' thumbs (kept out), a chatcmpl- id, and users served in two periods.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from gateway.store import LogStore, LogWriter
from gateway.store import outcomes as oq

T0 = 1_780_000_000.0
H = 3600.0
SUMS = ("y", "n", "yy", "nn", "yn")


def write(log: str) -> dict[tuple[str, str, str], dict[str, list[float]]]:
    """Returns per (period, arm, metric) each unit's [y, n], computed here."""
    rng = np.random.default_rng(5)
    calls, events = [], []
    sums: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(dict)

    def add(period: str, arm: str, unit: str, metric: str, y: float) -> None:
        acc = sums[(period, arm, metric)].setdefault(unit, [0.0, 0.0])
        acc[0] += y
        acc[1] += 1

    for i in range(900):
        version = 1 if i < 450 else 2
        user = None if i % 37 == 0 else f"u{rng.integers(60)}"
        arm = "candidate" if rng.random() < 0.3 else "baseline"
        ts = int((T0 + (0 if version == 1 else 5 * H) + i) * 1e6)
        latency = None if i % 11 == 0 else float(rng.integers(50, 900))
        error = i % 23 == 0
        cid, rid = f"c{i:05d}", f"chatcmpl-{i}"
        calls.append(
            {
                "call_id": cid,
                "ts": ts,
                "route": "chat",
                "variant": arm,
                "served": True,
                "mode": "canary",
                "route_version": version,
                "user": user,
                "status": 500 if error else 200,
                "latency_ms": latency,
                "response_id": rid,
            }
        )
        if i % 5 == 0:  # a shadow sibling: not served, never counted
            calls.append({**calls[-1], "call_id": f"s{i:05d}", "served": False, "response_id": None})
        unit, period = user or f"call:{cid}", str(version)
        thumb = None
        for k, value in enumerate(rng.choice(["up", "down", ""], size=rng.integers(0, 3))):
            if value:  # the same user's posts: the latest counts (a repeat, or a changed mind)
                name = rid if k % 2 else cid  # by either id
                events.append(_event(f"t{i}-{k}", name, ts + 10 + k, "thumbs", value=value, user=user))
                thumb = value
        if i % 7 == 0:  # a reviewer's thumb: never a user outcome
            events.append(_event(f"r{i}", cid, ts + 99, "thumbs", value="down", source="reviewer"))
        ratings = []
        if i % 4 == 0:  # one user's repeated rating (the latest counts) and another poster's
            events.append(_event(f"a{i}", cid, ts + 20, "rating", num=1.0, user=user))
            events.append(_event(f"b{i}", cid, ts + 21, "rating", num=4.0, user=user))
            events.append(_event(f"c{i}", cid, ts + 22, "rating", num=2.0, user="someone-else"))
            ratings = [4.0, 2.0]
        regenerated = i % 9 == 0
        if regenerated:
            events.append(_event(f"g{i}", cid, ts + 30, "regeneration", user=user))
        custom = None
        if i % 6 == 0:
            custom = float(rng.random())
            events.append(_event(f"x{i}", cid, ts + 40, "resolved", num=custom, user=user))
        add(period, arm, unit, "thumbs_up_rate", float(thumb == "up"))
        add(period, arm, unit, "thumbs_down_rate", float(thumb == "down"))
        add(period, arm, unit, "rated_rate", float(thumb is not None))
        add(period, arm, unit, "regeneration_rate", float(regenerated))
        add(period, arm, unit, "error_rate", float(error))
        add(period, arm, unit, "flag_rate", 0.0)
        if ratings:
            add(period, arm, unit, "rating", sum(ratings) / len(ratings))
        if latency is not None:
            add(period, arm, unit, "latency_ms", latency)
        if custom is not None:
            add(period, arm, unit, "resolved", custom)
    with LogWriter(log) as w:
        for c in calls:
            w.append("calls", c)
        for e in events:
            w.append("events", e)
    return sums


def _event(eid, call_id, ts, kind, *, value=None, num=None, user=None, source="api"):
    return {
        "event_id": eid,
        "call_id": call_id,
        "ts": ts,
        "kind": kind,
        "value": value,
        "value_num": num,
        "user": user,
        "source": source,
    }


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("sums") / "log")
    sums = write(log)
    with LogStore.open(log) as store:
        yield store, sums


def test_cells_are_the_sums_over_units(logged):
    store, sums = logged
    rows = oq.run(store, oq.CELLS_SQL, "chat", int(T0 * 1e6), int((T0 + 86400) * 1e6))
    got = {(r["period"], r["variant"], r["metric"]): r for r in rows}
    assert set(got) == {k for k, units in sums.items() if units}
    for key, units in sums.items():
        r, ys = got[key], np.array(list(units.values()))
        assert r["units"] == len(units), key
        want = (
            ys[:, 0].sum(),
            ys[:, 1].sum(),
            (ys[:, 0] ** 2).sum(),
            (ys[:, 1] ** 2).sum(),
            (ys[:, 0] * ys[:, 1]).sum(),
        )
        assert (r["y"], r["n"], r["yy"], r["nn"], r["yn"]) == pytest.approx(want, rel=1e-12), key


def test_cross_sums_pair_the_units_two_cells_share(logged):
    store, sums = logged
    rows = oq.run(store, oq.CROSS_SQL, "chat", int(T0 * 1e6), int((T0 + 86400) * 1e6))
    got = {((r["pa"], r["va"]), (r["pb"], r["vb"]), r["metric"]): r for r in rows}
    want = {}
    for (pa, va, m), a in sums.items():
        for (pb, vb, m2), b in sums.items():
            if m2 != m or not (pa < pb or (pa == pb and va < vb)):
                continue
            both = [u for u in a if u in b and not u.startswith("call:")]
            if both:
                want[((pa, va), (pb, vb), m)] = tuple(
                    sum(x[u][i] * y[u][j] for u in both)
                    for x, y, i, j in ((a, b, 0, 0), (a, b, 0, 1), (a, b, 1, 0), (a, b, 1, 1))
                )
    assert set(got) == set(want) and want
    for key, sums4 in want.items():
        r = got[key]
        assert (r["yy"], r["yn"], r["ny"], r["nn"]) == pytest.approx(sums4, rel=1e-12), key


def test_asking_for_some_metrics_gives_those_only(logged):
    store, _ = logged
    lo, hi = int(T0 * 1e6), int((T0 + 86400) * 1e6)
    every = {(r["period"], r["variant"], r["metric"]): r for r in oq.run(store, oq.CELLS_SQL, "chat", lo, hi)}
    for metrics in (("rating",), ("resolved",), ("error_rate", "resolved"), ()):
        rows = oq.run(store, oq.CELLS_SQL, "chat", lo, hi, metrics=metrics)
        assert {r["metric"] for r in rows} == set(metrics)
        for r in rows:  # (sums in another order: the last bits may differ)
            want = every[(r["period"], r["variant"], r["metric"])]
            assert {k: v for k, v in r.items() if k not in SUMS} == {
                k: v for k, v in want.items() if k not in SUMS
            }
            assert [r[k] for k in SUMS] == pytest.approx([want[k] for k in SUMS], rel=1e-12)


@pytest.mark.parametrize("template", ["CELLS_SQL", "CROSS_SQL"])
@pytest.mark.parametrize("routes", ["chat", ["chat", "other"]])
def test_the_whole_window_comes_with_the_buckets_in_one_pass(logged, template, routes):
    store, _ = logged
    lo, hi, sql = int(T0 * 1e6), int((T0 + 86400) * 1e6), getattr(oq, template)
    stats = ("y", "n", "yy", "nn", "yn", "ny")

    def keyed(rows):
        return {tuple((k, v) for k, v in sorted(r.items()) if k not in stats): r for r in rows}

    alone = keyed(
        oq.run(store, sql, routes, lo, hi) + oq.run(store, sql, routes, lo, hi, bucket_us=int(2 * H * 1e6))
    )
    both = keyed(oq.run(store, sql, routes, lo, hi, bucket_us=int(2 * H * 1e6), whole=True))
    assert both.keys() == alone.keys() and len({r["grp"] for r in both.values()}) > 2
    for key, r in both.items():
        names = [k for k in stats if k in r]
        assert [r[k] for k in names] == pytest.approx([alone[key][k] for k in names], rel=1e-12)
