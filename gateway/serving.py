"""Serving one call: the upstream attempt, the fallback to the baseline, the relay, the log line.

`gateway.hotpath` (the router) authenticates, parses and plans a request, then hands a
`CallContext` — everything known about the call — to `Serving.serve`:

1. **attempt**: open the planned variant's upstream (`Serving.open`); a candidate's whole
   answer is read first unless streamed, since a broken one is a failure before the first
   byte too;
2. **fallback**: a candidate that failed before the first byte (no answer, 5xx, 429, a cut or
   invalid body) is logged as an ``attempt: fallback`` row and the baseline is called;
3. **relay**: a JSON answer goes out in one piece (an upstream error in OpenAI's shape, with a
   hint when the upstream needed a key it was not given); a stream goes out chunk by chunk
   as it arrives and is logged as soon as it is complete, before the client can have its
   last event;
4. **log**: one `CallRecord` line appended to the WAL per upstream call (`Serving.finish`).

The log line holds the raw bodies; a streamed answer is its raw SSE text. Assembling it and
redacting (`gateway.protocol.redact`) happen in the log agent, never here. Shadow calls use
the same attempt and log steps from `gateway.shadow.ShadowSubmitter`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway import responses
from gateway.config import UpstreamConfig
from gateway.errors import GatewayError, UpstreamError, error_body
from gateway.hints import missing_key_hint
from gateway.protocol import sse
from gateway.protocol import transform as request_transform
from gateway.protocol.errors import as_openai_error, upstream_error
from gateway.protocol.record import CallRecord
from gateway.protocol.requests import RequestView, dump
from gateway.protocol.transform import RequestTransform
from gateway.routing.modes import Plan
from gateway.routing.state import RouteState
from gateway.store.ids import new_id
from gateway.store.wal import WalAppender
from gateway.tracectx import child_traceparent
from gateway.upstream import faults
from gateway.upstream import litellm as litellm_upstream
from gateway.upstream.openai_compat import OpenAICompatClient
from gateway.upstream.reply import UpstreamReply

Send = Callable[[dict[str, Any]], Awaitable[None]]

PASSTHROUGH = "_passthrough"
UPSTREAM_PATH = {
    "chat.completions": "/chat/completions",
    "embeddings": "/embeddings",
    **responses.UPSTREAM_PATH,
}
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]"


@dataclass(slots=True)
class CallContext:
    """One call on its way through the gateway: what `Serving.serve` and the shadow submitter need."""

    send: Send
    rec: CallRecord
    req: RequestView
    body: bytes
    """The request body as received: forwarded byte for byte."""
    endpoint: str
    stream: bool
    state: RouteState
    plan: Plan
    upstreams: dict[str, UpstreamConfig]
    t0: float
    """``perf_counter`` when the request arrived."""
    caller_auth: bytes | None = None
    """Open mode only: the caller's own ``Authorization``, for the passthrough upstream (never logged)."""


class Attempt:
    """One upstream call's timings and outcome, for its log row."""

    __slots__ = (
        "call_id",
        "error",
        "first_byte",
        "reply",
        "sent",
        "started",
        "status",
        "t_headers",
        "transform",
        "upstream",
        "variant",
    )

    def __init__(self, call_id: str, variant: str, upstream: str) -> None:
        self.call_id = call_id
        self.variant = variant
        self.upstream = upstream
        self.started = time.perf_counter()
        self.t_headers = 0.0
        self.first_byte: float | None = None
        self.reply: UpstreamReply | None = None
        self.status = 0
        self.error: GatewayError | None = None
        self.sent: bytes | None = None
        """The body as sent, when the candidate's request transform changed it."""
        self.transform: str | None = None
        """That transform's fingerprint."""


class Serving:
    """Calls upstreams and logs each call (see the module docstring); one per worker."""

    def __init__(
        self,
        writer: WalAppender,
        health: faults.UpstreamHealth,
        passthrough: UpstreamConfig | None,
        *,
        own_spans: bool,
        redact: dict[str, Any] | None,
        origins: responses.ResponseOrigins | None = None,
    ) -> None:
        self.writer = writer
        self.health = health
        self.passthrough = passthrough
        self.own_spans = own_spans  # forwarded traceparents name the gateway's span as the parent
        self.redact = redact  # the log's redaction spec, carried by every record to the agent
        self.client = OpenAICompatClient()
        self.origins = origins  # which upstream made each Responses id (shared by every worker)

    # -- the served call ----------------------------------------------------------------
    async def serve(self, ctx: CallContext) -> None:
        state, rec = ctx.state, ctx.rec
        variant = ctx.plan.serve
        name = state.candidate if variant == "candidate" else state.baseline
        attempt = Attempt(rec.call_id, variant, name or "")
        await self.open(attempt, ctx, name)
        if variant == "candidate" and not _should_fall_back(attempt) and not ctx.stream:
            await _prefetch(attempt)  # a broken answer is a failure before the first byte too
        if variant == "candidate" and _should_fall_back(attempt):
            # the candidate failed before the first byte: log that attempt, serve the baseline
            failed = rec.attempt_of(new_id("call"), "fallback")
            log_sent(failed, attempt, state.store_bodies)
            self.upstream_fields(failed, attempt.upstream, ctx)
            self.log_attempt(failed, attempt, ctx.t0, body=None)
            if attempt.reply is not None:
                attempt.reply.close()
            attempt = Attempt(rec.call_id, "baseline", state.baseline)
            await self.open(attempt, ctx, state.baseline)
        rec.variant = attempt.variant
        log_sent(rec, attempt, state.store_bodies)
        self.upstream_fields(rec, attempt.upstream, ctx)
        reply = attempt.reply
        if reply is None:
            assert attempt.error is not None
            await self.fail(ctx.send, rec, attempt.error, ctx.t0, attempt)
        elif ctx.stream and reply.is_stream and reply.status < 400:
            await self._relay_stream(ctx, attempt, reply)
        else:
            await self._relay_json(ctx, attempt, reply)

    async def _relay_json(self, ctx: CallContext, attempt: Attempt, reply: UpstreamReply) -> None:
        rec, t0, send = ctx.rec, ctx.t0, ctx.send
        bodies = ctx.state.store_bodies
        try:
            data = await reply.read()
        except GatewayError as exc:
            await self.fail(send, rec, exc, t0, attempt)
            return
        upstream_s = time.perf_counter() - attempt.started
        status = reply.status
        if status < 400 and faults.invalid_json(data):  # a 200 the caller's client could not decode
            if bodies:
                rec.response = data.decode("utf-8", "replace")
            await self.fail(send, rec, faults.invalid_answer(data, reply.content_type), t0, attempt)
            return
        if status >= 400:
            rec.error_type, rec.error_message = upstream_error(data)
            data = as_openai_error(data, status)
            if status == 401:  # sent without a key? say so (gateway.hints)
                hint = self._key_hint(attempt.upstream, ctx)
                if hint is not None:
                    rec.error_message = hint
                    data = error_body(hint, "authentication_error", code="upstream_key_missing")
        rec.status = status
        if bodies:
            rec.response = data.decode("utf-8", "replace")
        self.finish(rec, t0, upstream_s, None)
        if ctx.endpoint == "responses" and self.origins is not None:
            await self.origins.note(rec, data)  # noted before the caller has the id
        headers = [
            _JSON,
            (b"x-request-id", rec.call_id.encode()),
            (b"x-shadowtune-overhead-ms", f"{rec.overhead_ms or 0.0:.3f}".encode()),
            *reply.headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def _key_hint(self, name: str, ctx: CallContext) -> str | None:
        pt = name == PASSTHROUGH
        up = self.passthrough if pt else ctx.upstreams.get(name)
        return missing_key_hint(up, passthrough=pt, forwarded=pt and ctx.caller_auth is not None)

    async def _relay_stream(self, ctx: CallContext, attempt: Attempt, reply: UpstreamReply) -> None:
        rec, t0, send = ctx.rec, ctx.t0, ctx.send
        bodies = ctx.state.store_bodies
        overhead_ms = ((time.perf_counter() - t0) - (attempt.t_headers - attempt.started)) * 1000
        headers = [
            *_SSE_HEADERS,
            (b"x-request-id", rec.call_id.encode()),
            (b"x-shadowtune-overhead-ms", f"{overhead_ms:.3f}".encode()),
            *reply.headers,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        parts: list[bytes] = []
        first: float | None = None
        rec.status = 200
        chunks = reply.chunks
        assert chunks is not None
        last: bytes | None = None
        logged = False
        try:
            async for chunk in chunks:
                if first is None:
                    first = time.perf_counter()
                if logged:  # only the end of the upstream's body is left
                    continue
                parts.append(chunk)
                if reply.complete or _DONE in chunk:
                    # the answer is complete: log it before the client can have its last event
                    # (clients close the connection as soon as they read [DONE])
                    self._finish_stream(rec, attempt, parts, t0, first, bodies)
                    logged = True
                if reply.complete:  # this chunk goes out with the end of the response
                    last = chunk
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except GatewayError as exc:
            if not logged:  # a stream that fails midway: one SSE error event, then a clean close
                event = sse.event(faults.public_body(exc, rec.call_id))
                parts.append(event)
                rec.status = exc.status
                rec.error_type, rec.error_message = exc.type, faults.log_message(exc)
                await send({"type": "http.response.body", "body": event, "more_body": True})
        except asyncio.CancelledError:
            if not logged:
                if bodies:  # keep what the client saw before it went away
                    rec.response_sse = b"".join(parts).decode("utf-8", "replace")
                if first is not None:
                    rec.ttft_ms = (first - t0) * 1000
            raise
        if not logged:
            self._finish_stream(rec, attempt, parts, t0, first, bodies)
        if rec.endpoint == "responses" and self.origins is not None:
            await self.origins.note(rec, parts)  # noted before the stream ends
        await send({"type": "http.response.body", "body": last or b""})

    def _finish_stream(
        self,
        rec: CallRecord,
        attempt: Attempt,
        parts: list[bytes],
        t0: float,
        first: float | None,
        bodies: bool,
    ) -> None:
        data = b"".join(parts)
        if rec.error_type is None and (found := faults.stream_error(data)) is not None:
            rec.status = 502  # relayed as it came (the caller has its 200), logged as the failure it is
            rec.error_type, rec.error_message = found
        if bodies:
            rec.response_sse = data.decode("utf-8", "replace")
        self.finish(rec, t0, time.perf_counter() - attempt.started, first)

    # -- one upstream call --------------------------------------------------------------
    async def open(self, attempt: Attempt, ctx: CallContext, name: str | None) -> None:
        """Start the upstream call; leaves ``attempt.reply`` or ``attempt.error`` set.

        The candidate is sent its own request when the route has a ``candidate_transform``
        (`gateway.protocol.transform`); ``attempt.sent`` keeps it for the log.
        """
        req = ctx.req
        raw = req.raw
        tf = _transform(ctx, attempt.variant)
        try:
            if tf is not None:
                raw = tf.apply(raw)
                attempt.sent, attempt.transform = dump(raw), tf.fingerprint
            upstream = self._upstream(name, ctx.upstreams)
            model = upstream.model or (req.model if name == PASSTHROUGH else name)
            if upstream.fast_path:
                if attempt.sent is None:
                    body = ctx.body if model == req.model else req.with_model(model)  # type: ignore[arg-type]
                else:
                    body = attempt.sent if model == req.model else dump({**raw, "model": model})
                caller = ctx.caller_auth if name == PASSTHROUGH else None
                tp = ctx.rec.traceparent
                if tp is not None:
                    tp = child_traceparent(tp, attempt.call_id if self.own_spans else None)
                reply = await self.client.send(upstream, UPSTREAM_PATH[ctx.endpoint], body, caller, tp)
            else:
                reply = await litellm_upstream.send(upstream, ctx.endpoint, {**raw, "model": model})
            attempt.reply = reply
            attempt.status = reply.status
        except GatewayError as exc:
            attempt.error = exc
            attempt.status = exc.status
        attempt.t_headers = time.perf_counter()

    def _upstream(self, name: str | None, upstreams: dict[str, UpstreamConfig]) -> UpstreamConfig:
        if name == PASSTHROUGH and self.passthrough is not None:
            return self.passthrough
        try:
            return upstreams[name]  # type: ignore[index]
        except KeyError:
            raise UpstreamError(
                f"route points at unknown upstream {name!r}", code="upstream_not_configured"
            ) from None

    def upstream_fields(self, rec: CallRecord, name: str, ctx: CallContext) -> None:
        """The record's upstream, model, provider and prices, from the upstream that was called."""
        up = self.passthrough if name == PASSTHROUGH else ctx.upstreams.get(name)
        rec.upstream = "passthrough" if name == PASSTHROUGH else name
        if up is not None:
            rec.upstream_model = up.model or (ctx.req.model if name == PASSTHROUGH else name)
            rec.provider = up.provider
            rec.price_in = up.price_in
            rec.price_out = up.price_out

    # -- the log ------------------------------------------------------------------------
    def log_attempt(
        self,
        row: CallRecord,
        attempt: Attempt,
        t0: float,
        *,
        body: tuple[bytes, float | None] | None,
        store_body: bool = True,
    ) -> None:
        """Log a call the user did not see (a shadow call, a failed candidate before fallback)."""
        row.variant = attempt.variant
        reply = attempt.reply
        if reply is not None:
            row.status = reply.status
            if body is None and reply.status >= 400:  # a failed attempt whose body was not read (fallback)
                row.error_type = "upstream_error"
                row.error_message = f"upstream answered {reply.status}"
            if body is not None:  # kept even when the stream broke off midway: what came is logged
                data, first = body
                if reply.status >= 400:
                    row.error_type, row.error_message = upstream_error(data)
                elif (found := faults.body_error(data, reply.is_stream)) is not None:
                    row.status = 502
                    row.error_type, row.error_message = found
                if store_body:
                    text = data.decode("utf-8", "replace")
                    if reply.is_stream:
                        row.response_sse = text
                    else:
                        row.response = text
                if first is not None:
                    row.ttft_ms = (first - attempt.started) * 1000
        if attempt.error is not None:
            row.status = attempt.error.status
            row.error_type, row.error_message = attempt.error.type, faults.log_message(attempt.error)
        self.finish(row, t0, time.perf_counter() - attempt.started, None)

    def finish(self, rec: CallRecord, t0: float, upstream_s: float, first: float | None) -> None:
        """Timings, then the record's one WAL line (bodies raw: the agent assembles and redacts)."""
        latency = time.perf_counter() - t0
        rec.latency_ms = latency * 1000
        rec.upstream_ms = upstream_s * 1000
        rec.overhead_ms = max(0.0, latency - upstream_s) * 1000
        if first is not None:
            rec.ttft_ms = (first - t0) * 1000
        if self.redact is not None:
            rec.redact = self.redact
        if rec.error_message is not None:
            rec.error_message = faults.redact(rec.error_message)
            self.health.observe(rec)
        self.writer.append("calls", rec.to_wal())

    async def fail(
        self, send: Send, rec: CallRecord, exc: GatewayError, t0: float, attempt: Attempt | None = None
    ) -> None:
        """Log the call as failed with ``exc`` and answer it with ``exc``'s error body."""
        rec.status = exc.status
        rec.error_type = exc.type
        rec.error_message = faults.log_message(exc)
        if attempt is not None and attempt.reply is not None:
            attempt.reply.close()
        upstream_s = (time.perf_counter() - attempt.started) if attempt is not None else 0.0
        self.finish(rec, t0, upstream_s, None)
        await send_error(send, exc, rec.call_id, rec.overhead_ms)

    async def close(self) -> None:
        await self.client.close()


async def send_error(
    send: Send,
    exc: GatewayError,
    call_id: str | None = None,
    overhead_ms: float | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer with ``exc``'s status and OpenAI error body."""
    headers = [_JSON, *(extra_headers or ())]
    if exc.close_connection:  # the rest of the request is not read: do not keep the connection
        headers.append((b"connection", b"close"))
    if call_id:
        headers.append((b"x-request-id", call_id.encode()))
    if overhead_ms is not None:
        headers.append((b"x-shadowtune-overhead-ms", f"{overhead_ms:.3f}".encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": faults.public_body(exc, call_id)})


def _should_fall_back(attempt: Attempt) -> bool:
    return attempt.reply is None or attempt.status >= 500 or attempt.status == 429


async def _prefetch(attempt: Attempt) -> None:
    """Read a candidate's whole (non-stream) answer; a cut or invalid one marks the attempt failed."""
    reply = attempt.reply
    if reply is None or reply.status >= 400:
        return
    try:
        data = await reply.read()
    except GatewayError as exc:
        attempt.error, attempt.status = exc, exc.status
        return
    if faults.invalid_json(data):
        attempt.error = faults.invalid_answer(data, reply.content_type)
        attempt.status = attempt.error.status


async def drain(attempt: Attempt) -> tuple[bytes, float | None] | None:
    """The whole answer of an attempt nobody waits on (a shadow call) and the time of its first chunk."""
    reply = attempt.reply
    if reply is None:
        return None
    parts: list[bytes] = []
    first: float | None = None
    try:
        if reply.chunks is not None:
            async for chunk in reply.chunks:
                if first is None:
                    first = time.perf_counter()
                parts.append(chunk)
        elif reply.body is not None:
            parts.append(reply.body)
    except GatewayError as exc:
        attempt.error = exc
    return b"".join(parts), first


def _transform(ctx: CallContext, variant: str) -> RequestTransform | None:
    """The route's candidate request transform for this attempt, if any (never for embeddings)."""
    spec = ctx.state.candidate_transform
    if variant != "candidate" or spec is None or ctx.endpoint == "embeddings":
        return None
    return request_transform.compiled(spec)


def log_sent(row: CallRecord, attempt: Attempt, bodies: bool) -> None:
    """The row keeps what the candidate was actually sent, tagged with its transform's fingerprint."""
    if attempt.sent is None or attempt.transform is None:
        return
    if bodies:
        row.request = attempt.sent.decode()
    row.tags = [*(row.tags or ()), request_transform.TAG_PREFIX + attempt.transform]
