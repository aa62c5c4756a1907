"""The admin API: live route state, run-time upstreams, client keys, the log writer's health.

Route names may contain ``/`` (``org/model``): send them URL-quoted. While the state backend
is unreachable every change answers 503 ``state_unavailable`` and nothing is changed.

``Authorization: Bearer <server.admin_token>``; without a configured token the admin
API answers only to loopback clients that name an allowed ``Host`` (`gateway.edge`, against
DNS rebinding), and refuses a state change a browser says comes from another origin.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from gateway.config import UpstreamConfig
from gateway.edge import cross_origin, parse_json
from gateway.errors import Forbidden, InvalidRequest, NotFound, Unauthorized

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


@router.get("/routes/{route:path}/history")
async def route_history(route: str, request: Request, limit: int = HISTORY_LIMIT) -> dict[str, Any]:
    _admin(request)
    return {"data": await asyncio.to_thread(request.app.state.ctx.routes.history, route, limit)}


@router.get("/routes/{route:path}")
async def get_route(route: str, request: Request) -> dict[str, Any]:
    _admin(request)
    store = request.app.state.ctx.routes
    return {**store.get(route).public(), "version": store.snapshot.version}


@router.put("/routes/{route:path}")
@router.patch("/routes/{route:path}")
async def change_route(route: str, request: Request) -> dict[str, Any]:
    who = _admin(request)
    body = await _json(request)
    reason = body.pop("reason", None)
    actor = str(body.pop("actor", None) or who)
    store = request.app.state.ctx.routes
    state = await asyncio.to_thread(store.update, route, body, actor=actor, reason=reason)
    return {**state.public(), "version": store.snapshot.version}


@router.get("/history")
async def history(request: Request, limit: int = HISTORY_LIMIT) -> dict[str, Any]:
    _admin(request)
    return {"data": await asyncio.to_thread(request.app.state.ctx.routes.history, None, limit)}


@router.get("/upstreams")
async def list_upstreams(request: Request) -> dict[str, Any]:
    _admin(request)
    ups = request.app.state.ctx.routes.snapshot.upstreams
    return {"data": [{"name": n, **u.model_dump()} for n, u in sorted(ups.items())]}


@router.put("/upstreams/{name:path}")
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
    await asyncio.to_thread(
        request.app.state.ctx.routes.put_upstream, name, config, actor=actor, reason=reason
    )
    return {"name": name, **config.model_dump()}


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    _admin(request)
    ctx = request.app.state.ctx
    return {
        "store": ctx.store_status(),
        "shadow": ctx.shadow.status(),
        "routes_version": ctx.routes.snapshot.version,
        "state": ctx.routes.backend.health.as_dict(),
    }


# -- client keys (stored in the state backend, shared by every replica) ----------------------
@router.get("/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    _admin(request)
    keys = await asyncio.to_thread(request.app.state.ctx.auth.file.load)
    return {"data": [{k: v for k, v in row.items() if k != "hash"} for row in keys]}


@router.post("/keys")
async def create_key(request: Request) -> dict[str, Any]:
    """Issue a client key; the answer is the only place the key is ever shown."""
    _admin(request)
    body = await _json(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest("name must be a non-empty string (at most 200 characters)", param="name")
    auth = request.app.state.ctx.auth
    try:
        key = await asyncio.to_thread(auth.file.create, name)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="name", code="key_exists") from None
    await asyncio.to_thread(auth.refresh)
    return {"name": name, "key": key, "prefix": key[:10]}


@router.delete("/keys/{name:path}")
async def revoke_key(name: str, request: Request) -> dict[str, Any]:
    _admin(request)
    auth = request.app.state.ctx.auth
    try:
        await asyncio.to_thread(auth.file.revoke, name)
    except ValueError as exc:
        raise NotFound(str(exc), param="name", code="key_not_found") from None
    await asyncio.to_thread(auth.refresh)
    return {"name": name, "revoked": True}


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
    rows = await asyncio.to_thread(request.app.state.ctx.writer.flush)
    return {"flushed_rows": rows}
