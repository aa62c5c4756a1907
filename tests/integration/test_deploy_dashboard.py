"""The Grafana dashboard (deploy/grafana/dashboards) queries only metrics a running gateway exports.

A gateway is started in-process in front of the fake upstream, with a canary route and a failing
route; it answers calls (plain and streamed, served by both variants, one error), takes a thumbs
down, and its telemetry records a controller decision and a drift report as the gateway's jobs do.
Then ``/metrics`` is scraped, and every metric the dashboard names must be among the samples, every
label it matches or groups by must be on them, and every exact label value it matches must occur.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.deploy_files import ROOT, dashboard_selectors, dashboards, load_dashboard, queries, scan

MSG = [{"role": "user", "content": "hello"}]
# Metrics the dashboard shows that come with branches not merged yet: they may be missing from /metrics only
# while gateway/telemetry.py does not declare their instrument (then the check is strict by itself).
PENDING_METRICS = {
    "shadowtune_feedback_total": ("log-agent", "shadowtune.feedback"),
    "shadowtune_log_healthy": ("state", "shadowtune.log.healthy"),
    "shadowtune_state_healthy": ("state", "shadowtune.state.healthy"),
}
ADDED_BY_PROMETHEUS = {"instance", "job"}


def declared(instrument: str) -> bool:
    return f'"{instrument}"' in (ROOT / "gateway" / "telemetry.py").read_text()


def samples(text: str) -> dict[str, dict[str, set[str]]]:
    """sample name -> label -> the values seen."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = out[s.name]
            for k, v in s.labels.items():
                labels[k].add(v)
    return out


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> Iterator[dict[str, dict[str, set[str]]]]:
    from gateway.config import Settings
    from tests.support.fake_upstream import FakeUpstream
    from tests.support.servers import GatewayServer

    fake_upstream = FakeUpstream().start()

    settings = Settings.model_validate(
        {
            "server": {"auth": "open"},
            "store": {"log_dir": str(tmp_path_factory.mktemp("log")), "flush_interval": 0.2},
            "upstreams": {
                "base": {"base_url": fake_upstream.base_url, "model": "echo-base"},
                "cand": {"base_url": fake_upstream.base_url, "model": "echo-cand"},
                "bad": {"base_url": fake_upstream.base_url, "model": "error-500"},
            },
            "routes": {
                "bot": {"baseline": "base", "candidate": "cand", "mode": "canary", "share": 50},
                "broken": {"baseline": "bad"},
            },
        }
    )
    gw = GatewayServer(settings).start()
    try:
        variants = set()
        call_id = None
        for i in range(16):
            r = httpx.post(
                gw.base_url + "/chat/completions",
                json={"model": "bot", "messages": MSG, "user": f"u{i}", "stream": i % 2 == 0},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            variants.add("candidate" if "echo-cand" in r.text else "baseline")
            call_id = r.headers["x-request-id"]
        assert variants == {"baseline", "candidate"}
        r = httpx.post(
            gw.base_url + "/chat/completions", json={"model": "broken", "messages": MSG}, timeout=30
        )
        assert r.status_code >= 500
        r = httpx.post(
            gw.base_url + "/feedback", json={"call_id": call_id, "kind": "thumbs", "value": "down"}
        )
        assert r.status_code == 200, r.text
        # what the controller and drift jobs report (gateway/jobs.py)
        gw.ctx.telemetry.record_decision("bot", {"action": "advance", "share_from": 50, "share_to": 75})
        check = {"name": "embedding_mmd", "statistic": 0.12, "threshold": 0.3, "drifted": False}
        gw.ctx.telemetry.record_drift("bot", {"drifted": False, "checks": [check]})
        wanted = {sel.metric for _, sel in dashboard_selectors()} - set(PENDING_METRICS)
        deadline = time.monotonic() + 30
        while True:  # the metrics are made from the log's batches, a moment after the calls
            gw.flush()
            text = httpx.get(gw.url + "/metrics", timeout=10).text
            found = samples(text)
            calls = found.get("shadowtune_calls_total", {})
            feedback_due = declared("shadowtune.feedback") and "shadowtune_feedback_total" not in found
            if (
                wanted <= set(found) and len(calls.get("shadowtune_variant", ())) >= 2 and not feedback_due
            ) or (time.monotonic() > deadline):
                break
            time.sleep(0.2)
    finally:
        gw.stop()
    fake_upstream.stop()
    yield found


def test_every_metric_the_dashboard_names_is_exported(scraped):
    selectors = dashboard_selectors()
    assert len(selectors) >= 15
    missing = []
    for where, sel in selectors:
        if sel.metric in scraped:
            continue
        _branch, instrument = PENDING_METRICS.get(sel.metric, (None, None))
        if instrument and not declared(instrument):
            continue  # comes with the `branch` branch
        missing.append(f"{where}: {sel.metric}")
    assert missing == [], f"exported: {sorted(scraped)}"


def test_the_labels_the_dashboard_uses_are_on_its_metrics(scraped):
    problems = []
    for path in dashboards():
        for where, query in queries(load_dashboard(path)):
            selectors, grouping = scan(query)
            present = [scraped[s.metric] for s in selectors if s.metric in scraped]
            pending = len(present) < len(selectors)  # a metric of a branch not merged (checked above)
            have = set().union(*(set(p) for p in present)) | ADDED_BY_PROMETHEUS
            for label in set() if pending else grouping - have:
                problems.append(f"{path.name} {where}: groups by {label!r}, not a label of its metrics")
            for sel in selectors:
                labels = scraped.get(sel.metric)
                if labels is None:
                    continue
                for name, op, value in sel.matchers:
                    if name not in labels and name not in ADDED_BY_PROMETHEUS:
                        problems.append(f"{where}: {sel.metric} has no label {name!r}")
                    elif op == "=" and "$" not in value and value not in labels.get(name, ()):
                        problems.append(
                            f"{where}: {sel.metric}{{{name}={value!r}}} never occurs: {labels[name]}"
                        )
    assert problems == []


def test_the_scanner_finds_metrics_labels_and_functions_apart():
    q = (
        'sum by (le, shadowtune_variant) (rate(a_bucket{x="1",y=~"$route"}[$__rate_interval])) '
        "/ ignoring (k) group_left sum(rate(b_total[5m])) or vector(0)"
    )
    selectors, labels = scan(q)
    assert {s.metric for s in selectors} == {"a_bucket", "b_total"}
    assert labels == {"le", "shadowtune_variant", "k"}
    assert ("x", "=", "1") in selectors[0].matchers
    assert scan("label_values(m_total, shadowtune_route)")[1] == {"shadowtune_route"}
    assert re.search("vector", q) and "vector" not in {s.metric for s in selectors}


def test_a_dashboard_naming_an_unknown_metric_would_fail(scraped):
    """The check can fail: a renamed metric (the old time-to-first-token name, a typo) is not exported."""
    for bogus in ("shadowtune_call_total", "gen_ai_client_operation_duration_bucket"):
        [sel], _ = scan(f"sum(rate({bogus}[5m]))")
        assert sel.metric not in scraped


def test_dashboards_are_found():
    assert [p.name for p in dashboards()] == ["shadowtune.json"]
    assert all(isinstance(p, Path) for p in dashboards())
