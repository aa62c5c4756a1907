"""Histograms aggregated per batch in plain Python, exposed to Prometheus as the SDK would.

The OpenTelemetry SDK has no batch API: each `Histogram.record` builds a measurement, asks the
exemplar filter, and aggregates it once per reader (about 14 µs a point, four points a call:
most of the log agent's cost per row). When Prometheus is the only reader of the agent's
metrics (the default), the call histograms are kept here instead: `BatchHistogram.observe`
adds one value to a series' bucket counts and sum (a ``bisect`` and two additions), and
`HistogramCollector` writes them at scrape time with the names, labels, units and buckets the
SDK's Prometheus exporter gives the same instruments (``gen_ai_client_operation_duration_seconds``,
``gen_ai_client_token_usage``, ...: a test compares the two expositions).

With any other metric reader (OTLP, the tests' in-memory one) the SDK instruments are used,
point by point, as they have to be for those readers (`gateway.telemetry`).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_attribute, sanitize_full_name
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

Series = list[Any]
"""``[bucket counts (one more than the boundaries), sum]`` of one label set."""


class BatchHistogram:
    """One histogram: cumulative bucket counts and sums per attribute set (a hashable key)."""

    def __init__(self, name: str, unit: str, description: str, boundaries: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.boundaries = tuple(boundaries)  # as given: the exporter writes ``le`` from them
        self.series: dict[tuple[tuple[str, Any], ...], Series] = {}
        self.lock = threading.Lock()

    def observe(self, attributes: tuple[tuple[str, Any], ...], value: float) -> None:
        """Add one value (call under `lock` when several threads observe: see `observe_many`)."""
        s = self.series.get(attributes)
        if s is None:
            s = self.series[attributes] = [[0] * (len(self.boundaries) + 1), 0.0]
        s[0][bisect_left(self.boundaries, value)] += 1
        s[1] += value

    def observe_many(self, points: Sequence[tuple[tuple[tuple[str, Any], ...], float]]) -> None:
        """A batch of ``(attributes, value)`` points, under the lock once."""
        series, bounds, width = self.series, self.boundaries, len(self.boundaries) + 1
        with self.lock:  # `observe`, inlined (a few points per call, tens of thousands a second)
            for attributes, value in points:
                s = series.get(attributes)
                if s is None:
                    s = series[attributes] = [[0] * width, 0.0]
                s[0][bisect_left(bounds, value)] += 1
                s[1] += value

    def snapshot(self) -> list[tuple[dict[str, Any], list[int], float]]:
        with self.lock:
            return [(dict(a), list(s[0]), s[1]) for a, s in self.series.items()]


class HistogramCollector(Collector):
    """A prometheus_client collector for `BatchHistogram`\\ s, in the SDK exporter's format."""

    def __init__(self, histograms: Sequence[BatchHistogram], scope: dict[str, str]) -> None:
        """``scope``: the instrumentation scope's labels, which the exporter adds to every point
        (``otel_scope_name``, ``otel_scope_version``, ``otel_scope_schema_url``)."""
        self.histograms = list(histograms)
        self.scope = scope

    def collect(self) -> Iterator[HistogramMetricFamily]:
        for h in self.histograms:
            points = h.snapshot()
            if not points:
                continue  # as the SDK: no family before the first point
            rows = [
                {**self.scope, **{sanitize_attribute(k): _label(v) for k, v in attrs.items()}}
                for attrs, _, _ in points
            ]
            keys = sorted({k for row in rows for k in row})
            family = HistogramMetricFamily(
                sanitize_full_name(h.name), h.description, labels=keys, unit=map_unit(h.unit)
            )
            bounds = [str(b) for b in h.boundaries] + ["+Inf"]
            for row, (_, counts, total) in zip(rows, points, strict=True):
                cumulative, buckets = 0, []
                for bound, n in zip(bounds, counts, strict=True):
                    cumulative += n
                    buckets.append((bound, cumulative))
                family.add_metric([row.get(k, "") for k in keys], buckets, total)
            yield family


def _label(value: Any) -> str:
    """A label value as the SDK's Prometheus exporter writes it (JSON for anything but text)."""
    if isinstance(value, str):
        return value
    import json

    return json.dumps(value, default=str)
