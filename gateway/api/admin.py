"""The admin API: live route state, run-time upstreams, the log writer's health.

``Authorization: Bearer <server.admin_token>``; without a configured token the admin
API answers only to loopback clients that name an allowed ``Host`` (`gateway.edge`, against
DNS rebinding), and refuses a state change a browser says comes from another origin.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from gateway.config import UpstreamConfig
from gateway.edge import cross_origin, parse_json
from gateway.errors import Forbidden, InvalidRequest, Unauthorized

router = APIRouter(prefix="/admin")
MAX_HISTORY = 10_000
HISTORY_LIMIT = Query(100, ge=1, le=MAX_HISTORY, description="entries, newest last")


def _admin(request: Request) -> str:
    ctx = request.app.state.ctx
    token = ctx.settings.server.admin_token
    header = request.headers.get("authorization", "")
    if token is None:
        if not ctx.edge.local(request.scope):
            raise Forbidden("the admin API needs server.admin_token to be reached from another host")
        if request.method not in ("GET", "HEAD") and cross_origin(request.scope):
            raise Forbidden("cross-origin requests to the admin API are not accepted", code="cross_origin")
        return "local"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token.get_secret_value()):
        raise Unauthorized("invalid admin token", code="invalid_admin_token")
    return "admin"


async def _json(request: Request) -> dict[str, Any]:
    body = parse_json(await request.body())
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for field in ("reason", "actor"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise InvalidRequest(f"{field} must be a string", param=field)
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
async def route_history(route: str, request: Request, limit: int = HISTORY_LIMIT) -> dict[str, Any]:
    _admin(request)
    return {"data": request.app.state.ctx.routes.history(route, limit)}


@router.get("/history")
async def history(request: Request, limit: int = HISTORY_LIMIT) -> dict[str, Any]:
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
        "store": ctx.writer.status(),
        "shadow": ctx.shadow.status(),
        "routes_version": ctx.routes.snapshot.version,
    }


@router.post("/flush")
async def flush(request: Request) -> dict[str, Any]:
    _admin(request)
    import asyncio

    rows = await asyncio.to_thread(request.app.state.ctx.writer.flush)
    return {"flushed_rows": rows}
