"""OpenTelemetry from the running gateway, captured with the SDK's in-memory exporters:
one span per upstream call with the GenAI attributes and Shadowtune's route/variant/mode/
served, the shadow call as a linked span, the caller's ``traceparent`` honoured, metrics
labelled by route and variant, Prometheus ``/metrics``, and no prompt or completion text
unless ``telemetry.capture_content``. Telemetry is made when the log writer flushes."""

from __future__ import annotations

import time

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

SECRET_PROMPT = "my very private question"
MSG = [{"role": "user", "content": SECRET_PROMPT}]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def start(make_settings, start_gateway):
    """``start(mode=, candidate=, route=, **sections)`` -> (gateway, span exporter, metric reader)."""

    def run(*, mode="shadow", candidate=None, route=None, **sections):
        settings = make_settings(
            upstreams={"base": {"model": "echo-base"}, "cand": candidate or {"model": "echo-cand"}},
            routes={"bot": {"baseline": "base", "candidate": "cand", "mode": mode, **(route or {})}},
            **sections,
        )
        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        gw = start_gateway(settings, span_exporter=exporter, metric_readers=[reader])
        return gw, exporter, reader

    return run


def chat(gw, **extra):
    headers = extra.pop("headers", None)
    r = httpx.post(
        gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG, **extra}, headers=headers
    )
    assert r.status_code == 200, r.text
    return r


def spans_after_flush(gw, exporter, n, timeout=10.0):
    """The finished spans once there are ``n`` (shadow calls end after the user's call)."""
    deadline = time.monotonic() + timeout
    while True:
        gw.flush()
        spans = exporter.get_finished_spans()
        if len(spans) >= n or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def by_call(spans):
    return {s.attributes["shadowtune.call_id"]: s for s in spans}


def points(reader, name):
    found = []
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def test_each_call_has_a_span_with_genai_and_shadowtune_attributes(start):
    gw, exporter, _ = start()
    call_id = chat(gw).headers["x-request-id"]
    spans = spans_after_flush(gw, exporter, 2)
    assert len(spans) == 2
    served = by_call(spans)[call_id]
    [shadow] = [s for s in spans if s is not served]
    assert served.name == "chat bot"
    a = served.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "bot"
    assert a["gen_ai.response.model"] == "echo-base"
    assert a["gen_ai.usage.input_tokens"] == 7
    assert a["gen_ai.usage.output_tokens"] == len(
        f"echo-base: {SECRET_PROMPT}".split()
    )  # the fake counts words
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
    assert (a["shadowtune.route"], a["shadowtune.variant"], a["shadowtune.mode"], a["shadowtune.served"]) == (
        "bot",
        "baseline",
        "shadow",
        True,
    )
    s = shadow.attributes
    assert (s["shadowtune.variant"], s["shadowtune.served"], s["shadowtune.mode"]) == (
        "candidate",
        False,
        "shadow",
    )
    assert s["gen_ai.response.model"] == "echo-cand"
    assert s["shadowtune.parent_call_id"] == call_id
    assert served.status.status_code != StatusCode.ERROR
    assert served.end_time >= served.start_time


def test_the_shadow_span_links_to_the_served_span(start):
    gw, exporter, _ = start()
    call_id = chat(gw).headers["x-request-id"]
    spans = spans_after_flush(gw, exporter, 2)
    served = by_call(spans)[call_id]
    [shadow] = [s for s in spans if s is not served]
    assert served.links == ()
    [link] = shadow.links
    assert link.context.span_id == served.context.span_id
    assert link.context.trace_id == served.context.trace_id
    assert shadow.context.span_id != served.context.span_id


def test_a_callers_traceparent_makes_the_served_span_its_child(start):
    gw, exporter, _ = start()
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    call_id = chat(gw, headers={"traceparent": traceparent}).headers["x-request-id"]
    spans = spans_after_flush(gw, exporter, 2)
    served = by_call(spans)[call_id]
    assert served.context.trace_id == int(CALLER_TRACE, 16)
    assert served.parent is not None
    assert served.parent.span_id == int(CALLER_SPAN, 16)
    # the shadow span's link still finds the served span, now in the caller's trace
    [shadow] = [s for s in spans if s is not served]
    [link] = shadow.links
    assert (link.context.trace_id, link.context.span_id) == (served.context.trace_id, served.context.span_id)


def test_a_malformed_traceparent_is_ignored(start):
    gw, exporter, _ = start(mode="off")
    call_id = chat(gw, headers={"traceparent": "00-nothex-bad-01"}).headers["x-request-id"]
    [span] = spans_after_flush(gw, exporter, 1)
    assert span.attributes["shadowtune.call_id"] == call_id
    assert span.parent is None


def test_a_streamed_call_has_a_first_token_event_and_usage(start):
    gw, exporter, reader = start(mode="off")
    with httpx.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json={"model": "bot", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        r.read()
        call_id = r.headers["x-request-id"]
    [span] = spans_after_flush(gw, exporter, 1)
    assert span.attributes["shadowtune.call_id"] == call_id
    assert tuple(span.attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert span.attributes["gen_ai.usage.input_tokens"] == 7
    assert [e.name for e in span.events] == ["gen_ai.first_token"]
    assert span.start_time <= span.events[0].timestamp <= span.end_time
    [ttft] = points(reader, "gen_ai.client.operation.time_to_first_chunk")
    assert ttft.count == 1
    assert ttft.attributes["shadowtune.variant"] == "baseline"


def test_a_failing_shadow_call_is_an_error_span_and_an_error_metric(start):
    gw, exporter, reader = start(candidate={"model": "error-503", "retries": 0})
    call_id = chat(gw).headers["x-request-id"]
    spans = spans_after_flush(gw, exporter, 2)
    served = by_call(spans)[call_id]
    [shadow] = [s for s in spans if s is not served]
    assert shadow.status.status_code == StatusCode.ERROR
    assert shadow.attributes["error.type"]
    assert served.status.status_code != StatusCode.ERROR
    [err] = points(reader, "shadowtune.errors")
    assert (err.attributes["shadowtune.route"], err.attributes["shadowtune.variant"], err.value) == (
        "bot",
        "candidate",
        1,
    )
    assert err.attributes["error.type"]
    statuses = {
        p.attributes["shadowtune.variant"]: p.attributes["http.response.status_code"]
        for p in points(reader, "shadowtune.calls")
    }
    assert statuses == {"baseline": 200, "candidate": 503}


def test_metrics_are_labelled_by_route_and_variant(start):
    gw, exporter, reader = start()
    for _ in range(3):
        chat(gw)
    spans_after_flush(gw, exporter, 6)
    calls = {
        (p.attributes["shadowtune.route"], p.attributes["shadowtune.variant"]): p.value
        for p in points(reader, "shadowtune.calls")
    }
    assert calls == {("bot", "baseline"): 3, ("bot", "candidate"): 3}
    durations = {
        p.attributes["shadowtune.variant"]: p.count
        for p in points(reader, "gen_ai.client.operation.duration")
    }
    assert durations == {"baseline": 3, "candidate": 3}
    # token usage: a per-call histogram (GenAI semconv) or a per-batch counter, whichever the gateway exports
    tokens = {
        (p.attributes["shadowtune.variant"], p.attributes["gen_ai.token.type"]): getattr(p, "sum", None)
        or p.value
        for p in points(reader, "gen_ai.client.token.usage") + points(reader, "shadowtune.tokens")
    }
    assert tokens[("baseline", "input")] == 21
    assert tokens[("candidate", "input")] == 21


def test_shadow_skips_and_queue_depth_are_metrics(start):
    gw, exporter, reader = start(route={"shadow_rate": 0.0})
    for _ in range(4):
        chat(gw)
    spans_after_flush(gw, exporter, 4)
    [skips] = points(reader, "shadowtune.shadow.skipped")
    assert (skips.attributes["shadowtune.route"], skips.attributes["shadowtune.reason"], skips.value) == (
        "bot",
        "sampled",
        4,
    )
    [depth] = points(reader, "shadowtune.shadow.queue_depth")
    assert depth.value == 0


def test_prometheus_metrics_endpoint_has_the_series(start):
    gw, exporter, _ = start()
    chat(gw)
    spans_after_flush(gw, exporter, 2)
    r = httpx.get(gw.url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    for variant, served in (("baseline", "true"), ("candidate", "false")):
        [series] = [
            line
            for line in lines
            if line.startswith("shadowtune_calls_total{") and f'shadowtune_variant="{variant}"' in line
        ]
        assert 'shadowtune_route="bot"' in series
        assert f'shadowtune_served="{served}"' in series
        assert series.endswith(" 1.0")
    assert any(line.startswith("gen_ai_client_operation_duration_seconds_bucket{") for line in lines)
    assert any(line.startswith(("gen_ai_client_token_usage", "shadowtune_tokens")) for line in lines)
    assert SECRET_PROMPT not in r.text


def test_prompt_and_completion_text_stay_out_of_spans_by_default(start):
    gw, exporter, _ = start()
    chat(gw)
    spans = spans_after_flush(gw, exporter, 2)
    assert len(spans) == 2
    for span in spans:
        for key, value in span.attributes.items():
            assert SECRET_PROMPT not in str(value), key
        for event in span.events:
            assert SECRET_PROMPT not in str(dict(event.attributes or {}))


def test_capture_content_puts_prompt_and_completion_in_spans(start):
    gw, exporter, _ = start(mode="off", telemetry={"capture_content": True})
    call_id = chat(gw).headers["x-request-id"]
    [span] = spans_after_flush(gw, exporter, 1)
    assert span.attributes["shadowtune.call_id"] == call_id
    assert SECRET_PROMPT in span.attributes["gen_ai.input.messages"]
    assert span.attributes["gen_ai.output.messages"] == f"echo-base: {SECRET_PROMPT}"
