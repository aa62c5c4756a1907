"""The request path of ``/v1/chat/completions`` and ``/v1/embeddings``, as a plain ASGI handler
(also ``/v1/responses`` and ``/v1/completions``: what differs for them is in `gateway.responses`).

This is the code every production call runs through, so it stays lean: no framework
layers, one JSON parse of the body, the body forwarded as bytes (re-serialised only when
the upstream model id differs from the name the client sent), a streamed answer relayed
chunk by chunk as it arrives, and one ``write()`` to the call log's WAL per call. Work
that can wait — assembling streamed answers, redaction, token counts, costs, telemetry —
happens in the host's log agent (`gateway.agent`), another process. A caller's
``traceparent`` is forwarded to the upstream.

This module is the router: per request it authenticates, reads and parses the body
(`gateway.protocol.requests`), resolves the route's live state and picks the serving
variant (`gateway.routing.modes`), then hands a `gateway.serving.CallContext` to
`gateway.serving.Serving` (attempt, fallback to the baseline when a candidate fails before
the first byte, relay, log) and, once the call is served, to the shadow submitter
(`gateway.shadow.ShadowSubmitter`), which hands the shadow call, if any, to the bounded
`ShadowRunner`. A client that disconnects cancels the upstream call and is logged as 499.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import responses
from gateway.auth import Authenticator
from gateway.config import Settings, UpstreamConfig
from gateway.edge import check_content_length
from gateway.errors import ClientDisconnected, GatewayError, NotFound, PayloadTooLarge
from gateway.protocol.record import CallRecord
from gateway.protocol.redact import log_spec
from gateway.protocol.requests import VIEWS, RequestView, check_chat, check_embeddings, load_object
from gateway.routing.modes import plan_for
from gateway.routing.state import RouteState, RouteStateStore
from gateway.serving import PASSTHROUGH, UPSTREAM_PATH, CallContext, Serving, send_error
from gateway.shadow import ShadowRunner, ShadowSubmitter
from gateway.store.ids import new_id
from gateway.store.wal import WalAppender
from gateway.upstream import faults

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
__all__ = ["PASSTHROUGH", "PATHS", "UPSTREAM_PATH", "HotPath", "Receive", "Scope", "Send", "send_error"]


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
        self.health = faults.UpstreamHealth()
        self.origins = responses.ResponseOrigins(routes.backend, settings.store.response_ids_days * 86400)
        self.max_body = settings.server.max_body_bytes
        r = settings.store.redact
        passthrough = settings.server.passthrough_url
        self.passthrough: UpstreamConfig | None = (
            UpstreamConfig(base_url=passthrough, api_key_env=settings.server.upstream_key_env)
            if passthrough
            else None
        )
        self.serving = Serving(
            writer,
            self.health,
            self.passthrough,
            # forwarded traceparents name the gateway's own span as the parent when spans are exported
            own_spans=bool(settings.telemetry.otlp_endpoint),
            redact=log_spec(r.emails, r.cards, r.patterns),
            origins=self.origins,
        )
        self.client = self.serving.client
        self.submitter = ShadowSubmitter(self.serving, shadow)

    # -- ASGI entry ---------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        t0 = time.perf_counter()
        ts = time.time_ns() // 1000
        call_id = new_id("call")
        headers = dict(scope["headers"])
        rec = CallRecord.begin(call_id, ts, endpoint)
        try:
            authorization = headers.get(b"authorization")
            rec.client_key = self.auth.check(authorization)
            # open mode, zero-config: the caller's own key goes to the passthrough upstream (never to the log)
            caller_auth = authorization if rec.client_key is None else None
            body = await _read_body(receive, self.max_body, headers.get(b"content-length"))
            req = _parse(body, endpoint)
        except GatewayError as exc:
            await self.serving.fail(send, rec, exc, t0)
            return
        rec.request = body.decode()
        model = req.model
        stream = req.stream and endpoint in responses.STREAMING
        rec.stream = stream
        rec.annotate(req.raw, headers)
        snapshot = self.routes.snapshot
        state = snapshot.routes.get(model)
        if state is None:
            if self.passthrough is None:
                missing = NotFound(
                    f"The model '{model}' does not exist", param="model", code="model_not_found"
                )
                await self.serving.fail(send, rec, missing, t0)
                return
            state = RouteState(route=model, baseline=PASSTHROUGH)
        rec.route = model
        rec.route_version = snapshot.version
        rec.mode = state.mode
        if not state.store_bodies:
            rec.request = None
        plan = plan_for(state, _sticky(state, rec, headers), random.random())
        plan, why = await self.origins.constrain(endpoint, req.raw, plan, state)
        if why is not None:  # server-side state only one variant knows (previous_response_id)
            rec.tags = [*(rec.tags or ()), why]
        ctx = CallContext(
            send, rec, req, body, endpoint, stream, state, plan, snapshot.upstreams, t0, caller_auth
        )
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, asyncio.current_task()))
        try:
            await self.serving.serve(ctx)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not watcher.done() or task is None:
                raise  # cancelled from outside (shutdown), not by a client disconnect
            task.uncancel()
            if rec.latency_ms is None:  # the client went away before the answer was complete
                rec.status = 499
                rec.error_type = "client_disconnected"
                rec.error_message = "the client closed the connection before the answer was complete"
                self.serving.finish(rec, t0, time.perf_counter() - t0, None)
                return
            # the answer was complete (logged) and the client left after it: shadow as usual
        finally:
            watcher.cancel()
        self.submitter.after(ctx, why)

    async def close(self) -> None:
        await self.shadow.drain()
        await self.serving.close()


# -- helpers --------------------------------------------------------------------------------
def _parse(body: bytes, endpoint: str) -> RequestView:
    """The request's typed view (`gateway.protocol.requests`), or a 400."""
    req = load_object(body)
    if endpoint == "chat.completions":
        check_chat(req)
    elif endpoint == "embeddings":
        check_embeddings(req)
    else:
        responses.validate(req, endpoint)
    return VIEWS[endpoint](req)


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


def _sticky(state: RouteState, rec: CallRecord, headers: dict[bytes, bytes]) -> str | None:
    key = state.sticky_key
    if key == "user":
        return rec.user
    if key == "session":
        return rec.session_id
    if key == "client_key":
        return rec.client_key
    value = headers.get(key[len("header:") :].lower().encode())
    return value.decode("latin-1") if value else None


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any] | None) -> None:
    """Cancel the request's task when its client goes away (which cancels the upstream call)."""
    with contextlib.suppress(Exception):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if task is not None and not task.done():
            task.cancel()
