"""The dashboard's "Worth it?" panel gives `shadowtune report worth-it`'s figures on the same log."""

from __future__ import annotations

import re

import pytest

from evals.worth_it import worth_it_report
from gateway.store import LogStore
from gateway.web import _common as web
from gateway.web import _worth as worth
from tests.unit.evals.test_worth_it import DAY, PRICES, T0, write_log

LO, HI = int((T0 - 10) * 1e6), int((T0 + 3 * DAY) * 1e6)
USAGE = [
    "model",
    "calls",
    "served",
    "shadow",
    "answered",
    "error_rate",
    "tokens_in_per_call",
    "tokens_out_per_call",
    "latency_p50_ms",
    "latency_p95_ms",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "cost_per_1k_usd",
]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("worth_panel") / "log")
    write_log(log)
    return log


def _both(log_dir, prices):
    with LogStore.open(log_dir) as s:
        report = worth_it_report(s, "chat", LO / 1e6, HI / 1e6, prices=prices)
        panel = worth.panel(s, ["chat", "other", "idle"], LO, HI, prices)
    return report, panel


def _render(panel) -> str:
    anchors = {r: "charts-" + worth.slug(r) for r in panel}
    return web.env.get_template("_worth.html").render(worth=panel, period="30d", anchors=anchors)


@pytest.mark.parametrize("prices", [PRICES, {}], ids=["priced", "no-price"])
def test_the_panel_figures_are_the_reports(log_dir, prices):
    report, panel = _both(log_dir, prices)
    assert set(panel) == {"chat", "other"}  # a route without calls in the window has no panel
    chat = panel["chat"]
    for name in ("baseline", "candidate"):
        for key in USAGE:
            assert chat["variants"][name][key] == report["variants"][name][key], (name, key)
    assert chat["current_share"] == report["current_share"]
    for label in ("current", "full"):
        mine, theirs = chat["projection"]["at"][label], report["projection"]["at"][label]
        assert mine == {k: v for k, v in theirs.items() if k != "quality"}
    assert chat["projection"]["monthly_calls"] == report["projection"]["monthly_calls"]
    assert set(chat["missing"]) <= set(report["missing"])
    assert [m for m in report["missing"] if "eval" not in m] == chat["missing"]


def test_the_panel_renders_the_numbers_and_says_when_a_price_is_missing(log_dir):
    _, panel = _both(log_dir, PRICES)
    html = _render(panel)
    cand = re.search(r'<tr data-variant="candidate">(.*?)</tr>', html, re.S).group(1)
    assert "101 <small>(41 / 60)</small>" in cand
    assert "200 / 50" in cand and "$0.1750" in cand and "300 ms / 300 ms" in cand
    base = re.search(r'<tr data-variant="baseline">(.*?)</tr>', html, re.S).group(1)
    assert "$2.80" in base and "800 ms / 800 ms" in base and "400 ms / 400 ms" in base
    monthly = (100 + 41) / 2.0 * 30
    saved_full = monthly * (2.8 - 0.175) / 1000
    assert f"saving ${saved_full:,.2f} against all-baseline" in html
    assert "p50 500 ms faster per candidate call" in html
    assert 'href="#charts-chat"' in html and 'href="#rates"' in html

    _, unpriced = _both(log_dir, {})
    html = _render(unpriced)
    assert '<td class="n cost missing" data-value="">no price</td>' in html
    assert "monthly cost unknown (a price is missing)" in html
    assert "set upstreams.ft.price_in / price_out" in html


def test_route_names_and_models_are_escaped(tmp_path):
    from gateway.store import LogWriter

    log = str(tmp_path / "log")
    evil = "<script>alert(1)</script>"
    with LogWriter(log) as w:
        w.append(
            "calls",
            {
                "call_id": "call_1",
                "ts": int((T0 + 5) * 1e6),
                "route": evil,
                "variant": "baseline",
                "served": True,
                "status": 200,
                "upstream_model": evil,
                "upstream": evil,
            },
        )
    with LogStore.open(log) as s:
        panel = worth.panel(s, [evil], LO, HI, {})
    html = _render(panel)
    assert "<script>" not in html and "&lt;script&gt;" in html
