"""The request path of ``/v1/chat/completions`` and ``/v1/embeddings``, as a plain ASGI handler
(also ``/v1/responses`` and ``/v1/completions``: what differs for them is in `gateway.responses`).

This is the code every production call runs through, so it stays lean: no framework
layers, one JSON parse of the body, the body forwarded as bytes (re-serialised only when
the upstream model id differs from the name the client sent), a streamed answer relayed
chunk by chunk as it arrives, and one ``write()`` to the call log's WAL per call. Work
that can wait — assembling streamed answers, token counts, costs, telemetry — happens
in the host's log agent (`gateway.agent`), another process. A caller's ``traceparent``
is forwarded to the upstream.

Per request: authenticate, parse, resolve the route's live state, pick the serving
variant (`gateway.routing.modes`), call it (falling back to the baseline when a
candidate fails before the first byte), relay, log, then hand the shadow call, if
any, to the bounded `ShadowRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway import responses
from gateway.auth import Authenticator
from gateway.config import Settings, UpstreamConfig
from gateway.edge import check_content_length
from gateway.errors import (
    ClientDisconnected,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
    error_body,
)
from gateway.hints import missing_key_hint
from gateway.protocol.record import CallRecord
from gateway.routing.modes import Plan, plan_for
from gateway.routing.state import RouteState, RouteStateStore
from gateway.shadow import ShadowRunner
from gateway.store.ids import new_id
from gateway.store.surfaces import ASSEMBLE
from gateway.store.wal import WalAppender
from gateway.tracectx import child_traceparent
from gateway.upstream import faults
from gateway.upstream import litellm as litellm_upstream
from gateway.upstream.openai_compat import OpenAICompatClient
from gateway.upstream.reply import UpstreamReply

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PATHS = {
    "/v1/chat/completions": "chat.completions",
    "/chat/completions": "chat.completions",
    "/v1/embeddings": "embeddings",
    "/embeddings": "embeddings",
    **responses.PATHS,
}
UPSTREAM_PATH = {
    "chat.completions": "/chat/completions",
    "embeddings": "/embeddings",
    **responses.UPSTREAM_PATH,
}
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
PASSTHROUGH = "_passthrough"
# open mode, zero-config: the caller's own key goes to the passthrough upstream (never to the log)
_CALLER_AUTH: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("caller_auth", default=None)
_TRACEPARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)


class Redactor:
    """Pattern redaction applied to bodies before they reach the log."""

    EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
    CARD = r"\b\d(?:[ -]?\d){12,18}\b"

    def __init__(self, emails: bool, cards: bool, patterns: list[str]) -> None:
        self.rules = [(re.compile(p), "[REDACTED]") for p in patterns]
        if emails:
            self.rules.append((re.compile(self.EMAIL), "[EMAIL]"))
        if cards:
            self.rules.append((re.compile(self.CARD), "[CARD]"))

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        for rx, repl in self.rules:
            text = rx.sub(repl, text)
        return text


class Attempt:
    """One upstream call's timings and outcome, for its log row."""

    __slots__ = (
        "call_id",
        "error",
        "first_byte",
        "reply",
        "started",
        "status",
        "t_headers",
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


class HotPath:
    def __init__(
        self,
        settings: Settings,
        writer: WalAppender,
        routes: RouteStateStore,
        auth: Authenticator,
        shadow: ShadowRunner,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.routes = routes
        self.auth = auth
        self.shadow = shadow
        self.client = OpenAICompatClient()
        self.health = faults.UpstreamHealth()
        self.origins = responses.ResponseOrigins(routes.backend, settings.store.response_ids_days * 86400)
        self.max_body = settings.server.max_body_bytes
        r = settings.store.redact
        self.redact = Redactor(r.emails, r.cards, r.patterns) if (r.emails or r.cards or r.patterns) else None
        passthrough = settings.server.passthrough_url
        # forwarded traceparents name the gateway's own span as the parent when spans are exported
        self.own_spans = bool(settings.telemetry.otlp_endpoint)
        self.passthrough: UpstreamConfig | None = (
            UpstreamConfig(base_url=passthrough, api_key_env=settings.server.upstream_key_env)
            if passthrough
            else None
        )

    # -- ASGI entry ---------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        t0 = time.perf_counter()
        ts = time.time_ns() // 1000
        call_id = new_id("call")
        headers = dict(scope["headers"])
        rec = CallRecord.begin(call_id, ts, endpoint)
        try:
            rec.client_key = self.auth.check(headers.get(b"authorization"))
            _CALLER_AUTH.set(headers.get(b"authorization") if rec.client_key is None else None)
            body = await _read_body(receive, self.max_body, headers.get(b"content-length"))
            req = _parse(body, endpoint)
        except GatewayError as exc:
            await self._fail(send, rec, exc, t0)
            return
        rec.request = body.decode()
        model = req["model"]
        stream = bool(req.get("stream")) and endpoint in responses.STREAMING
        rec.stream = stream
        rec.annotate(req, headers)
        _TRACEPARENT.set(rec.traceparent)
        snapshot = self.routes.snapshot
        state = snapshot.routes.get(model)
        if state is None:
            if self.passthrough is None:
                missing = NotFound(
                    f"The model '{model}' does not exist", param="model", code="model_not_found"
                )
                await self._fail(send, rec, missing, t0)
                return
            state = RouteState(route=model, baseline=PASSTHROUGH)
        rec.route = model
        rec.route_version = snapshot.version
        rec.mode = state.mode
        if not state.store_bodies:
            rec.request = None
        plan = plan_for(state, _sticky(state, rec, req, headers), random.random())
        plan, why = await self.origins.constrain(endpoint, req, plan, state)
        if why is not None:  # server-side state only one variant knows (previous_response_id)
            rec.tags = [*(rec.tags or ()), why]
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, asyncio.current_task()))
        try:
            await self._serve(send, rec, req, body, endpoint, stream, state, plan, snapshot.upstreams, t0)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not watcher.done() or task is None:
                raise  # cancelled from outside (shutdown), not by a client disconnect
            task.uncancel()
            if rec.latency_ms is None:  # the client went away before the answer was complete
                rec.status = 499
                rec.error_type = "client_disconnected"
                rec.error_message = "the client closed the connection before the answer was complete"
                self._finish(rec, t0, time.perf_counter() - t0, None)
                return
            # the answer was complete (logged) and the client left after it: shadow as usual
        finally:
            watcher.cancel()
        if plan.shadow is not None and plan.shadow == rec.variant:
            self.shadow.skip(state.route, "fallback")  # the fallback already asked that variant
        elif plan.shadow is not None:
            self._submit_shadow(rec, req, body, endpoint, stream, state, plan.shadow, snapshot.upstreams)
        elif state.mode in ("shadow", "primary") and state.candidate is not None:
            self.shadow.skip(state.route, why or "sampled")  # left out by the route's shadow_rate

    # -- serving ------------------------------------------------------------------------
    async def _serve(
        self,
        send: Send,
        rec: CallRecord,
        req: dict[str, Any],
        body: bytes,
        endpoint: str,
        stream: bool,
        state: RouteState,
        plan: Plan,
        upstreams: dict[str, UpstreamConfig],
        t0: float,
    ) -> None:
        variant = plan.serve
        name = state.candidate if variant == "candidate" else state.baseline
        attempt = Attempt(rec.call_id, variant, name or "")
        await self._open(attempt, req, body, endpoint, name, upstreams)
        if variant == "candidate" and not _should_fall_back(attempt) and not stream:
            await _prefetch(attempt)  # a broken answer is a failure before the first byte too
        if variant == "candidate" and _should_fall_back(attempt):
            # the candidate failed before the first byte: log that attempt, serve the baseline
            failed = rec.attempt_of(new_id("call"), "fallback")
            self._upstream_fields(failed, attempt.upstream, upstreams, req)
            self._log_attempt(failed, attempt, t0, body=None)
            if attempt.reply is not None:
                attempt.reply.close()
            attempt = Attempt(rec.call_id, "baseline", state.baseline)
            await self._open(attempt, req, body, endpoint, state.baseline, upstreams)
        rec.variant = attempt.variant
        self._upstream_fields(rec, attempt.upstream, upstreams, req)
        reply = attempt.reply
        if reply is None:
            assert attempt.error is not None
            await self._fail(send, rec, attempt.error, t0, attempt)
            return
        if stream and reply.is_stream and reply.status < 400:
            await self._relay_stream(send, rec, attempt, reply, t0, state.store_bodies)
            return
        try:
            data = await reply.read()
        except GatewayError as exc:
            await self._fail(send, rec, exc, t0, attempt)
            return
        upstream_s = time.perf_counter() - attempt.started
        status = reply.status
        if status < 400 and faults.invalid_json(data):  # a 200 the caller's client could not decode
            if state.store_bodies:
                rec.response = data.decode("utf-8", "replace")
            await self._fail(send, rec, faults.invalid_answer(data, reply.content_type), t0, attempt)
            return
        if status >= 400:
            rec.error_type, rec.error_message = _upstream_error(data)
            data = _as_openai_error(data, status)
            if status == 401:  # sent without a key? say so (gateway.hints)
                pt = attempt.upstream == PASSTHROUGH
                up = self.passthrough if pt else upstreams.get(attempt.upstream)
                hint = missing_key_hint(up, passthrough=pt, forwarded=pt and _CALLER_AUTH.get() is not None)
                if hint is not None:
                    rec.error_message = hint
                    data = error_body(hint, "authentication_error", code="upstream_key_missing")
        rec.status = status
        if state.store_bodies:
            rec.response = data.decode("utf-8", "replace")
        self._finish(rec, t0, upstream_s, None)
        if endpoint == "responses":  # noted before the caller has the id (shared by every worker)
            await self.origins.note(rec, data)
        headers = [
            _JSON,
            (b"x-request-id", rec.call_id.encode()),
            (b"x-shadowtune-overhead-ms", f"{rec.overhead_ms or 0.0:.3f}".encode()),
            *reply.headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _relay_stream(
        self, send: Send, rec: CallRecord, attempt: Attempt, reply: UpstreamReply, t0: float, bodies: bool
    ) -> None:
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
        assert reply.chunks is not None
        last: bytes | None = None
        logged = False
        try:
            async for chunk in reply.chunks:
                if first is None:
                    first = time.perf_counter()
                if logged:  # only the end of the upstream's body is left
                    continue
                parts.append(chunk)
                if reply.complete or b"data: [DONE]" in chunk:
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
                event = b"data: " + faults.public_body(exc, rec.call_id) + b"\n\n"
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
        if rec.endpoint == "responses":  # noted before the stream ends (shared by every worker)
            await self.origins.note(rec, parts)
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
        self._finish(rec, t0, time.perf_counter() - attempt.started, first)

    async def _open(
        self,
        attempt: Attempt,
        req: dict[str, Any],
        body: bytes,
        endpoint: str,
        name: str | None,
        upstreams: dict[str, UpstreamConfig],
    ) -> None:
        """Start the upstream call; leaves ``attempt.reply`` or ``attempt.error`` set."""
        try:
            upstream = self._upstream(name, upstreams)
            model = upstream.model or (req["model"] if name == PASSTHROUGH else name)
            if upstream.fast_path:
                if model != req["model"]:
                    body = orjson.dumps({**req, "model": model})
                caller = _CALLER_AUTH.get() if name == PASSTHROUGH else None
                tp = _TRACEPARENT.get()
                if tp is not None:
                    tp = child_traceparent(tp, attempt.call_id if self.own_spans else None)
                reply = await self.client.send(upstream, UPSTREAM_PATH[endpoint], body, caller, tp)
            else:
                reply = await litellm_upstream.send(upstream, endpoint, {**req, "model": model})
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

    def _upstream_fields(
        self, rec: CallRecord, name: str, upstreams: dict[str, UpstreamConfig], req: dict[str, Any]
    ) -> None:
        up = self.passthrough if name == PASSTHROUGH else upstreams.get(name)
        rec.upstream = "passthrough" if name == PASSTHROUGH else name
        if up is not None:
            rec.upstream_model = up.model or (req["model"] if name == PASSTHROUGH else name)
            rec.provider = up.provider
            rec.price_in = up.price_in
            rec.price_out = up.price_out

    # -- shadow -------------------------------------------------------------------------
    def _submit_shadow(
        self,
        rec: CallRecord,
        req: dict[str, Any],
        body: bytes,
        endpoint: str,
        stream: bool,
        state: RouteState,
        variant: str,
        upstreams: dict[str, UpstreamConfig],
    ) -> None:
        name = state.candidate if variant == "candidate" else state.baseline

        async def job() -> None:
            t0 = time.perf_counter()
            # the caller's trace context goes along: the shadow span's link must find the served span
            row = rec.shadow_of(new_id("call"), time.time_ns() // 1000, variant, stream)
            attempt = Attempt(row.call_id, variant, name or "")
            await self._open(attempt, req, body, endpoint, name, upstreams)
            self._upstream_fields(row, attempt.upstream, upstreams, req)
            self._log_attempt(row, attempt, t0, body=await _drain(attempt), store_body=state.store_bodies)

        self.shadow.submit(state.route, job)

    # -- logging ------------------------------------------------------------------------
    def _log_attempt(
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
                    row.error_type, row.error_message = _upstream_error(data)
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
        self._finish(row, t0, time.perf_counter() - attempt.started, None)

    def _finish(self, rec: CallRecord, t0: float, upstream_s: float, first: float | None) -> None:
        now = time.perf_counter()
        latency = now - t0
        rec.latency_ms = latency * 1000
        rec.upstream_ms = upstream_s * 1000
        rec.overhead_ms = max(0.0, latency - upstream_s) * 1000
        if first is not None:
            rec.ttft_ms = (first - t0) * 1000
        if self.redact is not None:
            if rec.response_sse:  # redact the assembled answer: a pattern can span chunks
                from gateway.store.rows import assemble_stream  # only with redaction on (pyarrow)

                assemble = ASSEMBLE.get(rec.endpoint, assemble_stream)
                rec.response = orjson.dumps(assemble(rec.response_sse)).decode()
                rec.response_sse = None
            rec.request = self.redact(rec.request)
            rec.response = self.redact(rec.response)
            rec.metadata = self.redact(rec.metadata)
        if rec.error_message is not None:
            rec.error_message = faults.redact(rec.error_message)
            self.health.observe(rec)
        self.writer.append("calls", rec.to_wal())

    async def _fail(
        self, send: Send, rec: CallRecord, exc: GatewayError, t0: float, attempt: Attempt | None = None
    ) -> None:
        rec.status = exc.status
        rec.error_type = exc.type
        rec.error_message = faults.log_message(exc)
        if attempt is not None and attempt.reply is not None:
            attempt.reply.close()
        upstream_s = (time.perf_counter() - attempt.started) if attempt is not None else 0.0
        self._finish(rec, t0, upstream_s, None)
        await send_error(send, exc, rec.call_id, rec.overhead_ms)

    async def close(self) -> None:
        await self.shadow.drain()
        await self.client.close()


# -- helpers --------------------------------------------------------------------------------
async def send_error(
    send: Send,
    exc: GatewayError,
    call_id: str | None = None,
    overhead_ms: float | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [_JSON, *(extra_headers or ())]
    if exc.close_connection:  # the rest of the request is not read: do not keep the connection
        headers.append((b"connection", b"close"))
    if call_id:
        headers.append((b"x-request-id", call_id.encode()))
    if overhead_ms is not None:
        headers.append((b"x-shadowtune-overhead-ms", f"{overhead_ms:.3f}".encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": faults.public_body(exc, call_id)})


async def _read_body(receive: Receive, limit: int, content_length: bytes | None = None) -> bytes:
    too_large = check_content_length(content_length, limit)  # refused before a byte is read
    if too_large is not None:
        raise too_large
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected("the client disconnected before sending the body")
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body over the {limit}-byte limit")
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


def _parse(body: bytes, endpoint: str) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    if endpoint == "chat.completions":
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise InvalidRequest(
                    f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}].role"
                )
        stream = req.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean", param="stream")
        n = req.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise InvalidRequest("'n' must be a positive integer", param="n")
    elif endpoint == "embeddings":
        if "input" not in req:
            raise InvalidRequest("'input' is required", param="input")
    else:
        responses.validate(req, endpoint)
    return req


def _sticky(
    state: RouteState, rec: CallRecord, req: dict[str, Any], headers: dict[bytes, bytes]
) -> str | None:
    key = state.sticky_key
    if key == "user":
        return rec.user
    if key == "session":
        return rec.session_id
    if key == "client_key":
        return rec.client_key
    value = headers.get(key[len("header:") :].lower().encode())
    return value.decode("latin-1") if value else None


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


def _upstream_error(data: bytes) -> tuple[str, str]:
    try:
        err = orjson.loads(data).get("error")
        if isinstance(err, dict):
            return str(err.get("type") or "upstream_error"), str(err.get("message") or "")
        if isinstance(err, str):
            return "upstream_error", err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return "upstream_error", data[:500].decode("utf-8", "replace")


def _as_openai_error(data: bytes, status: int) -> bytes:
    """Pass an upstream error through; wrap it in OpenAI's shape if it is not already."""
    try:
        parsed = orjson.loads(data)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return data
    except orjson.JSONDecodeError:
        pass
    from gateway.errors import error_body

    text = data[:2000].decode("utf-8", "replace") or f"upstream answered {status}"
    return error_body(text, "upstream_error", code=str(status))


async def _drain(attempt: Attempt) -> tuple[bytes, float | None] | None:
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


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any] | None) -> None:
    """Cancel the request's task when its client goes away (which cancels the upstream call)."""
    with contextlib.suppress(Exception):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if task is not None and not task.done():
            task.cancel()
