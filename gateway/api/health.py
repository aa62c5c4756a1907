"""Liveness, readiness and Prometheus metrics.

``/readyz`` answers "can this instance serve calls?": it fails (503) only when this
instance cannot answer — no write-ahead log to accept calls into, or no configuration to
route them. Degraded dependencies that every replica shares (the Parquet flush or object
store, the state database) never fail it, so a shared outage cannot remove every pod from
its Service: they are reported by ``/healthz`` (always 200 while the process lives, with a
``degraded`` status and the details), the ``shadowtune.log.healthy`` and
``shadowtune.state.healthy`` metrics, and the log.

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

_STORE_KEYS = (
    "healthy",
    "appended",
    "flushed_rows",
    "quarantined",
    "quarantine_dir",
    "corrupt_records",
    "wal_open",
    "backlog_bytes",
    "pending_in_memory",
    "dropped",
    "flush_errors",
    "last_error",
)


def _store(ctx: Any) -> dict[str, Any]:
    status: dict[str, Any] = ctx.store_status()  # this worker's WAL + the log agent's view of the host
    return {k: status.get(k) for k in _STORE_KEYS}


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    """Liveness, with what is degraded (the call log's flush, the state backend), the log's record
    accounting and upstream failure counts. Remote callers that are not trusted get the status
    alone (the detail names files and upstreams), like ``/readyz``."""
    ctx = request.app.state.ctx
    store = _store(ctx)
    state = ctx.routes.backend.health.as_dict()
    state["routes_version"] = ctx.routes.snapshot.version
    degraded = [name for name, part in (("store", store), ("state", state)) if not part["healthy"]]
    status = "degraded" if degraded else "ok"
    if not ("readyz" in ctx.settings.server.public_endpoints or ctx.edge.trusted(request.scope)):
        return {"status": status}
    body: dict[str, Any] = {"status": status, "degraded": degraded, "store": store, "state": state}
    upstreams = ctx.hot.health.snapshot()  # failure counts by upstream name
    if upstreams:
        body["upstreams"] = upstreams
    return body


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """503 only when this instance cannot accept calls: no WAL to write them to, or nothing to route.

    The status answers everyone; the detail (the store's state, whose last error may name file
    paths) only trusted callers (see the module docstring)."""
    ctx = request.app.state.ctx
    reasons = []
    store = _store(ctx)
    if not store.get("wal_open", True) or store["pending_in_memory"]:  # records wait in memory, then drop
        reasons.append(f"the write-ahead log cannot be written: {store['last_error']}")
    if not ctx.routes.snapshot.routes and not ctx.settings.server.passthrough_url:
        reasons.append("no routes configured")
    body: dict[str, Any] = {"status": "ok" if not reasons else "unavailable"}
    if "readyz" in ctx.settings.server.public_endpoints or ctx.edge.trusted(request.scope):
        body["store"] = store
        if reasons:
            body["reasons"] = reasons
    return JSONResponse(body, status_code=200 if not reasons else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    data, content_type = request.app.state.ctx.telemetry.prometheus()
    return Response(data, media_type=content_type)
