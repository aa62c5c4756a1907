"""``GET /v1/models``: the model names a caller may use (the configured routes)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


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


@router.get("/v1/models/{model}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    ctx = request.app.state.ctx
    ctx.auth.check(request.headers.get("authorization", "").encode() or None)
    ctx.routes.get(model)
    return {"id": model, "object": "model", "created": 0, "owned_by": "shadowtune"}


async def _upstream_models(ctx: Any, upstream: Any, auth: bytes | None) -> dict[str, Any]:
    """Zero-config mode: every model name is forwarded, so list the upstream's own models."""
    import os

    import aiohttp

    from gateway.errors import Unauthorized, UpstreamError
    from gateway.hints import missing_key_hint

    key = os.environ.get(upstream.api_key_env) if upstream.api_key_env else None
    headers = (
        {"Authorization": f"Bearer {key}"}
        if key
        else ({"Authorization": auth.decode()} if auth and ctx.auth.open else {})
    )
    try:
        async with ctx.hot.client.session.get(
            upstream.base_url.rstrip("/") + "/models",
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
            return data
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"cannot list the upstream's models: {exc}") from exc
