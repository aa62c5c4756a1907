"""The log agent's HTTP app, served on a unix socket and reached through the request workers.

It answers what reads the log or the host's telemetry: the review pages (``/review``),
``/metrics`` (one set for the host), ``/admin/status`` and ``/admin/flush``, and the
workers' once-a-second reports (``POST /_agent/report``). Requests come only from the
workers' proxy (`gateway.agent.proxy`), which passes the caller's address in
``x-shadowtune-client`` so that loopback-only pages keep working as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway import __version__, jobs
from gateway.agent import feedback as agent_feedback
from gateway.agent.core import AgentLog, HostStats, LogAgent, call_resolver
from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.routing.state import RouteStateStore
from gateway.store.wal import WalAppender, new_writer_id

CLIENT_HEADER = b"x-shadowtune-client"
FEEDBACK_INDEX_ENTRIES = 50_000  # call and response ids the agent's feedback index keeps (~14 MiB)
REPORT_PATH = "/_agent/report"


@dataclass
class AgentContext:
    """What the agent's routers and jobs share (the attributes `gateway.app.Context` has for them)."""

    settings: Settings
    agent: LogAgent
    writer: Any
    routes: RouteStateStore
    auth: Authenticator
    shadow: HostStats
    telemetry: Any = None
    custom_metrics: Any = ()
    edge: Any = None
    """`gateway.edge.Edge`: the same Host/loopback/admin rules as the workers (the caller's
    address comes along from the worker in ``x-shadowtune-client``)."""
    port: int | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)
    feedback_index: Any = None
    """`gateway.signals.ownership.FeedbackIndex`, fed by the agent's WAL tail: the workers ask it
    who owns a call (`gateway.agent.feedback`)."""


def build_agent(settings: Settings, *, span_exporter: Any = None, metric_readers: Any = ()) -> AgentContext:
    """The agent, its own WAL writer (lazy: no file until it appends), and its telemetry."""
    from gateway import telemetry
    from gateway.api.feedback import custom_metrics

    store = settings.store
    own = WalAppender(
        LogAgent.wal_dir_of(settings),
        rotate_interval=store.flush_interval,
        max_pending=store.max_pending,
        writer_id=new_writer_id("agent"),
        lazy=True,
    )
    agent = LogAgent(settings, own=own)
    ctx = AgentContext(
        settings=settings,
        agent=agent,
        writer=AgentLog(agent, own),
        routes=(routes := RouteStateStore(settings)),
        auth=Authenticator(store.state_path, settings.server.auth, backend=routes.backend),
        shadow=agent.host,
        port=settings.server.port,
    )
    ctx.custom_metrics = custom_metrics(settings.signals.custom_metrics)
    from gateway.edge import Edge

    ctx.edge = Edge(settings, ctx.auth)
    ctx.telemetry = telemetry.Telemetry(
        settings.telemetry, ctx, span_exporter=span_exporter, metric_readers=metric_readers
    )
    ctx.telemetry.resolve_calls = call_resolver(settings, agent.wal_dir)
    agent.tailer.listeners.append(ctx.telemetry.on_records)
    from gateway.signals.ownership import FeedbackIndex

    # recent calls (~1/4 KB each; older ones are found in the table), so the agent's memory stays bounded
    ctx.feedback_index = FeedbackIndex(
        store.log_dir, agent.wal_dir, poll=agent.tailer.poll, max_entries=FEEDBACK_INDEX_ENTRIES
    )
    agent.tailer.listeners.append(ctx.feedback_index.on_records)
    return ctx


def create_agent_app(settings: Settings, **telemetry_sinks: Any) -> FastAPI:
    ctx = build_agent(settings, **telemetry_sinks)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ctx.agent.own.start()  # type: ignore[union-attr]
        # the backlog a restarted agent finds is converted in its thread: the workers reach it at once
        await asyncio.to_thread(ctx.agent.start, first_round_in_background=True)
        ctx.background = jobs.start(ctx)
        # the review pages' stores, facets and sample pool, before the first reviewer needs them
        ctx.background.append(asyncio.create_task(warm_up(api.state)))
        try:
            yield
        finally:
            for task in ctx.background:
                task.cancel()
            await asyncio.to_thread(ctx.agent.stop)
            ctx.feedback_index.close()
            ctx.telemetry.shutdown()

    api = FastAPI(title="Shadowtune log agent", version=__version__, lifespan=lifespan)
    api.state.ctx = ctx
    from gateway.app import _install_error_handlers

    _install_error_handlers(api)
    from gateway.api.admin import _admin
    from gateway.web import review
    from gateway.web._warm import warm_up

    api.include_router(review.router)

    @api.get("/metrics")
    async def metrics(request: Request) -> Response:
        data, content_type = request.app.state.ctx.telemetry.prometheus()
        return Response(data, media_type=content_type)

    @api.get("/admin/status")
    async def status(request: Request) -> dict[str, Any]:
        _admin(request)
        host = ctx.agent.host
        return {
            "store": ctx.agent.status(),
            "shadow": {"depth": host.depth, "in_flight": host.in_flight, "workers": host.workers},
            "routes_version": ctx.routes.snapshot.version,
            # seconds the review pages' warm-up took (`gateway.web._warm`); None while it runs
            "review_warm_s": getattr(request.app.state, "review_warm_s", None),
            "review_dashboards_s": getattr(request.app.state, "review_dashboards_s", None),
        }

    @api.post("/admin/flush")
    async def flush(request: Request) -> dict[str, Any]:
        _admin(request)
        rows = await asyncio.to_thread(ctx.writer.flush)
        return {"flushed_rows": rows}

    @api.post(agent_feedback.LOOKUP_PATH)
    async def feedback_lookup(request: Request) -> Response:
        body = await request.json()
        answer = await asyncio.to_thread(agent_feedback.answer, ctx.feedback_index, body)
        return JSONResponse(answer)

    @api.post(REPORT_PATH)
    async def report(request: Request) -> Response:
        body = await request.json()
        ctx.agent.host.update(str(body.get("writer_id")), body)
        a = ctx.agent
        return JSONResponse(
            {
                "healthy": a.healthy,
                "backlog_bytes": a.backlog_bytes,
                "flush_errors": a.stats.flush_errors,
                "last_error": a.stats.last_error,
            }
        )

    return api


class ClientFromHeader:
    """ASGI wrapper: the caller's address from the workers' proxy header (unix socket only)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers") or []
            for name, value in headers:
                if name == CLIENT_HEADER:
                    host, _, port = value.decode("latin-1").rpartition(":")
                    scope = dict(scope, client=(host, int(port) if port.isdigit() else 0))
                    scope["headers"] = [(n, v) for n, v in headers if n != CLIENT_HEADER]
                    break
            else:
                scope = dict(scope, client=None)
        await self.app(scope, receive, send)
