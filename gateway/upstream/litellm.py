"""Providers that are not OpenAI-compatible (Anthropic, Bedrock, Vertex, Gemini, Mistral, ...).

litellm is imported on first use only, so the fast path never pays for it; it is in the
``providers`` extra (``pip install 'shadowtune[providers]'``). Answers are turned back into
OpenAI's wire format: a ``chat.completion`` body or an SSE stream of chunks; for ``responses``
(litellm's ``aresponses``) a response object or its typed events (``event: <type>``), for
legacy ``completions`` (``atext_completion``) a ``text_completion`` body or chunks; the stored
responses' retrieve, delete, input items and cancel (`stored`) through litellm's own calls.

Failures are classified like the direct path's (`gateway.upstream.openai_compat`): the provider's
4xx pass through (redacted), timeouts answer 504, TLS failures (a certificate that does not
verify, a handshake that fails) ``upstream_tls_error`` and are not retried, the rest a generic
502; the caller never sees a URL or a key, the log gets the redacted detail. Retries (429, 5xx,
connection failures, ``upstream.retries``) are the gateway's, with the direct path's back-off,
not litellm's (``num_retries`` is 0), so that a certificate failure is tried once.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.config import UpstreamConfig
from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout
from gateway.protocol import sse
from gateway.upstream.faults import redact, safe_url
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
    params["num_retries"] = 0  # the gateway retries (below): never a certificate failure
    if upstream.headers:
        params["extra_headers"] = upstream.headers
    call = {
        "embeddings": litellm.aembedding,
        "responses": litellm.aresponses,
        "completions": litellm.atext_completion,
    }.get(endpoint, litellm.acompletion)
    where = _where(upstream)
    result = await _call(call, params, upstream, where)
    if request.get("stream") and endpoint != "embeddings":
        chunks = _typed_sse(result, where) if endpoint == "responses" else _sse(result, where)
        return UpstreamReply(status=200, content_type="text/event-stream", chunks=chunks)
    body = orjson.dumps(result.model_dump(mode="json", exclude_none=endpoint == "responses"))
    return UpstreamReply(status=200, content_type="application/json", body=body)


_STORED = {
    "retrieve": "aget_responses",
    "delete": "adelete_responses",
    "input_items": "alist_input_items",
    "cancel": "acancel_responses",
}


async def stored(
    upstream: UpstreamConfig, op: str, response_id: str, query: list[tuple[str, str]]
) -> UpstreamReply:
    """A stored response's ``retrieve``, ``delete``, ``input_items`` or ``cancel`` (`gateway.stored_responses`)."""
    litellm = _load()
    params: dict[str, Any] = {
        "response_id": response_id,
        "custom_llm_provider": upstream.provider,
        "timeout": upstream.timeout,
    }
    if upstream.api_key_env:
        params["api_key"] = os.environ.get(upstream.api_key_env)
    if upstream.base_url:
        params["api_base"] = upstream.base_url
    if upstream.headers:
        params["extra_headers"] = upstream.headers
    given = dict(query)
    stream = op == "retrieve" and given.get("stream") == "true"
    if op == "input_items":
        params.update({k: given[k] for k in ("after", "before", "order") if k in given})
        if "limit" in given:
            params["limit"] = int(given["limit"])
        include = [v for k, v in query if k in ("include", "include[]")]
        if include:
            params["include"] = include
    elif op == "retrieve":
        if stream:
            params["stream"] = True
        if "starting_after" in given:
            params["starting_after"] = int(given["starting_after"])
        rest = {k: v for k, v in query if k not in ("stream", "starting_after")}
        if rest:
            params["extra_query"] = rest
    where = _where(upstream)
    result = await _call(getattr(litellm, _STORED[op]), params, upstream, where)
    if stream:
        return UpstreamReply(status=200, content_type="text/event-stream", chunks=_typed_sse(result, where))
    data = result if isinstance(result, dict) else result.model_dump(mode="json", exclude_none=True)
    return UpstreamReply(status=200, content_type="application/json", body=orjson.dumps(data))


async def _call(call: Any, params: dict[str, Any], upstream: UpstreamConfig, where: str) -> Any:
    """``call(**params)`` with the gateway's retries of 429, 5xx and connection failures."""
    from gateway.upstream.openai_compat import _backoff

    attempt = 0
    while True:
        try:
            return await call(**params)
        except Exception as exc:
            err = _map_error(exc, where)
            retry = err.status in (429, 500, 502, 503) and err.code != "upstream_tls_error"
            if not retry or attempt >= upstream.retries:
                raise err from exc
        await _backoff(attempt, None)
        attempt += 1


async def _sse(stream: Any, where: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield sse.event(chunk.model_dump(exclude_none=True))
    except Exception as exc:
        raise _map_error(exc, where) from exc
    yield sse.DONE


async def _typed_sse(stream: Any, where: str) -> AsyncIterator[bytes]:
    """The Responses API's events: ``event: <type>`` and the event as ``data``; no ``[DONE]``."""
    try:
        async for event in stream:
            data = event.model_dump(mode="json", exclude_none=True)
            yield sse.event(data, name=str(data.get("type")))
    except Exception as exc:
        raise _map_error(exc, where) from exc


def _where(upstream: UpstreamConfig) -> str:
    return safe_url(upstream.base_url) if upstream.base_url else f"the {upstream.provider} API"


_TLS_SIGNS = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "SSLError",
    "SSL:",
    "[SSL",
    "TLSV1_ALERT",
    "tlsv1 alert",
    "WRONG_VERSION_NUMBER",
    "handshake failure",
)


def tls_failure(exc: BaseException) -> BaseException | None:
    """The TLS failure behind ``exc`` (an `ssl.SSLError` in its chain, or one named in its message)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return current
        current = current.__cause__ or current.__context__ or getattr(current, "original_exception", None)
    text = str(getattr(exc, "message", None) or exc)
    return exc if any(sign in text for sign in _TLS_SIGNS) else None


def _map_error(exc: Exception, where: str = "the upstream") -> GatewayError:
    """The provider's 4xx pass through (redacted); TLS failures, 5xx, timeouts and the rest become
    generic 502/504 (the redacted detail for the log only)."""
    status = getattr(exc, "status_code", None)
    message = redact(str(getattr(exc, "message", None) or exc))
    name = exc.__class__.__name__
    tls = tls_failure(exc)
    if tls is not None:
        return UpstreamError(
            "TLS with the upstream failed (certificate or handshake)",
            code="upstream_tls_error",
            detail=f"TLS with {where} failed: {tls.__class__.__name__}: {redact(str(tls))}",
        )
    if "Timeout" in name:
        return UpstreamTimeout("the upstream did not answer in time", detail=f"{name}: {message}")
    if isinstance(status, int) and 400 <= status < 500:
        err = InvalidRequest(message, code=name)
        err.status = status
        return err
    return UpstreamError("the upstream failed", code=name, detail=f"{where}: {name}: {message}")
