"""Liveness, readiness and Prometheus metrics.

``/healthz`` and ``/readyz``'s status answer everyone (Kubernetes probes); the readiness
detail (the store's state, whose last error may name file paths) only loopback clients,
the admin token, or everyone with ``readyz`` in ``server.public_endpoints``. ``/metrics``
is guarded at the edge (`gateway.edge`).
"""

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
    ctx = request.app.state.ctx
    status: dict[str, Any] = ctx.writer.status()
    ready = bool(status["healthy"])
    body: dict[str, Any] = {"status": "ok" if ready else "degraded"}
    if "readyz" in ctx.settings.server.public_endpoints or ctx.edge.trusted(request.scope):
        body["store"] = {
            k: status[k] for k in ("healthy", "backlog_bytes", "pending_in_memory", "dropped", "last_error")
        }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    data, content_type = request.app.state.ctx.telemetry.prometheus()
    return Response(data, media_type=content_type)
