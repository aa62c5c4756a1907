"""Outcome statistics against known values (scipy), and the report over a real log directory."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from scipy import integrate, stats

from evals.online.outcomes import (
    MetricStats,
    OutcomesError,
    confidence_sequence,
    msprt_log_lr,
    msprt_p_value,
    outcomes_report,
    srm_check,
    wilson_interval,
)
from gateway.store import LogStore, LogWriter


class TestWilson:
    @pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 100), (50, 100), (999, 1000), (7, 7)])
    def test_matches_scipy(self, k, n):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)

    def test_known_value_and_edge_cases(self):
        assert wilson_interval(10, 100) == pytest.approx((0.05523, 0.17437), abs=1e-5)
        assert wilson_interval(0, 0) == (0.0, 1.0)
        with pytest.raises(OutcomesError):
            wilson_interval(5, 3)


def mixture_lr(x, v, tau, theta0, one_sided):
    """The mSPRT mixture likelihood ratio by numerical integration (the definition)."""

    def integrand(d):
        lr = math.exp((x - theta0) * d / v - d * d / (2 * v))
        return lr * stats.norm.pdf(d, scale=tau) * (2 if one_sided else 1)

    lo = 0.0 if one_sided else -12 * tau
    return integrate.quad(integrand, lo, 12 * tau, limit=200)[0]


class TestMsprt:
    @pytest.mark.parametrize(
        ("x", "v", "tau", "theta0"),
        [
            (0.01, 1e-4, 0.02, 0.0),
            (-0.03, 4e-4, 0.05, 0.0),
            (0.0, 1e-3, 0.1, -0.02),
            (0.002, 2.5e-5, 0.01, 0.0),
        ],
    )
    def test_closed_forms_equal_the_mixture_integral(self, x, v, tau, theta0):
        two = mixture_lr(x, v, tau, theta0, one_sided=False)
        assert math.exp(msprt_log_lr(x, v, tau, theta0=theta0)) == pytest.approx(two, rel=1e-6)
        one = mixture_lr(x, v, tau, theta0, one_sided=True)
        assert math.exp(msprt_log_lr(x, v, tau, theta0=theta0, alternative="greater")) == pytest.approx(
            one, rel=1e-6
        )
        neg = mixture_lr(-x, v, tau, -theta0, one_sided=True)
        assert math.exp(msprt_log_lr(x, v, tau, theta0=theta0, alternative="less")) == pytest.approx(
            neg, rel=1e-6
        )

    def test_known_value(self):
        # V = 1e-4, tau = 0.02, x = 0.05:
        # Lambda = sqrt(1/5) * exp(4e-4 * 25e-4 / (2e-4 * 5e-4)) = e^10 / sqrt(5)
        assert msprt_p_value(0.05, 1e-4, 0.02) == pytest.approx(math.sqrt(5) * math.exp(-10), rel=1e-12)
        assert msprt_p_value(0.0, 1e-4, 0.02) == 1.0

    def test_p_value_is_never_smaller_than_the_fixed_horizon_z_test(self):
        for x in np.linspace(-0.05, 0.05, 11):
            fixed = 2 * stats.norm.sf(abs(x) / 0.01)
            assert msprt_p_value(float(x), 1e-4, 0.02) >= fixed - 1e-12

    def test_confidence_sequence_boundary_has_lambda_one_over_alpha(self):
        lo, hi = confidence_sequence(0.01, 1e-4, 0.02, alpha=0.05)
        for edge in (lo, hi):
            assert msprt_p_value(0.01 - edge, 1e-4, 0.02) == pytest.approx(0.05, rel=1e-9)

    def test_degenerate_variance(self):
        assert msprt_p_value(0.0, 0.0, 0.1) == 1.0
        assert msprt_p_value(1.0, 0.0, 0.1) == 0.0
        assert msprt_p_value(1.0, 0.0, 0.1, alternative="less") == 1.0

    def test_a_a_always_valid_under_continuous_monitoring(self):
        rng = np.random.default_rng(1)
        runs, looks, per_look, p = 2000, 50, 40, 0.1
        b = rng.binomial(per_look, p, size=(runs, looks)).cumsum(axis=1)
        c = rng.binomial(per_look, p, size=(runs, looks)).cumsum(axis=1)
        n = per_look * np.arange(1, looks + 1)
        pb, pc = (b + 1) / (n + 2), (c + 1) / (n + 2)
        v = (pb * (1 - pb) + pc * (1 - pc)) / n
        x = (c - b) / n
        t2 = 0.03**2
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * x * x / (2 * v * (v + t2))
        rate = float((log_lr.max(axis=1) >= math.log(1 / 0.05)).mean())
        naive = float((np.abs(x) / np.sqrt(v) >= 1.96).any(axis=1).mean())
        print(f"A/A over {looks} looks: mSPRT false alarms {rate:.3f}, naive z-test {naive:.3f}")
        assert rate <= 0.05
        assert naive > 0.15  # peeking with a fixed-horizon test inflates false alarms


class TestSrm:
    def test_matches_scipy_chisquare(self):
        res = stats.chisquare([9_100, 900], f_exp=[9_000, 1_000])
        assert srm_check(9_100, 900, 0.1) == pytest.approx((res.statistic, res.pvalue), rel=1e-9)

    def test_balanced_split_passes_and_bad_share_raises(self):
        assert srm_check(500, 500, 0.5) == (0.0, 1.0)
        with pytest.raises(OutcomesError):
            srm_check(1, 1, 0.0)


def test_rate_variance_is_smoothed_so_it_is_never_zero():
    m = MetricStats.rate(0, 98)
    assert (m.mean, m.var) == (0.0, pytest.approx(0.01 * 0.99))


# -- the report over a real log -----------------------------------------------------------
T0 = 1_750_000_000  # 2025-06-15T15:06:40Z


def write_log(log):
    """Day 1: baseline 100 calls, candidate 50 (share 1/3); day 2: 30 + 30. Known outcomes."""
    calls, events = [], []
    i = 0
    for day, counts in ((0, {"baseline": 100, "candidate": 50}), (1, {"baseline": 30, "candidate": 30})):
        for variant, n in counts.items():
            for j in range(n):
                i += 1
                cid = f"call_{i:05d}"
                ts = (T0 + day * 86400 + j) * 1_000_000
                err = variant == "candidate" and j % 10 == 0  # 10% errors in the candidate
                calls.append(
                    {
                        "call_id": cid,
                        "ts": ts,
                        "route": "chat",
                        "variant": variant,
                        "served": True,
                        "mode": "canary",
                        "user": f"u{j}",
                        "status": 500 if err else 200,
                        "error_type": "upstream_error" if err else None,
                        "latency_ms": float(100 + j) if variant == "baseline" else float(200 + j),
                        "cost_usd": 0.002 if variant == "baseline" else 0.0005,
                        "response": orjson.dumps({"id": f"chatcmpl-{cid}", "choices": []}).decode(),
                    }
                )
                if j % 4 == 0:  # 25% thumbs up; via the response id for the candidate
                    target = cid if variant == "baseline" else f"chatcmpl-{cid}"
                    events.append(
                        {
                            "event_id": f"evt_{i}u",
                            "call_id": target,
                            "ts": ts + 1,
                            "kind": "thumbs",
                            "value": "up",
                            "value_num": 1.0,
                        }
                    )
                if j % 5 == 1:
                    events.append(
                        {
                            "event_id": f"evt_{i}d",
                            "call_id": cid,
                            "ts": ts + 2,
                            "kind": "thumbs",
                            "value": "down",
                            "value_num": 0.0,
                        }
                    )
                    events.append(
                        {
                            "event_id": f"evt_{i}r",
                            "call_id": cid,
                            "ts": ts + 3,
                            "kind": "regeneration",
                            "value": "retry",
                            "value_num": 1.0,
                            "source": "detector",
                        }
                    )
                if j < 10:
                    events.append(
                        {
                            "event_id": f"evt_{i}s",
                            "call_id": cid,
                            "ts": ts + 1,
                            "kind": "rating",
                            "value": str(j % 5 + 1),
                            "value_num": float(j % 5 + 1),
                        }
                    )
                    events.append(
                        {
                            "event_id": f"evt_{i}x",
                            "call_id": cid,
                            "ts": ts + 1,
                            "kind": "edit_distance",
                            "value": "0.5",
                            "value_num": 0.5,
                            "data": '{"metric_type": "float", "higher_is_better": false}',
                        }
                    )
    # noise that must not count: an unserved shadow call, another route, a call before the period
    calls.append(
        {
            "call_id": "call_shadow",
            "ts": T0 * 1_000_000,
            "route": "chat",
            "variant": "candidate",
            "served": False,
            "status": 500,
        }
    )
    calls.append(
        {
            "call_id": "call_other",
            "ts": T0 * 1_000_000,
            "route": "other",
            "variant": "candidate",
            "served": True,
        }
    )
    calls.append(
        {
            "call_id": "call_old",
            "ts": (T0 - 86400) * 1_000_000,
            "route": "chat",
            "variant": "candidate",
            "served": True,
        }
    )
    with LogWriter(log) as w:
        for c in calls:
            w.append("calls", c)
        for e in events:
            w.append("events", e)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("outcomes") / "log")
    write_log(log)
    with LogStore.open(log) as s:
        yield s


def test_report_counts_only_served_calls_of_the_route_in_the_period(store):
    rep = outcomes_report(store, "chat", since=T0, expected_share=1 / 3)
    (period,) = rep["periods"]
    base, cand = period["variants"]["baseline"], period["variants"]["candidate"]
    assert (base["calls"], cand["calls"]) == (130, 80)
    assert cand["error_rate"]["count"] == 5 + 3 and base["error_rate"]["count"] == 0
    # users u0..u29 have two calls each (one a day): the interval is Wilson's at the effective
    # sample size n / design effect, the design effect from per-user sums (delta method)
    per_user = {f"u{j}": [0, 0] for j in range(50)}
    for _day, n in ((0, 50), (1, 30)):
        for j in range(n):
            per_user[f"u{j}"][0] += j % 10 == 0
            per_user[f"u{j}"][1] += 1
    y = np.array([v[0] for v in per_user.values()], dtype=float)
    n = np.array([v[1] for v in per_user.values()], dtype=float)
    r = y.sum() / n.sum()
    var = ((y - r * n) ** 2).sum() / n.sum() ** 2 * 50 / 49
    n_eff = r * (1 - r) / var
    assert cand["error_rate"]["ci"] == pytest.approx(list(wilson_interval(r * n_eff, n_eff)), rel=1e-9)
    assert cand["error_rate"]["design_effect"] == pytest.approx(var / (r * (1 - r) / 80))
    # j = 16, 36, 56, 76, 96 got a thumb up, then a thumb down: the latest one counts
    assert base["thumbs_up_rate"]["count"] == 25 + 8 - 6 and cand["thumbs_up_rate"]["count"] == 13 + 8 - 3
    assert base["thumbs_down_rate"]["count"] == 20 + 6
    assert base["regeneration_rate"]["count"] == 26
    assert base["rating"]["value"] == pytest.approx(3.0) and base["rating"]["n"] == 20
    assert base["edit_distance"]["value"] == pytest.approx(0.5)
    assert cand["latency_p50_ms"] == pytest.approx(
        float(np.median([200 + j for j in [*range(50), *range(30)]]))
    )
    assert base["cost_per_1k_calls_usd"] == pytest.approx(2.0)
    diffs = {d["metric"]: d for d in period["differences"]}
    assert diffs["error_rate"]["diff"] == pytest.approx(0.1)
    assert diffs["latency_ms"]["verdict"] == "worse" and diffs["cost_usd"]["verdict"] == "better"
    assert diffs["edit_distance"]["higher_is_better"] is False
    # no minimum detectable effect declared for the custom metric: an estimate, no test
    assert diffs["edit_distance"]["tau"] is None and diffs["edit_distance"]["verdict"].startswith("no test")
    # tau is the declared effect, whatever the data; p-values are Holm-adjusted across the metrics
    assert diffs["latency_ms"]["tau"] == 100.0 and diffs["error_rate"]["tau"] == 0.01
    tested = [d for d in period["differences"] if d["tau"] is not None]
    from statsmodels.stats.multitest import multipletests

    holm = multipletests([d["p_value"] for d in tested], method="holm")[1]
    assert [d["p_holm"] for d in tested] == pytest.approx(list(holm))
    assert period["srm"]["units"] == {"baseline": 100, "candidate": 50}
    assert period["srm"]["p_value"] == pytest.approx(1.0)
    orjson.dumps(rep)  # JSON-ready


def test_report_by_day_splits_periods(store):
    rep = outcomes_report(store, "chat", since=T0, by_day=True)
    assert [p["day"] for p in rep["periods"]] == ["2025-06-15", "2025-06-16"]
    assert rep["periods"][1]["variants"]["candidate"]["calls"] == 30


def test_calls_without_the_sticky_key_are_their_own_units(store):
    rep = outcomes_report(store, "chat", since=T0, sticky_key="session")
    (period,) = rep["periods"]
    cand = period["variants"]["candidate"]
    assert rep["unkeyed_calls"] == 210 and any("without a session" in n for n in rep["notes"])
    # every call its own unit: the interval is Wilson's at n / (n / (n - 1))
    assert cand["error_rate"]["ci"] == pytest.approx(list(wilson_interval(8 * 79 / 80, 79)), rel=1e-9)
    assert outcomes_report(store, "chat", since=T0, sticky_key="header:x-user")["notes"][0].startswith(
        "sticky key 'header:x-user' is not in the log"
    )


def test_declared_effects_override_and_must_be_positive(store):
    rep = outcomes_report(store, "chat", since=T0, mde={"edit_distance": 0.1, "latency_ms": 5.0})
    diffs = {d["metric"]: d for d in rep["periods"][0]["differences"]}
    assert diffs["edit_distance"]["tau"] == 0.1 and diffs["latency_ms"]["tau"] == 5.0
    with pytest.raises(OutcomesError):
        outcomes_report(store, "chat", since=T0, mde={"latency_ms": 0.0})


# -- ramps and the canary clock -----------------------------------------------------------
def ramp_log(log, *, before_canary=True):
    """Version 1 (mode off, before the canary): baseline only, thumbs-down 30 %.
    Version 2 (canary 1 %): 2 % thumbs-down in both arms; version 3 (canary 50 %): 10 % in both.
    Pooled, the candidate (mostly in version 3) looks far worse; per version it is equal."""
    calls, events = [], []
    i = 0
    plan = [
        (2, "canary", {"baseline": 9900, "candidate": 100}, 0.02),
        (3, "canary", {"baseline": 5000, "candidate": 5000}, 0.10),
    ]
    if before_canary:
        plan.insert(0, (1, "off", {"baseline": 2000}, 0.30))
    for k, (version, mode, counts, rate) in enumerate(plan):
        for variant, n in counts.items():
            down = round(n * rate)
            for j in range(n):
                i += 1
                cid = f"call_{i:06d}"
                ts = (T0 + k * 86400 + j * 0.5) * 1_000_000
                calls.append(
                    {
                        "call_id": cid,
                        "ts": int(ts),
                        "route": "chat",
                        "variant": variant,
                        "served": True,
                        "mode": mode,
                        "route_version": version,
                        "status": 200,
                        "latency_ms": 100.0,
                    }
                )
                if j < down:
                    events.append(
                        {
                            "event_id": f"e{i}",
                            "call_id": cid,
                            "ts": int(ts) + 1,
                            "kind": "thumbs",
                            "value": "down",
                            "value_num": 0.0,
                        }
                    )
    with LogWriter(log) as w:
        for c in calls:
            w.append("calls", c)
        for e in events:
            w.append("events", e)


@pytest.fixture(scope="module")
def ramp_store(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("ramp") / "log")
    ramp_log(log)
    with LogStore.open(log) as s:
        yield s


def test_ramp_versions_are_compared_apart_and_never_pooled(ramp_store):
    rep = outcomes_report(ramp_store, "chat", since=T0 - 1, sticky_key="session")
    (period,) = rep["periods"]
    diffs = {d["metric"]: d for d in period["differences"]}
    assert diffs["thumbs_down_rate"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert diffs["thumbs_down_rate"]["verdict"] == "no detectable difference"
    assert [v["version"] for v in period["versions"]] == [2, 3]
    for v in period["versions"]:
        d = {x["metric"]: x for x in v["differences"]}
        assert d["thumbs_down_rate"]["diff"] == pytest.approx(0.0, abs=1e-12)
    # what pooling would have said: the displayed per-arm rates over the compared versions differ
    # a lot, and a test on them would call the candidate worse
    base = period["variants"]["baseline"]["thumbs_down_rate"]["value"]
    cand = period["variants"]["candidate"]["thumbs_down_rate"]["value"]
    assert cand - base > 0.05
    pooled = msprt_p_value(cand - base, cand * (1 - cand) / 5100 + base * (1 - base) / 14900, 0.02)
    assert pooled < 1e-6


def test_calls_before_the_canary_are_never_compared_with_canary_calls(ramp_store):
    # --since reaches back before the canary: the baseline-only version is listed, not compared
    rep = outcomes_report(ramp_store, "chat", since=T0 - 1, sticky_key="session")
    (period,) = rep["periods"]
    (excluded,) = period["excluded"]
    assert excluded["version"] == 1 and excluded["mode"] == "off"
    assert excluded["calls"] == {"baseline": 2000} and "only baseline served" in excluded["reason"]
    assert period["variants"]["baseline"]["calls"] == 9900 + 5000  # not the 2,000 from before
    diffs = {d["metric"]: d for d in period["differences"]}
    assert diffs["thumbs_down_rate"]["n"] == {"baseline": 14900.0, "candidate": 5100.0}
    # the same numbers as a log that never had the calls from before the canary
    assert diffs["thumbs_down_rate"]["diff"] == pytest.approx(0.0, abs=1e-12)


def test_the_controller_observation_ignores_calls_before_the_canary(ramp_store):
    from evals.online.controller import observation
    from evals.online.decision import CanaryPolicy, decide
    from evals.online.outcomes_query import query_cells

    groups, _ = query_cells(ramp_store, "chat", T0 - 1, sticky_key="session")  # clock started too early
    obs = observation("canary", 50.0, groups[None], groups[None], 3600.0)
    ev = obs.evidence["thumbs_down_rate"]
    assert ev.periods == 2 and float(ev.estimate) == pytest.approx(0.0, abs=1e-12)
    assert obs.baseline.calls == 14900 and obs.candidate.calls == 5100
    d = decide(CanaryPolicy(), obs)
    assert d.action != "rollback"
