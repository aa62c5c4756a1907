"""Providers that are not OpenAI-compatible (Anthropic, Bedrock, Vertex, Gemini, Mistral, ...).

litellm is imported on first use only, so the fast path never pays for it; it is in the
``providers`` extra (``pip install 'shadowtune[providers]'``). Answers are turned back into
OpenAI's wire format: a ``chat.completion`` body or an SSE stream of chunks; for ``responses``
(litellm's ``aresponses``) a response object or its typed events (``event: <type>``), for
legacy ``completions`` (``atext_completion``) a ``text_completion`` body or chunks.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.config import UpstreamConfig
from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout
from gateway.upstream.faults import redact
from gateway.upstream.reply import UpstreamReply

_litellm: Any = None


def _load() -> Any:
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UpstreamError(
                "this upstream needs litellm: pip install 'shadowtune[providers]'", code="litellm_missing"
            ) from exc
        litellm.drop_params = False
        litellm.suppress_debug_info = True
        _litellm = litellm
    return _litellm


async def send(upstream: UpstreamConfig, endpoint: str, request: dict[str, Any]) -> UpstreamReply:
    litellm = _load()
    params = dict(request)
    params["model"] = f"{upstream.provider}/{upstream.model}"
    if upstream.api_key_env:
        params["api_key"] = os.environ.get(upstream.api_key_env)
    if upstream.base_url:
        params["api_base"] = upstream.base_url
    params["timeout"] = upstream.timeout
    params["num_retries"] = upstream.retries
    if upstream.headers:
        params["extra_headers"] = upstream.headers
    call = {
        "embeddings": litellm.aembedding,
        "responses": litellm.aresponses,
        "completions": litellm.atext_completion,
    }.get(endpoint, litellm.acompletion)
    try:
        result = await call(**params)
    except Exception as exc:
        raise _map_error(exc) from exc
    if request.get("stream") and endpoint != "embeddings":
        chunks = _typed_sse(result) if endpoint == "responses" else _sse(result)
        return UpstreamReply(status=200, content_type="text/event-stream", chunks=chunks)
    body = orjson.dumps(result.model_dump(mode="json", exclude_none=endpoint == "responses"))
    return UpstreamReply(status=200, content_type="application/json", body=body)


async def _sse(stream: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield b"data: " + orjson.dumps(chunk.model_dump(exclude_none=True)) + b"\n\n"
    except Exception as exc:
        raise _map_error(exc) from exc
    yield b"data: [DONE]\n\n"


async def _typed_sse(stream: Any) -> AsyncIterator[bytes]:
    """The Responses API's events: ``event: <type>`` and the event as ``data``; no ``[DONE]``."""
    try:
        async for event in stream:
            data = event.model_dump(mode="json", exclude_none=True)
            yield f"event: {data.get('type')}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"
    except Exception as exc:
        raise _map_error(exc) from exc


def _map_error(exc: Exception) -> GatewayError:
    """The provider's 4xx pass through (redacted); 5xx, timeouts and the rest become generic 502/504."""
    status = getattr(exc, "status_code", None)
    message = redact(str(getattr(exc, "message", None) or exc))
    name = exc.__class__.__name__
    if "Timeout" in name:
        return UpstreamTimeout("the upstream did not answer in time", detail=f"{name}: {message}")
    if isinstance(status, int) and 400 <= status < 500:
        err = InvalidRequest(message, code=name)
        err.status = status
        return err
    return UpstreamError("the upstream failed", code=name, detail=f"{name}: {message}")
