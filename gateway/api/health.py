"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """503 with the reason while the call log is degraded (unwritable, backlogged, dropping)."""
    status: dict[str, Any] = request.app.state.ctx.store_status()
    ready = bool(status["healthy"])
    body = {
        "status": "ok" if ready else "degraded",
        "store": {
            k: status[k] for k in ("healthy", "backlog_bytes", "pending_in_memory", "dropped", "last_error")
        },
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    data, content_type = request.app.state.ctx.telemetry.prometheus()
    return Response(data, media_type=content_type)
