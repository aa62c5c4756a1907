"""The agent's call histograms aggregated per batch (`gateway.histograms`, Prometheus the only
reader) expose exactly what the OpenTelemetry SDK's histograms give Prometheus for the same
records: same families, label sets, ``le`` buckets, counts and sums. Both sides are real
agents (`build_agent`), one of them with an extra in-memory reader, which keeps the SDK path."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from gateway.agent.app import build_agent
from gateway.config import Settings
from gateway.store.ids import new_id
from gateway.store.rows import derive
from gateway.telemetry import Telemetry

HISTOGRAMS = (
    "gen_ai_client_operation_duration_seconds",
    "gen_ai_client_operation_time_to_first_chunk_seconds",
    "gen_ai_client_token_usage",
)
# values on and around the bucket boundaries (a boundary belongs to its own bucket: ``le``)
LATENCY_MS = st.sampled_from([0.0, 10.0, 10.000001, 20.0, 640.0, 81920.0, 90000.0]) | st.floats(0, 1e5)
TOKENS = st.sampled_from([0, 1, 2, 4, 16, 1024, 67108864, 67108865]) | st.integers(0, 2**40)
name = st.text(string.ascii_lowercase, min_size=1, max_size=4)

record = st.fixed_dictionaries(
    {
        "endpoint": st.sampled_from(["chat.completions", "embeddings"]),
        "route": name,
        "variant": st.sampled_from(["baseline", "candidate"]),
        "served": st.booleans(),
        "mode": st.sampled_from(["off", "shadow", "canary"]),
        "status": st.sampled_from([200, 200, 429, 503]),
    },
    optional={
        "provider": st.sampled_from(["openai", "anthropic"]),
        "error_type": st.sampled_from(["timeout", "upstream_error"]),
        "latency_ms": LATENCY_MS,
        "ttft_ms": LATENCY_MS,
        "input_tokens": TOKENS,
        "output_tokens": TOKENS,
    },
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp("log"))
    s = Settings.model_validate(
        {"store": {"log_dir": log_dir, "compact_interval": 0}, "server": {"auth": "open"}, "routes": {}}
    )
    ctx = build_agent(s)
    yield ctx
    ctx.feedback_index.close()
    ctx.telemetry.shutdown()


def telemetry(ctx, **sinks):
    """A fresh `Telemetry` on the agent's context (its histograms start empty)."""
    return Telemetry(ctx.settings.telemetry, ctx, **sinks)


def histogram_samples(t):
    text = t.prometheus()[0].decode()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name in HISTOGRAMS:
            assert family.type == "histogram"
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(record, min_size=1, max_size=12), min_size=1, max_size=3))
def test_batch_histograms_expose_what_the_sdk_exposes(agent, batches):
    fast, sdk = telemetry(agent), telemetry(agent, metric_readers=[InMemoryMetricReader()])
    assert fast._batch is not None and sdk._batch is None
    for batch in batches:
        rows = [derive("calls", {**r, "call_id": new_id("call"), "ts": 1_700_000_000_000_000}) for r in batch]
        fast.on_records("calls", [dict(r) for r in rows])
        sdk.on_records("calls", [dict(r) for r in rows])
    got, want = histogram_samples(fast), histogram_samples(sdk)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert any(k[0].endswith("_count") for k in want) == any(
        "latency_ms" in r or "ttft_ms" in r or "input_tokens" in r or "output_tokens" in r
        for b in batches
        for r in b
    )


def test_prometheus_alone_keeps_the_call_histograms_per_batch(agent):
    t = telemetry(agent)
    assert t._batch is not None  # the default: Prometheus on, no other reader
    row = derive(
        "calls", {"call_id": new_id("call"), "ts": 1, "route": "r", "status": 200, "latency_ms": 5.0}
    )
    t.on_records("calls", [row])
    text = t.prometheus()[0].decode()
    assert "gen_ai_client_operation_duration_seconds_bucket{" in text
    assert 'le="0.01"' in text and 'shadowtune_route="r"' in text
    assert "gen_ai_client_token_usage" not in text  # no tokens in that record: no family yet, as the SDK
