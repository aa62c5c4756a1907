"""Telemetry made by the log agent from the WAL as it is written: outcome events (thumbs,
ratings, regenerations) become metrics by the route and variant of their call, errors carry
``error.type`` on the GenAI duration, and a caller's ``traceparent`` reaches the upstream."""

from __future__ import annotations

import time

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.store.ids import new_id

MSG = [{"role": "user", "content": "hello"}]
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def gw(make_settings, start_gateway):
    settings = make_settings(
        upstreams={
            "base": {"model": "echo-base"},
            "cand": {"model": "echo-cand"},
            "bad": {"model": "error-500"},
        },
        routes={
            "bot": {"baseline": "base", "candidate": "cand", "mode": "canary", "share": 50},
            "broken": {"baseline": "bad"},
        },
    )
    reader = InMemoryMetricReader()
    server = start_gateway(settings, metric_readers=[reader])
    server.reader = reader
    return server


def points(reader, name):
    found = []
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def eventually(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_outcome_events_become_metrics_by_route_and_variant(gw):
    variants = {}
    for i in range(12):
        r = httpx.post(
            gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG, "user": f"u{i}"}
        )
        assert r.status_code == 200
        variants[r.headers["x-request-id"]] = "candidate" if "echo-cand" in r.text else "baseline"
    assert set(variants.values()) == {"baseline", "candidate"}
    expected: dict[tuple[str, str, str], int] = {}
    ratings: dict[str, list[float]] = {}
    for n, (call_id, variant) in enumerate(variants.items()):
        kind, value = ("thumbs", "up" if n % 2 else "down") if n < 8 else ("rating", 2 + n % 3)
        r = httpx.post(gw.base_url + "/feedback", json={"call_id": call_id, "kind": kind, "value": value})
        assert r.status_code == 200, r.text
        if kind == "thumbs":
            expected[(variant, "thumbs", value)] = expected.get((variant, "thumbs", value), 0) + 1
        else:
            ratings.setdefault(variant, []).append(float(value))
    regenerated = next(iter(variants))
    gw.ctx.writer.append(
        "events",
        {
            "event_id": new_id("evt"),
            "call_id": regenerated,
            "ts": time.time_ns() // 1000,
            "kind": "regeneration",
            "value": "same_prompt",
            "value_num": 1.0,
            "source": "detector",
        },
    )

    def feedback():
        got = {
            (p.attributes["shadowtune.variant"], p.attributes["shadowtune.feedback.kind"],
             p.attributes.get("shadowtune.feedback.value", "")): p.value
            for p in points(gw.reader, "shadowtune.feedback")
            if p.attributes["shadowtune.route"] == "bot"
        }  # fmt: skip
        return got if sum(got.values()) == 13 else None

    got = eventually(feedback)  # no flush: the agent tails the WAL
    assert got is not None
    assert {k: v for k, v in got.items() if k[1] == "thumbs"} == expected
    assert got[(variants[regenerated], "regeneration", "same_prompt")] == 1
    assert sum(v for k, v in got.items() if k[1] == "rating") == 4
    hist = {p.attributes["shadowtune.variant"]: p for p in points(gw.reader, "shadowtune.feedback.rating")}
    for variant, values in ratings.items():
        assert hist[variant].count == len(values)
        assert hist[variant].sum == pytest.approx(sum(values))


def test_a_failed_call_has_error_type_on_the_genai_duration(gw):
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "broken", "messages": MSG})
    assert r.status_code == 500

    def failed():
        return [
            p
            for p in points(gw.reader, "gen_ai.client.operation.duration")
            if p.attributes["shadowtune.route"] == "broken"
        ]

    [point] = eventually(failed)
    assert point.attributes["error.type"]
    assert point.attributes["gen_ai.provider.name"]


def test_a_callers_traceparent_is_forwarded_to_the_upstream(gw, fake_upstream):
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "bot", "messages": MSG},
        headers={"traceparent": CALLER},
    )
    assert r.status_code == 200
    [sent] = [q for q in fake_upstream.requests if q["path"].endswith("/chat/completions")][-1:]
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["traceparent"] == CALLER  # no exporter configured: forwarded unchanged
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG})
    assert r.status_code == 200
    headers = {k.lower(): v for k, v in fake_upstream.requests[-1]["headers"].items()}
    assert "traceparent" not in headers
