"""The admin API: live route state, run-time upstreams, the log writer's health.

``Authorization: Bearer <server.admin_token>``; without a configured token the admin
API answers only to loopback clients.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from gateway.config import UpstreamConfig
from gateway.errors import Forbidden, InvalidRequest, Unauthorized

router = APIRouter(prefix="/admin")


def _admin(request: Request) -> str:
    ctx = request.app.state.ctx
    token = ctx.settings.server.admin_token
    header = request.headers.get("authorization", "")
    if token is None:
        host = request.client.host if request.client else ""
        if host not in ("127.0.0.1", "::1", "localhost", "testclient"):
            raise Forbidden("the admin API needs server.admin_token to be reached from another host")
        return "local"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token.get_secret_value()):
        raise Unauthorized("invalid admin token", code="invalid_admin_token")
    return "admin"


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


@router.get("/routes")
async def list_routes(request: Request) -> dict[str, Any]:
    _admin(request)
    snap = request.app.state.ctx.routes.snapshot
    return {"version": snap.version, "data": [s.public() for _, s in sorted(snap.routes.items())]}


@router.get("/routes/{route}")
async def get_route(route: str, request: Request) -> dict[str, Any]:
    _admin(request)
    store = request.app.state.ctx.routes
    return {**store.get(route).public(), "version": store.snapshot.version}


@router.put("/routes/{route}")
@router.patch("/routes/{route}")
async def change_route(route: str, request: Request) -> dict[str, Any]:
    who = _admin(request)
    body = await _json(request)
    reason = body.pop("reason", None)
    actor = str(body.pop("actor", None) or who)
    store = request.app.state.ctx.routes
    state = store.update(route, body, actor=actor, reason=reason)
    return {**state.public(), "version": store.snapshot.version}


@router.get("/routes/{route}/history")
async def route_history(route: str, request: Request, limit: int = 100) -> dict[str, Any]:
    _admin(request)
    return {"data": request.app.state.ctx.routes.history(route, limit)}


@router.get("/history")
async def history(request: Request, limit: int = 100) -> dict[str, Any]:
    _admin(request)
    return {"data": request.app.state.ctx.routes.history(None, limit)}


@router.get("/upstreams")
async def list_upstreams(request: Request) -> dict[str, Any]:
    _admin(request)
    ups = request.app.state.ctx.routes.snapshot.upstreams
    return {"data": [{"name": n, **u.model_dump()} for n, u in sorted(ups.items())]}


@router.put("/upstreams/{name}")
async def put_upstream(name: str, request: Request) -> dict[str, Any]:
    who = _admin(request)
    body = await _json(request)
    reason = body.pop("reason", None)
    actor = str(body.pop("actor", None) or who)
    try:
        config = UpstreamConfig(**body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(first["msg"], param=".".join(str(p) for p in first["loc"])) from None
    request.app.state.ctx.routes.put_upstream(name, config, actor=actor, reason=reason)
    return {"name": name, **config.model_dump()}


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    _admin(request)
    ctx = request.app.state.ctx
    return {
        "store": ctx.store_status(),
        "shadow": ctx.shadow.status(),
        "routes_version": ctx.routes.snapshot.version,
    }


@router.get("/process")
async def process(request: Request) -> dict[str, Any]:
    """This process (the worker that took the request): pid, WAL writer, loaded modules (for checks)."""
    _admin(request)
    import os
    import sys

    ctx = request.app.state.ctx
    return {"pid": os.getpid(), "writer_id": ctx.writer.writer_id, "modules": sorted(sys.modules)}


@router.post("/flush")
async def flush(request: Request) -> dict[str, Any]:
    _admin(request)
    import asyncio

    rows = await asyncio.to_thread(request.app.state.ctx.writer.flush)
    return {"flushed_rows": rows}
