"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    """Liveness (always ok while the process answers): the call log's record accounting and
    upstream failure counts by name."""
    status: dict[str, Any] = request.app.state.ctx.writer.status()
    keys = ("appended", "flushed_rows", "quarantined", "quarantine_dir", "corrupt_records", "dropped")
    body: dict[str, Any] = {"status": "ok", "store": {k: status[k] for k in keys}}
    upstreams = request.app.state.ctx.hot.health.snapshot()
    if upstreams:
        body["upstreams"] = upstreams
    return body


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """503 with the reason while the call log is degraded (unwritable, backlogged, dropping)."""
    writer = request.app.state.ctx.writer
    status: dict[str, Any] = writer.status()
    ready = bool(status["healthy"])
    body = {
        "status": "ok" if ready else "degraded",
        "store": {
            k: status[k]
            for k in ("healthy", "backlog_bytes", "pending_in_memory", "dropped", "quarantined", "last_error")
        },
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    data, content_type = request.app.state.ctx.telemetry.prometheus()
    return Response(data, media_type=content_type)
