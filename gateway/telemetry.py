"""OpenTelemetry traces and metrics (GenAI semantic conventions), and Prometheus ``/metrics``.

Nothing here runs on the request path, nor in a request worker: spans and metric points
are made in the host's log agent from the WAL records as they are written
(`gateway.agent.tail.WalTailer`), in batches, with the calls' real start and end times, a
fraction of a second after each call, whether or not the Parquet writes succeed. One
agent per host tails every worker, so ``/metrics`` gives the host's totals. Span and trace
ids are derived from call ids (`gateway.tracectx`), so a shadow call's span links to its
served call's span, and a caller's ``traceparent`` makes the served span a child of the
caller's. Outcome events (thumbs, ratings, regenerations, ...) become metrics by the route
and variant of the call they are about.

Prompt and completion text stay out of telemetry unless ``telemetry.capture_content``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway import __version__, tracectx
from gateway.config import TelemetryConfig
from gateway.histograms import BatchHistogram, HistogramCollector
from gateway.recent import RecentMap
from gateway.tracectx import span_id_of, trace_id_of

log = logging.getLogger("shadowtune.telemetry")

_OPERATION = {"chat.completions": "chat", "embeddings": "embeddings"}
_LATENCY_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_RATING_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
_METRIC_KEYS = (
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "shadowtune.route",
    "shadowtune.variant",
    "shadowtune.mode",
    "shadowtune.served",
    "gen_ai.provider.name",
)
_SCOPE = "shadowtune.gateway"  # the meter's instrumentation scope
_DURATION_DOC = "GenAI operation duration"
_TTFT_DOC = "Time to the first chunk of a streamed answer"
_TOKENS_DOC = "Input and output tokens per call, by gen_ai.token.type"
_VALUE_KINDS = frozenset(("thumbs", "choice", "flag", "regeneration"))  # kinds whose value is a small set
_CALL_MAP_SIZE = 60_000  # call and response ids -> (route, variant), for outcome events on recent calls
Resolver = Callable[[list[str]], dict[str, tuple[str, str]]]


def parse_traceparent(value: str | None) -> SpanContext | None:
    parsed = tracectx.parse(value)
    if parsed is None:
        return None
    return SpanContext(parsed[0], parsed[1], is_remote=True, trace_flags=TraceFlags(1))


class _CallIds(IdGenerator):
    """Ids chosen by the caller (per thread) when set, random otherwise."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._random = RandomIdGenerator()

    def set(self, span_id: int, trace_id: int) -> None:
        self._local.ids = (span_id, trace_id)

    def clear(self) -> None:
        self._local.ids = None

    def generate_span_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[0] if ids else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[1] if ids else self._random.generate_trace_id()


class _CallCounts:
    """One batch of calls, counted per attribute key before the instruments see it."""

    __slots__ = ("calls", "cost", "errors", "points")

    def __init__(self) -> None:
        self.calls: dict[tuple[Any, ...], int] = {}
        self.errors: dict[tuple[Any, ...], int] = {}
        self.cost: dict[tuple[Any, ...], float] = {}
        self.points: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
        """Batch histogram points: duration, time to first chunk, tokens (`Telemetry._batch_points`)."""


class Telemetry:
    def __init__(
        self,
        config: TelemetryConfig,
        ctx: Any,
        *,
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] = (),
    ) -> None:
        self.config = config
        self.ctx = ctx
        resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        self.registry = CollectorRegistry()
        readers: list[MetricReader] = list(metric_readers)
        if config.prometheus:
            readers.append(PrometheusMetricReader(disable_target_info=True, registry=self.registry))
        self._ids = _CallIds()
        self._attr_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._point_sets: dict[tuple[Any, ...], tuple[tuple[tuple[str, Any], ...], ...]] = {}
        """The batch histograms' attribute items per (key, error type): `_batch_points`."""
        self.tracer_provider: TracerProvider | None = None
        exporters: list[tuple[SpanExporter, bool]] = []
        if span_exporter is not None:
            exporters.append((span_exporter, True))
        if config.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            base = config.otlp_endpoint.rstrip("/")
            exporters.append((OTLPSpanExporter(endpoint=f"{base}/v1/traces"), False))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{base}/v1/metrics")))
        if exporters:
            self.tracer_provider = TracerProvider(resource=resource, id_generator=self._ids)
            for exporter, simple in exporters:
                proc = SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter)
                self.tracer_provider.add_span_processor(proc)
            self.tracer = self.tracer_provider.get_tracer("shadowtune.gateway", __version__)
        # the call histograms: per point in the SDK for its other readers, else per batch (`gateway.histograms`)
        self._sdk_histograms = bool(readers) and (len(readers) > 1 or not config.prometheus)
        self._batch: tuple[BatchHistogram, BatchHistogram, BatchHistogram] | None = None
        if config.prometheus and not self._sdk_histograms:
            self._batch = (
                BatchHistogram("gen_ai.client.operation.duration", "s", _DURATION_DOC, _LATENCY_BUCKETS),
                BatchHistogram(
                    "gen_ai.client.operation.time_to_first_chunk", "s", _TTFT_DOC, _LATENCY_BUCKETS
                ),
                BatchHistogram("gen_ai.client.token.usage", "{token}", _TOKENS_DOC, _TOKEN_BUCKETS),
            )
            scope = {
                "otel_scope_name": _SCOPE,
                "otel_scope_schema_url": "",
                "otel_scope_version": __version__,
            }
            self.registry.register(HistogramCollector(self._batch, scope))
        self.meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        self._instruments()

    def _instruments(self) -> None:
        m = self.meter_provider.get_meter(_SCOPE, __version__)
        self.calls = m.create_counter(
            "shadowtune.calls", unit="{call}", description="Upstream calls by route and variant"
        )
        self.errors = m.create_counter(
            "shadowtune.errors", unit="{call}", description="Calls that ended in an error"
        )
        if self._sdk_histograms:
            self.duration = m.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description=_DURATION_DOC,
                explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
            )
            self.ttft = m.create_histogram(
                "gen_ai.client.operation.time_to_first_chunk",
                unit="s",
                description=_TTFT_DOC,
                explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
            )
            self.tokens = m.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description=_TOKENS_DOC,
                explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
            )
        self.feedback = m.create_counter(
            "shadowtune.feedback",
            unit="{event}",
            description="Outcome events (thumbs, ratings, regenerations, flags, ...) by route and variant",
        )
        self.rating = m.create_histogram(
            "shadowtune.feedback.rating",
            unit="1",
            description="Ratings given to calls, by route and variant",
            explicit_bucket_boundaries_advisory=_RATING_BUCKETS,
        )
        self._call_map: RecentMap[str, tuple[str, str]] = RecentMap(_CALL_MAP_SIZE)
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        """The ``(route, variant)`` values of the call map, one object each (not one per call)."""
        self.resolve_calls: Resolver | None = None
        """Looks up calls the map no longer (or never) held; set by the agent."""
        self.cost = m.create_counter("shadowtune.cost", unit="USD", description="Estimated cost of calls")
        m.create_observable_gauge("shadowtune.shadow.queue_depth", [self._shadow_depth], unit="{call}")
        m.create_observable_gauge("shadowtune.shadow.in_flight", [self._shadow_in_flight], unit="{call}")
        m.create_observable_counter("shadowtune.shadow.skipped", [self._shadow_skipped], unit="{call}")
        m.create_observable_gauge("shadowtune.log.backlog", [self._log_backlog], unit="By")
        m.create_observable_counter("shadowtune.log.dropped", [self._log_dropped], unit="{record}")
        m.create_observable_counter("shadowtune.log.quarantined", [self._log_quarantined], unit="{record}")
        m.create_observable_gauge(
            "shadowtune.log.healthy", [self._log_healthy], description="1 while the call log flushes normally"
        )
        m.create_observable_gauge(
            "shadowtune.state.healthy", [self._state_healthy], description="1 while the state backend answers"
        )
        self.controller = m.create_counter(
            "shadowtune.controller.decisions",
            unit="{decision}",
            description="Canary controller decisions by action",
        )
        self.triggers = m.create_counter(
            "shadowtune.triggers.runs", unit="{run}", description="Scheduled retraining runs by status"
        )
        self._drift: dict[str, dict[str, Any]] = {}
        m.create_observable_gauge(
            "shadowtune.drift.statistic",
            [self._drift_obs("statistic")],
            description="Latest drift check statistic",
        )
        m.create_observable_gauge(
            "shadowtune.drift.threshold", [self._drift_obs("threshold")], description="Its alarm threshold"
        )
        m.create_observable_gauge(
            "shadowtune.drift.detected", [self._drift_obs("drifted")], description="1 when the check fired"
        )

    # -- observable callbacks -----------------------------------------------------------
    def _shadow_depth(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(self.ctx.shadow.depth)]

    def _shadow_in_flight(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(self.ctx.shadow.in_flight)]

    def _shadow_skipped(self, _: CallbackOptions) -> list[Observation]:
        return [
            Observation(n, {"shadowtune.route": route, "shadowtune.reason": reason})
            for (route, reason), n in list(self.ctx.shadow.skipped.items())
        ]

    def _log_backlog(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(self.ctx.writer.backlog_bytes)]

    def _log_dropped(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"shadowtune.reason": r}) for r, n in self.ctx.writer.stats.dropped.items()]

    def _log_quarantined(self, _: CallbackOptions) -> list[Observation]:
        agent = getattr(self.ctx, "agent", None)  # the host's count (conversion quarantines too)
        dropped = (
            agent.dropped()
            if agent is not None and hasattr(agent, "dropped")
            else self.ctx.writer.stats.dropped
        )
        return [Observation(dropped.get("quarantined", 0))]

    def _log_healthy(self, _: CallbackOptions) -> list[Observation]:
        agent = getattr(self.ctx, "agent", None)  # the host's log (conversion, backlog), else the writer's
        healthy = (
            agent.healthy if agent is not None and hasattr(agent, "healthy") else self.ctx.writer.healthy
        )
        return [Observation(int(bool(healthy)))]

    def _state_healthy(self, _: CallbackOptions) -> list[Observation]:
        health = self.ctx.routes.backend.health
        return [Observation(int(health.ok), {"shadowtune.state.backend": health.kind})]

    # -- from log records (the agent's WAL tail) ---------------------------------------
    def on_records(self, table: str, records: list[dict[str, Any]]) -> None:
        """Metrics and spans for a batch of records just appended to the WAL (the agent's tail thread).

        Counters (calls, errors, cost) are summed per attribute set and added once per batch.
        The histograms (duration, time to first chunk, token usage) are aggregated here per
        batch when Prometheus is the only reader (`gateway.histograms`); for other readers
        they take one SDK point per call, since the SDK has no batch API.
        """
        if table == "events":
            self._on_events(records)
            return
        if table != "calls":
            return
        acc = _CallCounts()
        tracing = self.tracer_provider is not None
        sdk, batch = self._sdk_histograms, self._batch is not None
        for rec in records:
            try:
                key, error_type = self._count_call(rec, acc)
                if sdk:
                    self._call_histograms(rec, key, error_type)
                elif batch:
                    self._batch_points(rec, key, error_type, acc.points)
                if tracing:
                    self._span(rec, self._attributes(rec))
            except Exception as exc:  # telemetry must never break the log agent
                log.warning("telemetry for %s failed: %r", rec.get("call_id"), exc)
        self._add_counts(acc)

    def _count_call(self, rec: dict[str, Any], acc: _CallCounts) -> tuple[tuple[Any, ...], str | None]:
        """One call into the batch's counts (and the call map); returns its attribute key and error type."""
        route, variant = rec.get("route") or "", rec.get("variant") or "baseline"
        key = (
            _OPERATION.get(rec.get("endpoint") or "", "chat"),
            route,
            route,
            variant,
            rec.get("mode") or "off",
            bool(rec.get("served")),
            rec.get("provider") or "openai",
        )
        if len(self._pairs) > 4096:  # routes and variants are few: a flood of names is not kept
            self._pairs.clear()
        pair = self._pairs.setdefault((route, variant), (route, variant))
        self._call_map[rec["call_id"]] = pair
        if rec.get("response_id"):
            self._call_map[rec["response_id"]] = pair
        status = rec.get("status") or 0
        ckey = (*key, status)
        acc.calls[ckey] = acc.calls.get(ckey, 0) + 1
        error_type = None
        if status >= 400 or rec.get("error_type"):
            error_type = rec.get("error_type") or str(status)
            ekey = (*key, error_type)
            acc.errors[ekey] = acc.errors.get(ekey, 0) + 1
        if rec.get("cost_usd"):
            acc.cost[key] = acc.cost.get(key, 0.0) + rec["cost_usd"]
        return key, error_type

    def _add_counts(self, acc: _CallCounts) -> None:
        """A batch's counts into the counters, its points into the batch histograms."""
        if self._batch is not None:
            for histogram, points in zip(self._batch, acc.points, strict=True):
                if points:
                    histogram.observe_many(points)
        for ckey, n in acc.calls.items():
            self.calls.add(n, self._metric_attrs(ckey[:-1], "http.response.status_code", ckey[-1]))
        for ekey, n in acc.errors.items():
            self.errors.add(n, self._metric_attrs(ekey[:-1], "error.type", ekey[-1]))
        for key, usd in acc.cost.items():
            self.cost.add(usd, self._metric_attrs(key))

    def _call_histograms(self, rec: dict[str, Any], key: tuple[Any, ...], error_type: str | None) -> None:
        """One call's points: token usage, duration (with its error type), time to first chunk."""
        for kind, col in (("input", "input_tokens"), ("output", "output_tokens")):
            if rec.get(col) is not None:
                self.tokens.record(rec[col], self._metric_attrs(key, "gen_ai.token.type", kind))
        if rec.get("latency_ms") is not None:
            attrs = (
                self._metric_attrs(key, "error.type", error_type) if error_type else self._metric_attrs(key)
            )
            self.duration.record(rec["latency_ms"] / 1000, attrs)
        if rec.get("ttft_ms") is not None:
            self.ttft.record(rec["ttft_ms"] / 1000, self._metric_attrs(key))

    def _batch_points(
        self, rec: dict[str, Any], key: tuple[Any, ...], error_type: str | None, points: tuple[list[Any], ...]
    ) -> None:
        """`_call_histograms` for the batch histograms: the same points, into ``points``
        (duration, time to first chunk, tokens), each ``(attribute items, value)``."""
        sets = self._point_sets.get((key, error_type))
        if sets is None:  # input, output, duration, ttft attribute items (most calls share a few keys)
            items = self._attr_items
            sets = (
                items(key, "gen_ai.token.type", "input"),
                items(key, "gen_ai.token.type", "output"),
                items(key, "error.type", error_type) if error_type else items(key),
                items(key),
            )
            if len(self._point_sets) < 10_000:
                self._point_sets[(key, error_type)] = sets
        if (n := rec.get("input_tokens")) is not None:
            points[2].append((sets[0], n))
        if (n := rec.get("output_tokens")) is not None:
            points[2].append((sets[1], n))
        if (ms := rec.get("latency_ms")) is not None:
            points[0].append((sets[2], ms / 1000))
        if (ms := rec.get("ttft_ms")) is not None:
            points[1].append((sets[3], ms / 1000))

    def _attr_items(
        self, key: tuple[Any, ...], extra: str | None = None, value: Any = None
    ) -> tuple[tuple[str, Any], ...]:
        """`_metric_attrs` as a hashable tuple of items (the batch histograms' series key)."""
        return tuple(self._metric_attrs(key, extra, value).items())

    def _on_events(self, records: list[dict[str, Any]]) -> None:
        """Outcome events by the route and variant of their call (``unknown`` when not found)."""
        found: dict[str, tuple[str, str]] = {}
        missing: list[str] = []
        for rec in records:
            target = rec.get("call_id")
            if not isinstance(target, str):
                continue
            hit = self._call_map.get(target)
            if hit is None:
                missing.append(target)
            else:
                found[target] = hit
        if missing and self.resolve_calls is not None:
            try:
                resolved = self.resolve_calls(missing)
            except Exception as exc:  # the log may be unreadable (store down): counted as unknown
                log.debug("telemetry: cannot resolve %d call(s) of feedback: %r", len(missing), exc)
                resolved = {}
            found.update(resolved)
            for k, v in resolved.items():
                self._call_map[k] = v
        counts: dict[tuple[str, str, str, str], int] = {}
        for rec in records:
            try:
                kind = str(rec.get("kind") or "unknown")[:64]
                route, variant = found.get(rec.get("call_id") or "", ("unknown", "unknown"))
                value = str(rec.get("value") or "")[:32] if kind in _VALUE_KINDS else ""
                ckey = (route, variant, kind, value)
                counts[ckey] = counts.get(ckey, 0) + 1
                if kind == "rating" and isinstance(rec.get("value_num"), int | float):
                    self.rating.record(
                        float(rec["value_num"]), {"shadowtune.route": route, "shadowtune.variant": variant}
                    )
            except Exception as exc:
                log.warning("telemetry for event %s failed: %r", rec.get("event_id"), exc)
        for (route, variant, kind, value), n in counts.items():
            attrs = {
                "shadowtune.route": route,
                "shadowtune.variant": variant,
                "shadowtune.feedback.kind": kind,
            }
            if value:
                attrs["shadowtune.feedback.value"] = value
            self.feedback.add(n, attrs)

    def _metric_attrs(
        self, key: tuple[Any, ...], extra: str | None = None, value: Any = None
    ) -> dict[str, Any]:
        """The attribute dict for a key, plus one extra attribute (cached: the SDK hashes it on every point)."""
        cache_key = (key, extra, value)
        attrs = self._attr_cache.get(cache_key)
        if attrs is None:
            attrs = dict(zip(_METRIC_KEYS, key, strict=False))
            if extra is not None:
                attrs[extra] = value
            if len(self._attr_cache) < 10_000:
                self._attr_cache[cache_key] = attrs
        return attrs

    def _attributes(self, rec: dict[str, Any]) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": _OPERATION.get(rec.get("endpoint") or "", "chat"),
            "gen_ai.request.model": rec.get("route") or "",
            "shadowtune.route": rec.get("route") or "",
            "shadowtune.variant": rec.get("variant") or "baseline",
            "shadowtune.mode": rec.get("mode") or "off",
            "shadowtune.served": bool(rec.get("served")),
            "shadowtune.call_id": rec["call_id"],
        }
        if rec.get("provider"):
            attrs["gen_ai.provider.name"] = rec["provider"]
        if rec.get("upstream_model"):
            attrs["shadowtune.upstream_model"] = rec["upstream_model"]
        if rec.get("_response_model"):
            attrs["gen_ai.response.model"] = rec["_response_model"]
        if rec.get("response_id"):
            attrs["gen_ai.response.id"] = rec["response_id"]
        if rec.get("finish_reason"):
            attrs["gen_ai.response.finish_reasons"] = [rec["finish_reason"]]
        if rec.get("input_tokens") is not None:
            attrs["gen_ai.usage.input_tokens"] = rec["input_tokens"]
        if rec.get("output_tokens") is not None:
            attrs["gen_ai.usage.output_tokens"] = rec["output_tokens"]
        if rec.get("parent_call_id"):
            attrs["shadowtune.parent_call_id"] = rec["parent_call_id"]
        if self.config.capture_content:
            if rec.get("request"):
                attrs["gen_ai.input.messages"] = rec["request"]
            if rec.get("output_text"):
                attrs["gen_ai.output.messages"] = rec["output_text"]
        return attrs

    def _span(self, rec: dict[str, Any], attrs: dict[str, Any]) -> None:
        start_ns = (
            int(rec["ts"].timestamp() * 1e9) if hasattr(rec["ts"], "timestamp") else int(rec["ts"]) * 1000
        )
        end_ns = start_ns + int((rec.get("latency_ms") or 0) * 1e6)
        caller = parse_traceparent(rec.get("traceparent"))
        parent_ctx = trace.set_span_in_context(NonRecordingSpan(caller)) if caller else None
        links: list[Link] = []
        if rec.get("parent_call_id"):
            parent_id = rec["parent_call_id"]
            trace_id = caller.trace_id if caller else trace_id_of(parent_id)
            parent_sc = SpanContext(
                trace_id, span_id_of(parent_id), is_remote=True, trace_flags=TraceFlags(1)
            )
            links.append(Link(parent_sc, {"shadowtune.link": f"{rec.get('attempt') or 'shadow'}_of"}))
            trace_id_own = trace_id_of(rec["call_id"])
        else:
            trace_id_own = trace_id_of(rec["call_id"])
        self._ids.set(span_id_of(rec["call_id"]), trace_id_own)
        try:
            span = self.tracer.start_span(
                f"{attrs['gen_ai.operation.name']} {attrs['gen_ai.request.model']}",
                context=parent_ctx,
                kind=SpanKind.CLIENT,
                attributes=attrs,
                links=links,
                start_time=start_ns,
            )
        finally:
            self._ids.clear()
        status = rec.get("status") or 0
        if status >= 400 or rec.get("error_type"):
            span.set_attribute("error.type", rec.get("error_type") or str(status))
            span.set_status(Status(StatusCode.ERROR, rec.get("error_message") or None))
        if rec.get("ttft_ms") is not None:
            span.add_event("gen_ai.first_token", timestamp=start_ns + int(rec["ttft_ms"] * 1e6))
        span.end(end_time=end_ns)

    def _drift_obs(self, field: str) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(_: CallbackOptions) -> list[Observation]:
            out = []
            for route, report in list(self._drift.items()):
                for check in report.get("checks", ()):
                    value = check.get(field)
                    if value is not None:
                        attrs = {"shadowtune.route": route, "shadowtune.drift.check": str(check.get("name"))}
                        out.append(Observation(float(value), attrs))
            return out

        return observe

    def record_decision(self, route: str, decision: dict[str, Any]) -> None:
        """A canary controller decision: a counter by action, and a span with the numbers behind it."""
        action = str(decision.get("action") or "unknown")
        self.controller.add(1, {"shadowtune.route": route, "shadowtune.controller.action": action})
        if self.tracer_provider is None:
            return
        attrs: dict[str, Any] = {"shadowtune.route": route, "shadowtune.controller.action": action}
        for key in ("share_from", "share_to", "mode_to", "reason"):
            if decision.get(key) is not None:
                attrs[f"shadowtune.controller.{key}"] = decision[key]
        self.tracer.start_span(f"canary decision {route}", attributes=attrs).end()

    def record_trigger(self, route: str, record: dict[str, Any]) -> None:
        """A scheduled retraining run (or auto-canary look): a counter by status, a span per step."""
        status = str(record.get("status") or "unknown")
        attrs: dict[str, Any] = {"shadowtune.route": route, "shadowtune.trigger.status": status}
        self.triggers.add(1, attrs)
        if self.tracer_provider is None or not record.get("run_id"):
            return
        span = self.tracer.start_span(
            f"retraining {route}", attributes={**attrs, "shadowtune.trigger.run_id": str(record["run_id"])}
        )
        for step in record.get("steps") or ():
            span.add_event(
                "shadowtune.trigger.step",
                {"shadowtune.trigger.step": str(step.get("step")), "shadowtune.trigger.step_status": str(step.get("status")),
                 "shadowtune.trigger.duration_s": float(step.get("duration_s") or 0.0)},
            )  # fmt: skip
        span.end()

    def record_drift(self, route: str, report: dict[str, Any]) -> None:
        """Keep a drift report's scores as gauges, and record the check as a span with one event per check."""
        self._drift[route] = report
        if self.tracer_provider is None:
            return
        span = self.tracer.start_span(
            f"drift check {route}",
            attributes={"shadowtune.route": route, "shadowtune.drift.detected": bool(report.get("drifted"))},
        )
        for check in report.get("checks", ()):
            span.add_event(
                "shadowtune.drift.check",
                {
                    "shadowtune.drift.check": str(check.get("name")),
                    "shadowtune.drift.statistic": float(check.get("statistic") or 0.0),
                    "shadowtune.drift.threshold": float(check.get("threshold") or 0.0),
                    "shadowtune.drift.detected": bool(check.get("drifted")),
                },
            )
        span.end()

    def prometheus(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        try:
            self.meter_provider.shutdown()
            if self.tracer_provider is not None:
                self.tracer_provider.shutdown()
        except Exception as exc:
            log.warning("telemetry shutdown: %r", exc)
