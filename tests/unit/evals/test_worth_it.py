"""`shadowtune report worth-it` against a real log with known costs, latencies and outcomes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from evals.report_cli import report
from evals.worth_it import format_worth_it, worth_it_report
from gateway.store import LogStore, LogWriter

T0 = 1_750_000_000  # 2025-06-15T15:06:40Z; every timestamp below is relative to it
DAY = 86400
PRICES = {"base": (2.0, 8.0), "ft": (0.5, 1.5)}  # USD per million tokens


def _call(i: int, ts: float, variant: str, served: bool, version: int, mode: str, **kw):
    row = {
        "call_id": f"call_{i:05d}",
        "ts": int(ts * 1_000_000),
        "route": "chat",
        "variant": variant,
        "served": served,
        "mode": mode,
        "route_version": version,
        "upstream": "base" if variant == "baseline" else "ft",
        "upstream_model": "gpt-big" if variant == "baseline" else "tiny-ft",
        "user": f"u{i % 37}",
        "status": 200,
        "input_tokens": 1000 if variant == "baseline" else 200,
        "output_tokens": 100 if variant == "baseline" else 50,
        "latency_ms": 800.0 if variant == "baseline" else 300.0,
        "stream": True,
        "ttft_ms": 400.0 if variant == "baseline" else 100.0,
    }
    if variant == "baseline":  # the baseline was priced when it was called; the candidate was not
        row["cost_usd"] = (1000 * 2.0 + 100 * 8.0) / 1e6
    row.update(kw)
    return row


def write_log(log: str) -> None:
    """Version 1 (shadow, day 0): 60 baseline served + 60 candidate shadow; version 2 (canary at
    50 %, day 1-2): 40 + 40 served. Thumbs up: every 2nd baseline and every 4th candidate call."""
    calls, events = [], []
    i = 0
    for j in range(60):
        ts = T0 + j * 60
        i += 1
        calls.append(_call(i, ts, "baseline", True, 1, "shadow"))
        i += 1
        calls.append(_call(i, ts + 1, "candidate", False, 1, "shadow"))
    for j in range(40):
        ts = T0 + DAY + j * 60
        for variant, every in (("baseline", 2), ("candidate", 4)):
            i += 1
            calls.append(_call(i, ts + (variant == "candidate"), variant, True, 2, "canary"))
            if j % every == 0:
                events.append(
                    {
                        "event_id": f"evt_{i}",
                        "call_id": f"call_{i:05d}",
                        "ts": int((ts + 5) * 1_000_000),
                        "kind": "thumbs",
                        "value": "up",
                        "value_num": 1.0,
                    }
                )
    # the last call, 2 days after the first: a candidate error (no tokens, no cost)
    i += 1
    calls.append(
        _call(
            i,
            T0 + 2 * DAY,
            "candidate",
            True,
            2,
            "canary",
            status=502,
            error_type="upstream_error",
            input_tokens=None,
            output_tokens=None,
            latency_ms=50.0,
            ttft_ms=None,
        )
    )
    calls.append(_call(9999, T0 + 60, "baseline", True, 1, "shadow", route="other"))  # another route
    with LogWriter(log) as w:
        for c in calls:
            w.append("calls", c)
        for e in events:
            w.append("events", e)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("worth") / "log")
    write_log(log)
    return log


def _report(log_dir, **kw):
    with LogStore.open(log_dir) as store:
        return worth_it_report(store, "chat", T0 - 10, T0 + 3 * DAY, log_dir=log_dir, **kw)


def test_usage_and_cost_per_variant(log_dir):
    r = _report(log_dir, prices=PRICES)
    b, c = r["variants"]["baseline"], r["variants"]["candidate"]
    assert (b["calls"], b["served"], b["shadow"]) == (100, 100, 0)
    assert (c["calls"], c["served"], c["shadow"]) == (101, 41, 60)
    assert c["error_rate"] == pytest.approx(1 / 101)
    assert (b["tokens_in_per_call"], b["tokens_out_per_call"]) == (1000, 100)
    assert (c["tokens_in_per_call"], c["tokens_out_per_call"]) == (200, 50)
    assert b["cost_per_1k_usd"] == pytest.approx(1000 * 0.0028)
    # the candidate's rows have no cost: priced from the settings, errors excluded
    assert c["cost_per_1k_usd"] == pytest.approx(1000 * (200 * 0.5 + 50 * 1.5) / 1e6)
    assert (b["latency_p50_ms"], c["latency_p95_ms"]) == (800, 300)
    assert (b["ttft_p50_ms"], c["ttft_p50_ms"]) == (400, 100)


def test_projection_at_the_current_share_and_at_full(log_dir):
    r = _report(log_dir, prices=PRICES)
    assert r["current_share"]["version"] == 2
    assert r["current_share"]["share"] == pytest.approx(41 / 81)
    p = r["projection"]
    assert p["observed_days"] == pytest.approx(2.0, abs=1e-3)
    monthly = (100 + 41) / p["observed_days"] * 30
    assert p["monthly_calls"] == pytest.approx(monthly)
    cb, cc = 2.8, 0.175  # USD per 1,000 calls
    s = 41 / 81
    cur, full = p["at"]["current"], p["at"]["full"]
    assert cur["monthly_cost_usd"] == pytest.approx(monthly * ((1 - s) * cb + s * cc) / 1000)
    assert cur["monthly_saved_usd"] == pytest.approx(monthly * s * (cb - cc) / 1000)
    assert full["monthly_saved_usd"] == pytest.approx(monthly * (cb - cc) / 1000)
    assert full["latency_p50_ms_saved_per_call"] == 500
    assert cur["latency_p50_ms_saved_mean"] == pytest.approx(500 * s)


def test_quality_uses_the_outcome_definitions_and_scales_with_share(log_dir):
    r = _report(log_dir, prices=PRICES)
    outcomes = r["quality"]["outcomes"]
    # thumbs-up rate among served calls of the versions where both were served (version 2, as
    # `eval outcomes` compares): baseline 20 of 40, candidate 10 of 41
    assert outcomes["baseline"]["thumbs_up_rate"]["value"] == pytest.approx(20 / 40)
    assert outcomes["candidate"]["thumbs_up_rate"]["value"] == pytest.approx(10 / 41)
    diff = r["quality"]["differences"]["thumbs_up_rate"]
    full = r["projection"]["at"]["full"]["quality"]["thumbs_up_rate"]
    cur = r["projection"]["at"]["current"]["quality"]["thumbs_up_rate"]
    assert full["diff"] == pytest.approx(diff["diff"])
    assert cur["diff"] == pytest.approx(diff["diff"] * 41 / 81)
    lo, hi = full["ci"]
    assert -1 <= lo < full["diff"] < hi <= 1  # a rate's difference stays a possible difference
    assert cur["ci"] == pytest.approx([lo * 41 / 81, hi * 41 / 81])


def test_missing_prices_are_said_plainly_never_zero(log_dir):
    r = _report(log_dir, prices={})
    assert r["variants"]["candidate"]["cost_per_1k_usd"] is None
    assert r["variants"]["baseline"]["cost_per_1k_usd"] == pytest.approx(2.8)
    assert any("upstream 'ft'" in m and "price_in" in m for m in r["missing"])
    assert r["projection"]["at"]["full"]["monthly_cost_usd"] is None
    text = format_worth_it(r)
    assert "missing:" in text and "upstreams.ft.price_in" in text
    assert "no judge run stored" in text  # no fast eval stored in this log dir


def test_shadow_only_candidate_has_costs_but_no_outcomes(log_dir):
    with LogStore.open(log_dir) as store:  # day 0 only: the candidate ran in shadow
        r = worth_it_report(store, "chat", T0 - 10, T0 + DAY - 1, prices=PRICES, log_dir=log_dir)
    assert r["variants"]["candidate"]["served"] == 0
    assert r["variants"]["candidate"]["cost_per_1k_usd"] == pytest.approx(0.175)
    assert r["current_share"]["share"] == 0
    assert r["projection"]["at"]["current"]["monthly_saved_usd"] == 0
    assert r["projection"]["at"]["full"]["monthly_saved_usd"] > 0
    assert any("no outcomes yet" in m for m in r["missing"])


def test_fast_evals_stored_in_the_log_dir_are_shown(log_dir, tmp_path):
    import shutil

    log = str(tmp_path / "log")
    shutil.copytree(log_dir, log)
    judge = tmp_path / "log" / "evals" / "judge" / "20250616-run1"
    judge.mkdir(parents=True)
    (judge / "summary.json").write_text(
        json.dumps(
            {
                "run_id": "run1",
                "route": "chat",
                "n_judged": 50,
                "win_rate": 0.4,
                "tie_rate": 0.3,
                "loss_rate": 0.3,
                "win_ci": [0.27, 0.54],
                "loss_ci": [0.19, 0.44],
            }
        )
    )
    golden = tmp_path / "log" / "evals" / "golden" / "20250616-run2"
    golden.mkdir(parents=True)
    (golden / "summary.json").write_text(
        json.dumps(
            {
                "model": "tiny-ft",
                "source": "dataset:orders",
                "n": 40,
                "metrics": {"exact_match": {"mean": 0.6}},
                "baseline": {"model": "gpt-big", "metrics": {"exact_match": {"mean": 0.7}}},
                "delta": {"exact_match": {"mean": -0.1}},
            }
        )
    )
    other = tmp_path / "log" / "evals" / "golden" / "20250617-run3"  # newer, another model's
    other.mkdir(parents=True)
    (other / "summary.json").write_text(
        json.dumps({"model": "other-model", "n": 5, "metrics": {}, "baseline": {"metrics": {}}})
    )
    r = _report(log, prices=PRICES)
    assert r["quality"]["judge"]["win_rate"] == 0.4
    assert r["quality"]["golden"]["model"] == "tiny-ft"
    text = format_worth_it(r)
    assert "judge (50 pairs): candidate wins 40.0%" in text
    assert "exact_match 0.600" in text and "baseline: exact_match 0.700" in text


def test_cli_prices_from_the_settings_file(log_dir, tmp_path):
    cfg = tmp_path / "shadowtune.yaml"
    cfg.write_text(
        "upstreams:\n"
        "  base: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: gpt-big, price_in: 2, price_out: 8}\n"
        "  ft: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: tiny-ft, price_in: 0.5, price_out: 1.5}\n"
        "routes:\n  chat: {baseline: base, candidate: ft, mode: canary}\n"
    )
    args = [
        "worth-it",
        "--route",
        "chat",
        "--since",
        "2025-06-15T00:00:00",
        "--until",
        "2025-06-18",
        "--log-dir",
        log_dir,
        "--config",
        str(cfg),
    ]
    res = CliRunner().invoke(report, [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["variants"]["candidate"]["cost_per_1k_usd"] == pytest.approx(0.175)
    text = CliRunner().invoke(report, args)
    assert text.exit_code == 0, text.output
    assert "cost per 1,000 calls" in text.output and "$0.1750" in text.output and "$2.80" in text.output
    assert "projection:" in text.output


def test_cli_unknown_route_reports_missing_not_an_error(log_dir):
    res = CliRunner().invoke(
        report, ["worth-it", "--route", "nope", "--since", "2025-06-01", "--log-dir", log_dir]
    )
    assert res.exit_code == 0, res.output
    assert "no baseline calls on route 'nope'" in res.output
