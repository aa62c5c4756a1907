"""The log query's covariate cells (CUPED) equal the brute-force sums of the calls written."""

from __future__ import annotations

import numpy as np
import pytest

from evals.online.controller import observation
from evals.online.outcomes_query import query_cells
from evals.online.strata import Cell, Cross, pre_period, stratified_difference
from gateway.store import LogStore, LogWriter

T0 = 1_780_000_000.0  # the canary begins
DAY = 86400.0


def write(log):
    """A shadow week (baseline served to all), then canary versions 2 (10 %) and 3 (50 %).

    Users keep their own thumbs-down rate throughout; a few calls carry no user (their own units,
    no covariate); an earlier candidate served the candidate bucket twice in the pre-period (its
    outcomes depend on the arm, so they are no covariate). Returns per (period, arm) the users' (Y, N) and each user's pre-period (Y, N).
    """
    rng = np.random.default_rng(21)
    users = 300
    rate = np.minimum(rng.gamma(1.0, 0.1, users), 0.9)
    bucket = rng.random(users)
    plan = [
        ("1", "shadow", -3 * DAY, 6.0, 0.0),
        ("2", "canary", 0.0, 3.0, 0.10),
        ("3", "canary", DAY, 3.0, 0.5),
    ]
    calls, events = [], []
    per: dict[tuple[str, str], dict[int, list[float]]] = {}
    pre: dict[int, list[float]] = {}
    i = 0
    for version, mode, start, mean_calls, share in plan:
        for u in range(users):
            arm = "candidate" if mode == "canary" and bucket[u] < share else "baseline"
            for _ in range(rng.poisson(mean_calls)):
                i += 1
                down = bool(rng.random() < rate[u])
                calls.append(
                    {
                        "call_id": f"c{i:06d}",
                        "ts": int((T0 + start + rng.random() * 3600 * 20) * 1e6),
                        "route": "chat",
                        "variant": arm,
                        "served": True,
                        "mode": mode,
                        "route_version": int(version),
                        "user": f"u{u}",
                        "status": 200,
                        "latency_ms": 100.0,
                    }
                )
                if down:
                    events.append(
                        {
                            "event_id": f"e{i}",
                            "call_id": f"c{i:06d}",
                            "ts": calls[-1]["ts"] + 1,
                            "kind": "thumbs",
                            "value": "down",
                            "value_num": 0.0,
                        }
                    )
                into = pre if mode == "shadow" else per.setdefault((version, arm), {})
                acc = into.setdefault(u, [0.0, 0.0])
                acc[0] += down
                acc[1] += 1
    for u in np.flatnonzero(bucket < 0.1):  # an earlier candidate's canary in the pre-period: left out
        for _ in range(2):
            i += 1
            ts = int((T0 - 5 * DAY + rng.random() * 3600) * 1e6)
            calls.append(
                {
                    "call_id": f"c{i:06d}",
                    "ts": ts,
                    "route": "chat",
                    "variant": "candidate",
                    "served": True,
                    "mode": "canary",
                    "route_version": 0,
                    "user": f"u{u}",
                    "status": 200,
                    "latency_ms": 100.0,
                }
            )
            event = {"event_id": f"e{i}", "call_id": f"c{i:06d}", "ts": ts + 1, "kind": "thumbs"}
            events.append({**event, "value": "down", "value_num": 0.0})
    for j in range(40):  # unkeyed calls in the canary and before it
        i += 1
        calls.append(
            {
                "call_id": f"c{i:06d}",
                "ts": int((T0 + (-DAY if j % 2 else 3600.0) + j) * 1e6),
                "route": "chat",
                "variant": "baseline",
                "served": True,
                "mode": "shadow" if j % 2 else "canary",
                "route_version": 1 if j % 2 else 2,
                "status": 200,
                "latency_ms": 100.0,
            }
        )
        if j % 2 == 0:
            per.setdefault(("2", "baseline"), {})[-1 - j] = [0.0, 1.0]  # its own unit, no pre-period
    with LogWriter(log) as w:
        for c in calls:
            w.append("calls", c)
        for e in events:
            w.append("events", e)
    return per, pre


def brute_force(per, pre):
    nodes = {}
    for key, units in per.items():
        nodes[key] = {u: tuple(v) for u, v in units.items()}
        nodes[(pre_period(key[0]), key[1])] = {u: tuple(pre[u]) for u in units if u in pre}
    cells, covariates, cross = [], [], {}
    for (period, arm), units in nodes.items():
        cell = Cell.from_values(period, arm, units.values())
        (covariates if period.startswith("pre|") else cells).append(cell)
    keys = list(nodes)
    for a, j in enumerate(keys):
        for k in keys[a + 1 :]:
            both = set(nodes[j]) & set(nodes[k])
            if both:
                yj, yk = nodes[j], nodes[k]
                cross[(j, k)] = Cross(
                    sum(yj[u][0] * yk[u][0] for u in both),
                    sum(yj[u][0] * yk[u][1] for u in both),
                    sum(yj[u][1] * yk[u][0] for u in both),
                    sum(yj[u][1] * yk[u][1] for u in both),
                )
    return stratified_difference(cells, cross, rate=True, covariates=covariates), cells, covariates


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("cuped") / "log")
    per, pre = write(log)
    with LogStore.open(log) as store:
        yield store, per, pre


def test_covariate_cells_and_cross_sums_match_the_calls(logged):
    store, per, pre = logged
    groups, _ = query_cells(store, "chat", T0, sticky_key="user", pre_since=T0 - 7 * DAY)
    got_cells = groups[None]
    want, _, covariates = brute_force(per, pre)
    mine = {c.key: c for c in got_cells.covariates["thumbs_down_rate"]}
    for c in covariates:
        g = mine[c.key]
        assert (g.y, g.n, g.yy, g.nn, g.yn) == pytest.approx((c.y, c.n, c.yy, c.nn, c.yn))
    ev = stratified_difference(
        got_cells.cells["thumbs_down_rate"],
        got_cells.cross["thumbs_down_rate"],
        rate=True,
        covariates=got_cells.covariates["thumbs_down_rate"],
    )
    assert float(ev.estimate) == pytest.approx(float(want.estimate), rel=1e-9)
    assert float(ev.variance) == pytest.approx(float(want.variance), rel=1e-9)
    # the controller's observation uses them; users' own rates persist, so the variance drops
    obs = observation("canary", 50.0, got_cells, got_cells, 3600.0)
    assert float(obs.evidence["thumbs_down_rate"].variance) == pytest.approx(float(ev.variance), rel=1e-12)
    plain = stratified_difference(
        got_cells.cells["thumbs_down_rate"], got_cells.cross["thumbs_down_rate"], rate=True
    )
    assert float(ev.variance) < 0.9 * float(plain.variance), (float(ev.variance), float(plain.variance))


def test_without_a_pre_period_there_are_no_covariates(logged):
    store, per, _ = logged
    groups, _ = query_cells(store, "chat", T0, sticky_key="user")
    assert groups[None].covariates == {}
    assert {c.key for c in groups[None].cells["thumbs_down_rate"]} == set(per)
