"""The direct path to OpenAI-compatible upstreams: pooled keep-alive HTTP/1.1 (`gateway.upstream.http1`).

Retries (429, 5xx, connection failures) happen only before the first byte reaches the
caller, with bounded exponential back-off that honours a short ``Retry-After``. Certificate
and other TLS failures are not retried (they do not heal in a second) and are reported as
``upstream_tls_error``. Error messages name no URL: the caller gets a generic one, the log and
the operator the detail with credentials redacted (`gateway.upstream.faults`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import ssl
import time
from collections.abc import AsyncIterator

import aiohttp

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream import encoding
from gateway.upstream.faults import safe_url
from gateway.upstream.http1 import (
    ConnectTimeout,
    Http1Pool,
    TLSFiles,
    UpstreamClosed,
    UpstreamIdle,
    basic_auth,
)
from gateway.upstream.reply import UpstreamReply

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 4.0
_DROP_HEADERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"content-encoding",
        b"connection",
        b"keep-alive",
        b"server",
        b"date",
        b"content-type",
        b"set-cookie",
    }
)
# the gateway's own x-request-id (the call id) must stay the only one the caller sees
_RENAME_HEADERS = {b"x-request-id": b"x-upstream-request-id"}


class OpenAICompatClient:
    """The hot path's upstream client (`Http1Pool`); an aiohttp session for the few other calls."""

    def __init__(self) -> None:
        self.pool = Http1Pool()
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",), trust_env=True
            )
        return self._session

    async def close(self) -> None:
        self.pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        upstream: UpstreamConfig,
        path: str,
        body: bytes,
        caller_auth: bytes | None,
        traceparent: str | None = None,
        method: str = "POST",
    ) -> UpstreamReply:
        """POST ``body`` to ``upstream``'s ``path`` (or ``method``); the reply's body is not read yet.

        ``traceparent`` (W3C trace context) is sent along, so the upstream's spans join the caller's trace.
        """
        url = upstream.base_url.rstrip("/") + path  # type: ignore[union-attr]
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": encoding.ACCEPT_ENCODING,
            **upstream.headers,
        }
        key = os.environ.get(upstream.api_key_env) if upstream.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif caller_auth:
            headers["Authorization"] = caller_auth.decode("latin-1")
        elif "Authorization" not in headers and (basic := basic_auth(url)) is not None:
            headers["Authorization"] = basic
        tls = (
            TLSFiles(upstream.ca_file, upstream.cert_file, upstream.key_file)
            if upstream.ca_file or upstream.cert_file
            else None
        )
        where = safe_url(url)
        connect_timeout = min(10.0, upstream.timeout)
        if traceparent:
            headers["traceparent"] = traceparent
        waited = 0.0
        attempt = 0
        while True:
            try:
                status, resp_headers, chunks, conn = await self.pool.post(
                    url, body, headers, upstream.timeout, connect_timeout, tls, method
                )
            except ConnectTimeout as exc:
                raise UpstreamTimeout(
                    f"could not connect to the upstream within {connect_timeout:g}s",
                    code="upstream_connect_timeout",
                    detail=f"could not connect to {where} within {connect_timeout:g}s",
                ) from exc
            except UpstreamIdle as exc:
                raise UpstreamTimeout(
                    f"the upstream sent nothing for {upstream.timeout:g}s",
                    detail=f"upstream {where} did not answer within {upstream.timeout:g}s",
                ) from exc
            except ssl.SSLError as exc:  # before OSError: certificate failures are not retried
                raise UpstreamError(
                    "TLS with the upstream failed (certificate or handshake)",
                    code="upstream_tls_error",
                    detail=f"TLS with {where} failed: {exc.__class__.__name__}: {exc}",
                ) from exc
            except (OSError, UpstreamClosed, ValueError) as exc:
                if attempt < upstream.retries:
                    waited += await _backoff(attempt, None)
                    attempt += 1
                    continue
                raise UpstreamError(
                    "the upstream could not be reached",
                    detail=f"cannot reach upstream {where}: {exc.__class__.__name__}: {exc}",
                ) from exc
            if status in RETRY_STATUSES and attempt < upstream.retries:
                conn.close()
                retry_after = next((v.decode() for k, v in resp_headers if k == b"retry-after"), None)
                waited += await _backoff(attempt, retry_after)
                attempt += 1
                continue
            content_type = next((v.decode("latin-1") for k, v in resp_headers if k == b"content-type"), "")
            stream: AsyncIterator[bytes] = chunks
            coding = encoding.content_encoding(resp_headers)
            if coding is not None:
                try:
                    decode = encoding.decoder(coding)
                except encoding.UnsupportedEncoding as exc:
                    conn.close()
                    raise UpstreamError(
                        "the upstream's answer is in an encoding the gateway cannot decode",
                        code="upstream_bad_encoding",
                        detail=f"upstream {where}: {exc}",
                    ) from exc
                if decode is not None:
                    stream = encoding.decoded(chunks, decode)
            return UpstreamReply(
                status=status,
                content_type=content_type or "application/json",
                headers=[(_RENAME_HEADERS.get(k, k), v) for k, v in resp_headers if k not in _DROP_HEADERS],
                chunks=_mapped(stream, where, upstream.timeout),
                waited_s=waited,
                _close=conn.close,
                _complete=functools.partial(getattr, conn, "complete"),
            )


async def _mapped(chunks: AsyncIterator[bytes], url: str, timeout: float) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except UpstreamIdle as exc:
        raise UpstreamTimeout(
            f"the upstream stalled for more than {timeout:g}s",
            detail=f"upstream {url} stalled for more than {timeout:g}s",
        ) from exc
    except UpstreamClosed as exc:
        raise UpstreamError(
            "the upstream broke off its answer",
            code="upstream_broke_off",
            detail=f"upstream {url} broke off: {exc}",
        ) from exc
    except encoding.UnsupportedEncoding as exc:
        raise UpstreamError(
            "the upstream's compressed answer does not decode",
            code="upstream_bad_encoding",
            detail=f"upstream {url}: {exc}",
        ) from exc


async def _backoff(attempt: int, retry_after: str | None) -> float:
    delay = min(MAX_BACKOFF_S, 0.1 * 2**attempt) * (0.5 + random.random() / 2)
    if retry_after:
        with contextlib.suppress(ValueError):
            delay = min(MAX_BACKOFF_S, max(delay, float(retry_after)))
    start = time.perf_counter()
    await asyncio.sleep(delay)
    return time.perf_counter() - start
