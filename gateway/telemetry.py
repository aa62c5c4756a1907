"""OpenTelemetry traces and metrics (GenAI semantic conventions), and Prometheus ``/metrics``.

Nothing here runs on the request path. Spans and metric points are made from the call
log's records, in batches, in the log writer's thread (`LogWriter.listeners`), with the
calls' real start and end times, about a second after each call. Span and trace ids are
derived from call ids, so a shadow call's span links to its served call's span, and a
caller's ``traceparent`` makes the served span a child of the caller's.

Prompt and completion text stay out of telemetry unless ``telemetry.capture_content``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
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

from gateway import __version__
from gateway.config import TelemetryConfig

log = logging.getLogger("shadowtune.telemetry")

_OPERATION = {"chat.completions": "chat", "embeddings": "embeddings"}
_LATENCY_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


def span_id_of(call_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(call_id.encode(), digest_size=8).digest(), "big") or 1


def trace_id_of(call_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(call_id.encode(), digest_size=16).digest(), "big") or 1


def parse_traceparent(value: str | None) -> SpanContext | None:
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        return SpanContext(int(parts[1], 16), int(parts[2], 16), is_remote=True, trace_flags=TraceFlags(1))
    except ValueError:
        return None


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
        self.meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        self._instruments()

    def _instruments(self) -> None:
        m = self.meter_provider.get_meter("shadowtune.gateway", __version__)
        self.calls = m.create_counter("shadowtune.calls", unit="{call}", description="Upstream calls by route and variant")
        self.errors = m.create_counter("shadowtune.errors", unit="{call}", description="Calls that ended in an error")
        self.duration = m.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self.ttft = m.create_histogram(
            "gen_ai.client.time_to_first_token",
            unit="s",
            description="Time to the first streamed chunk",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self.tokens = m.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per call",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.cost = m.create_counter("shadowtune.cost", unit="USD", description="Estimated cost of calls")
        self.overhead = m.create_histogram(
            "shadowtune.gateway.overhead",
            unit="s",
            description="Time spent in the gateway (latency minus upstream time)",
            explicit_bucket_boundaries_advisory=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
        )
        m.create_observable_gauge("shadowtune.shadow.queue_depth", [self._shadow_depth], unit="{call}")
        m.create_observable_gauge("shadowtune.shadow.in_flight", [self._shadow_in_flight], unit="{call}")
        m.create_observable_counter("shadowtune.shadow.skipped", [self._shadow_skipped], unit="{call}")
        m.create_observable_gauge("shadowtune.log.backlog", [self._log_backlog], unit="By")
        m.create_observable_counter("shadowtune.log.dropped", [self._log_dropped], unit="{record}")
        self.drift = m.create_histogram("shadowtune.drift.score", unit="1", description="Drift check scores")

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

    # -- from log records (writer thread) -----------------------------------------------
    def on_records(self, table: str, records: list[dict[str, Any]]) -> None:
        if table != "calls":
            return
        for rec in records:
            try:
                self._record(rec)
            except Exception as exc:  # telemetry must never break the log writer
                log.warning("telemetry for %s failed: %r", rec.get("call_id"), exc)

    def _record(self, rec: dict[str, Any]) -> None:
        attrs = self._attributes(rec)
        metric_attrs = {
            k: attrs[k]
            for k in (
                "gen_ai.operation.name",
                "gen_ai.request.model",
                "shadowtune.route",
                "shadowtune.variant",
                "shadowtune.mode",
                "shadowtune.served",
            )
            if k in attrs
        }
        status = rec.get("status") or 0
        metric_attrs["http.response.status_code"] = status
        self.calls.add(1, metric_attrs)
        if status >= 400 or rec.get("error_type"):
            self.errors.add(1, {**metric_attrs, "error.type": rec.get("error_type") or str(status)})
        if rec.get("latency_ms") is not None:
            self.duration.record(rec["latency_ms"] / 1000, metric_attrs)
        if rec.get("ttft_ms") is not None:
            self.ttft.record(rec["ttft_ms"] / 1000, metric_attrs)
        if rec.get("overhead_ms") is not None:
            self.overhead.record(rec["overhead_ms"] / 1000, metric_attrs)
        for kind, key in (("input", "input_tokens"), ("output", "output_tokens")):
            if rec.get(key) is not None:
                self.tokens.record(rec[key], {**metric_attrs, "gen_ai.token.type": kind})
        if rec.get("cost_usd"):
            self.cost.add(rec["cost_usd"], metric_attrs)
        if self.tracer_provider is not None:
            self._span(rec, attrs)

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
        try:
            import orjson

            resp = orjson.loads(rec["response"]) if rec.get("response") else None
        except Exception:
            resp = None
        if isinstance(resp, dict) and resp.get("model"):
            attrs["gen_ai.response.model"] = resp["model"]
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
        start_ns = int(rec["ts"].timestamp() * 1e9) if hasattr(rec["ts"], "timestamp") else int(rec["ts"]) * 1000
        end_ns = start_ns + int((rec.get("latency_ms") or 0) * 1e6)
        caller = parse_traceparent(rec.get("traceparent"))
        parent_ctx = trace.set_span_in_context(NonRecordingSpan(caller)) if caller else None
        links: list[Link] = []
        if rec.get("parent_call_id"):
            parent_id = rec["parent_call_id"]
            trace_id = caller.trace_id if caller else trace_id_of(parent_id)
            parent_sc = SpanContext(trace_id, span_id_of(parent_id), is_remote=True, trace_flags=TraceFlags(1))
            links.append(Link(parent_sc, {"shadowtune.link": "shadow_of" if not rec.get("served") else "parent"}))
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

    def drift_scores(self, route: str, scores: dict[str, float]) -> None:
        """Export drift check scores (called by whoever runs the checks)."""
        for name, value in scores.items():
            self.drift.record(value, {"shadowtune.route": route, "shadowtune.drift.check": name})

    def prometheus(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        try:
            self.meter_provider.shutdown()
            if self.tracer_provider is not None:
                self.tracer_provider.shutdown()
        except Exception as exc:
            log.warning("telemetry shutdown: %r", exc)
