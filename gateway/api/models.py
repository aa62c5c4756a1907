"""``GET /v1/models``: the model names a caller may use (the configured routes)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request

from gateway.errors import NotFound

router = APIRouter()
log = logging.getLogger("shadowtune.upstream")


@router.get("/v1/models")
@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    ctx = request.app.state.ctx
    auth = request.headers.get("authorization", "").encode() or None
    ctx.auth.check(auth)
    snap = ctx.routes.snapshot
    passthrough = ctx.hot.passthrough
    if passthrough is not None and not snap.routes:
        return await _upstream_models(ctx, passthrough, auth)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "shadowtune"}
        for name in sorted(snap.routes)
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model:path}")
@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    """One model: a route, or in zero-config mode one of the ids the upstream lists."""
    ctx = request.app.state.ctx
    auth = request.headers.get("authorization", "").encode() or None
    ctx.auth.check(auth)
    snap = ctx.routes.snapshot
    passthrough = ctx.hot.passthrough
    if passthrough is not None and not snap.routes:
        listed = await _upstream_models(ctx, passthrough, auth)
        for entry in listed.get("data") or ():
            if isinstance(entry, dict) and entry.get("id") == model:
                return entry
        raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
    if model not in snap.routes:
        raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
    return {"id": model, "object": "model", "created": 0, "owned_by": "shadowtune"}


async def _upstream_models(ctx: Any, upstream: Any, auth: bytes | None) -> dict[str, Any]:
    """Zero-config mode: every model name is forwarded, so list the upstream's own models."""
    import os

    import aiohttp
    import yarl

    from gateway.errors import Unauthorized, UpstreamError
    from gateway.hints import missing_key_hint

    key = os.environ.get(upstream.api_key_env) if upstream.api_key_env else None
    headers = (
        {"Authorization": f"Bearer {key}"}
        if key
        else ({"Authorization": auth.decode()} if auth and ctx.auth.open else {})
    )
    url = yarl.URL(upstream.base_url.rstrip("/") + "/models")
    if headers and url.user is not None:  # aiohttp refuses URL credentials next to an Authorization header
        url = url.with_user(None)
    try:
        async with ctx.hot.client.session.get(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status == 401:  # sent without a key? say so
                hint = missing_key_hint(upstream, passthrough=True, forwarded="Authorization" in headers)
                if hint is not None:
                    raise Unauthorized(hint, code="upstream_key_missing")
            if resp.status >= 400:
                raise UpstreamError(f"upstream /models answered {resp.status}", code=str(resp.status))
            if not isinstance(data, dict):
                raise ValueError("the upstream's /models answer is not a JSON object")
            return data
    except (aiohttp.ClientError, ValueError) as exc:
        from gateway.upstream.faults import redact

        detail = redact(f"cannot list the upstream's models: {exc.__class__.__name__}: {exc}")
        log.warning("%s", detail)
        raise UpstreamError("cannot list the upstream's models", detail=detail) from exc
