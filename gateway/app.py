"""The gateway application: the hot path in front, FastAPI for everything else.

``create_app(settings)`` returns an ASGI callable. ``POST /v1/chat/completions`` and
``POST /v1/embeddings`` go straight to `HotPath` (a plain ASGI handler); every other
request goes to a FastAPI app (models, health, admin, feedback, metrics, review page).

Two ways to run it:

* ``create_app(settings, agent_socket=path)``: a request worker of ``shadowtune serve``. It
  appends to the WAL (`gateway.store.wal`) and nothing else; the pages that read the log
  (`gateway.agent.proxy.AGENT_PATHS`) are forwarded to the host's log agent, and the
  periodic jobs run there. No pyarrow, DuckDB or OpenTelemetry SDK is imported.
* ``create_app(settings)``: everything in one process (tests, embedding): the same WAL
  writer, with the log agent (`gateway.agent.core.LogAgent`, its telemetry and jobs) in
  threads of this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gateway import __version__, jobs, stored_responses
from gateway.agent.proxy import AgentLink, is_agent_path
from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.errors import (
    ClientDisconnected,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    error_body,
    error_dict,
)
from gateway.hints import startup_warnings
from gateway.hotpath import PATHS, HotPath, Receive, Scope, Send, send_error
from gateway.routing.state import RouteStateStore
from gateway.shadow import ShadowRunner
from gateway.store.ids import new_id
from gateway.store.wal import WalAppender, default_wal_dir

log = logging.getLogger("shadowtune")


@dataclass
class Context:
    """What the routers share; built once per worker by `create_app`."""

    settings: Settings
    writer: WalAppender
    routes: RouteStateStore
    auth: Authenticator
    shadow: ShadowRunner
    hot: HotPath
    telemetry: Any = None
    custom_metrics: Any = ()
    edge: Any = None  # gateway.edge.Edge: Host allow-list, exposure, body limits
    port: int | None = None  # the bound port, when known (tests bind port 0)
    agent: Any = None  # the in-process LogAgent (one process) or the AgentLink (a worker of serve)

    def store_status(self) -> dict[str, Any]:
        """This process's WAL writer, with the log agent's view of the host's store when known."""
        own = self.writer.status()
        host = None
        if self.agent is not None:
            host = self.agent.status() if hasattr(self.agent, "status") else self.agent.fresh_agent_status()
        if host is None:
            return own
        dropped = dict(host.get("dropped") or {})
        for reason, n in own["dropped"].items():
            dropped.setdefault(reason, n)
        return {
            **host,
            "writer_id": own["writer_id"],
            "wal_open": own["wal_open"],
            "wal_errors": own["wal_errors"],
            "appended": own["appended"],
            "healthy": bool(own["healthy"] and host.get("healthy", True)),
            "pending_in_memory": own["pending_in_memory"],
            "dropped": dropped,
            "last_error": own["last_error"] or host.get("last_error"),
        }


class GatewayApp:
    """ASGI entry: dispatches the hot paths, delegates the rest to FastAPI."""

    def __init__(self, ctx: Context, api: FastAPI) -> None:
        self.ctx = ctx
        self.api = api
        self.hot = ctx.hot
        self.link: AgentLink | None = ctx.agent if isinstance(ctx.agent, AgentLink) else None
        self.edge = ctx.edge
        self.stored = stored_responses.StoredResponses(ctx.hot)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)  # type: ignore[arg-type]
            return
        endpoint = PATHS.get(scope["path"])
        refusal = self.edge.refusal(scope, hot=endpoint is not None)
        if refusal is not None:
            await send_error(send, refusal, new_id("req"), 0.0)
            return
        receive = self.edge.guard(receive)
        stored = stored_responses.match(scope["path"]) if endpoint is None else None
        if stored is not None:  # GET/DELETE /v1/responses/{id}, .../input_items, .../cancel
            await self.stored(scope, receive, send, stored)
            return
        if endpoint is not None:
            if scope["method"] == "POST":
                await self.hot(scope, receive, send, endpoint)
                return
            if scope["method"] != "OPTIONS":
                err = MethodNotAllowed(
                    f"{scope['method']} is not allowed here; use POST", code="method_not_allowed"
                )
                await send_error(send, err, new_id("req"), 0.0, extra_headers=[(b"allow", b"POST")])
                return
        t0 = time.perf_counter()
        call_id = new_id("req").encode()

        async def send_with_ids(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                overhead = f"{(time.perf_counter() - t0) * 1000:.3f}".encode()
                headers = [
                    *message.get("headers", ()),
                    (b"x-request-id", call_id),
                    (b"x-shadowtune-overhead-ms", overhead),
                ]
                message = {**message, "headers": headers}
            await send(message)

        if self.link is not None and is_agent_path(scope["path"]):
            if scope["path"] == "/admin/flush":
                self.ctx.writer.rotate()  # this worker's open segment, now; the agent waits for the others
            await self.link.forward(scope, receive, send_with_ids)
            return
        await self.api(scope, receive, send_with_ids)  # type: ignore[arg-type]


def create_app(
    settings: Settings,
    *,
    span_exporter: Any = None,
    metric_readers: Any = (),
    agent_socket: str | None = None,
) -> GatewayApp:
    """Build the gateway (see the module docstring); ``span_exporter`` / ``metric_readers`` add
    OpenTelemetry sinks to the in-process agent (tests use in-memory ones)."""
    store = settings.store
    writer = WalAppender(
        store.wal_dir or default_wal_dir(store.log_dir),
        rotate_interval=store.flush_interval,
        max_pending=store.max_pending,
        wal_fsync_ms=store.wal_fsync_ms,
    )
    routes = RouteStateStore(settings)
    auth = Authenticator(store.state_path, settings.server.auth, backend=routes.backend)
    shadow = ShadowRunner(settings.shadow.max_in_flight, settings.shadow.queue_size)
    hot = HotPath(settings, writer, routes, auth, shadow)
    ctx = Context(settings=settings, writer=writer, routes=routes, auth=auth, shadow=shadow, hot=hot)
    from gateway.edge import Edge

    ctx.edge = Edge(settings, auth)
    from gateway.api.feedback import custom_metrics

    ctx.custom_metrics = custom_metrics(settings.signals.custom_metrics)
    if agent_socket is not None:
        ctx.agent = AgentLink(agent_socket, ctx)
    else:
        from gateway.agent.embedded import embed_agent

        embed_agent(ctx, span_exporter=span_exporter, metric_readers=metric_readers)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sys.setswitchinterval(settings.server.gil_switch_interval_ms / 1000)
        await asyncio.to_thread(writer.start)
        if auth.open:
            log.warning(
                "client authentication is OFF (open mode): create a key with 'shadowtune keys create'"
            )
        for warning in startup_warnings(settings, auth):
            log.warning("%s", warning)
        loop = asyncio.get_running_loop()
        if isinstance(ctx.agent, AgentLink):  # the agent runs the periodic jobs
            background = [
                loop.create_task(jobs.poll_routes(routes)),
                loop.create_task(ctx.agent.report_loop()),
            ]
        else:
            await asyncio.to_thread(ctx.agent.start)
            background = jobs.start(ctx)
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await hot.close()
            await asyncio.to_thread(writer.close)
            if isinstance(ctx.agent, AgentLink):
                with contextlib.suppress(Exception):
                    await ctx.agent.report_once()  # the last counts (drops, skips) reach the agent
                await ctx.agent.close()
            else:
                await asyncio.to_thread(ctx.agent.stop)
                ctx.telemetry.shutdown()

    api = FastAPI(title="Shadowtune", version=__version__, lifespan=lifespan)
    api.state.ctx = ctx
    _install_error_handlers(api)
    from gateway.api import admin, health, models

    api.include_router(models.router)
    api.include_router(admin.router)
    api.include_router(health.router)
    from gateway.api import feedback

    api.include_router(feedback.router)
    if agent_socket is None:
        from gateway.web import review

        api.include_router(review.router)
    return GatewayApp(ctx, api)


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        headers = {"connection": "close"} if exc.close_connection else None
        return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=headers)

    @api.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _: ClientDisconnect) -> Response:
        log.info("client disconnected while sending %s %s (499)", request.method, request.url.path)
        gone = ClientDisconnected("the client closed the connection while sending the request")
        return Response(gone.body(), status_code=gone.status, media_type="application/json")

    @api.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        err = InvalidRequest(str(first.get("msg")), param=".".join(loc) or None)
        return Response(err.body(), status_code=400, media_type="application/json")

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        body = error_body(str(exc.detail), type_, code=code)
        return Response(body, status_code=exc.status_code, media_type="application/json")

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return Response(
            error_body("internal error", "server_error"), status_code=500, media_type="application/json"
        )


__all__ = ["Context", "GatewayApp", "create_app", "error_dict"]
