"""The direct path to OpenAI-compatible upstreams: aiohttp with pooled keep-alive connections.

Retries (429, 5xx, connection failures) happen only before the first byte reaches the
caller, with bounded exponential back-off that honours a short ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator

import aiohttp

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream.reply import UpstreamReply

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 4.0
_DROP_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "content-encoding",
        "connection",
        "keep-alive",
        "server",
        "date",
        "content-type",
        "set-cookie",
    }
)
# the gateway's own x-request-id (the call id) must stay the only one the caller sees
_RENAME_HEADERS = {"x-request-id": "x-upstream-request-id"}


class OpenAICompatClient:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, upstream: UpstreamConfig, path: str, body: bytes, caller_auth: bytes | None
    ) -> UpstreamReply:
        """POST ``body`` to ``upstream``'s ``path``; the reply's body is not read yet."""
        url = upstream.base_url.rstrip("/") + path  # type: ignore[union-attr]
        headers = {"Content-Type": "application/json", **upstream.headers}
        key = os.environ.get(upstream.api_key_env) if upstream.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif caller_auth:
            headers["Authorization"] = caller_auth.decode("latin-1")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, upstream.timeout), sock_read=upstream.timeout)
        waited = 0.0
        attempt = 0
        while True:
            try:
                resp = await self.session.post(url, data=body, headers=headers, timeout=timeout)
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                raise UpstreamTimeout(f"upstream {url} did not answer within {upstream.timeout:g}s") from exc
            except aiohttp.ClientError as exc:
                if attempt < upstream.retries:
                    waited += await _backoff(attempt, None)
                    attempt += 1
                    continue
                raise UpstreamError(f"cannot reach upstream {url}: {exc.__class__.__name__}: {exc}") from exc
            if resp.status in RETRY_STATUSES and attempt < upstream.retries:
                retry_after = resp.headers.get("Retry-After")
                resp.release()
                waited += await _backoff(attempt, retry_after)
                attempt += 1
                continue
            return UpstreamReply(
                status=resp.status,
                content_type=resp.headers.get("Content-Type", "application/json"),
                headers=[
                    (_RENAME_HEADERS.get(k.lower(), k.lower()).encode("latin-1"), v.encode("latin-1"))
                    for k, v in resp.headers.items()
                    if k.lower() not in _DROP_HEADERS
                ],
                chunks=_iter_body(resp, url, upstream.timeout),
                waited_s=waited,
                _close=resp.close,
            )


async def _iter_body(resp: aiohttp.ClientResponse, url: str, timeout: float) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        resp.close()
        raise UpstreamTimeout(f"upstream {url} stalled for more than {timeout:g}s") from exc
    except aiohttp.ClientError as exc:
        resp.close()
        raise UpstreamError(f"upstream {url} broke off: {exc.__class__.__name__}: {exc}") from exc
    except BaseException:  # cancelled (client gone) or closed early: never reuse a half-read connection
        resp.close()
        raise
    resp.release()


async def _backoff(attempt: int, retry_after: str | None) -> float:
    delay = min(MAX_BACKOFF_S, 0.1 * 2**attempt) * (0.5 + random.random() / 2)
    if retry_after:
        try:
            delay = min(MAX_BACKOFF_S, max(delay, float(retry_after)))
        except ValueError:
            pass
    start = time.perf_counter()
    await asyncio.sleep(delay)
    return time.perf_counter() - start
