"""Scheduled drift checks: the gateway runs `shadowtune drift check` and exports the scores."""

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import jobs
from tests.unit.evals.evals_traffic import HOUR_US, now_us, traffic, write_traffic

pytestmark = pytest.mark.real_clock  # the gateway runs the check as a `shadowtune` subprocess


def _gauges(reader):
    out = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name.startswith("shadowtune.drift."):
                    for point in metric.data.data_points:
                        out[(metric.name, point.attributes["shadowtune.drift.check"])] = point.value
    return out


def test_a_year_shift_fires_the_scheduled_check_and_reaches_telemetry(make_settings, start_gateway, log_dir):
    now = now_us()
    write_traffic(
        log_dir, "bot", traffic(300, seed=1, year=2023), start_us=now - 30 * HOUR_US, spread_us=5 * HOUR_US
    )
    write_traffic(
        log_dir, "bot", traffic(300, seed=2, year=2024), start_us=now - 4 * HOUR_US, spread_us=3 * HOUR_US
    )
    settings = make_settings(
        drift={"checks": [{"route": "bot", "reference": "window:24h", "current": "6h", "every_s": 3600}]}
    )
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    gw = start_gateway(settings, metric_readers=[reader], span_exporter=spans)
    report = jobs.run_drift_check(gw.ctx, settings.drift.checks[0])
    assert report is not None and report["drifted"] is True
    gauges = _gauges(reader)
    fired = {
        check
        for (name, check), value in gauges.items()
        if name == "shadowtune.drift.detected" and value == 1.0
    }
    assert fired, gauges
    drift_spans = [s for s in spans.get_finished_spans() if s.name == "drift check bot"]
    assert drift_spans and drift_spans[0].attributes["shadowtune.drift.detected"] is True
    events = {e.attributes["shadowtune.drift.check"]: e.attributes for e in drift_spans[0].events}
    assert fired <= set(events)


def test_without_drift_nothing_fires(make_settings, start_gateway, log_dir):
    now = now_us()
    write_traffic(
        log_dir, "bot", traffic(300, seed=1, year=2023), start_us=now - 30 * HOUR_US, spread_us=5 * HOUR_US
    )
    write_traffic(
        log_dir, "bot", traffic(300, seed=3, year=2023), start_us=now - 4 * HOUR_US, spread_us=3 * HOUR_US
    )
    settings = make_settings(drift={"checks": [{"route": "bot", "reference": "window:24h", "current": "6h"}]})
    reader = InMemoryMetricReader()
    gw = start_gateway(settings, metric_readers=[reader])
    report = jobs.run_drift_check(gw.ctx, settings.drift.checks[0])
    assert report is not None and report["drifted"] is False
    assert not [v for (name, _), v in _gauges(reader).items() if name == "shadowtune.drift.detected" and v]
