"""The request worker's link to the host's log agent (unix socket): proxy and reports.

* `AgentLink.forward` relays the pages that read the log or the host's telemetry
  (`AGENT_PATHS`: ``/metrics``, ``/review``, ``/admin/status``, ``/admin/flush``) to the
  agent, on the gateway's own port, so a scrape or a reviewer never needs to know that the
  agent exists. The caller's address goes along in ``x-shadowtune-client`` (the agent's
  loopback-only checks stay right). When the agent is down (being restarted) these answer
  503 in OpenAI's error shape; the request path is not affected.
* `AgentLink.report_loop` posts this worker's own numbers (WAL writer, shadow queue) to
  the agent once a second, and keeps the agent's answer (its store health) for ``/readyz``.

No pyarrow, DuckDB or OpenTelemetry here (the worker imports this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import aiohttp
import orjson

from gateway.errors import error_body

log = logging.getLogger("shadowtune.agent")

AGENT_PATHS = ("/metrics", "/review", "/admin/status", "/admin/flush")
_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade")
)
REPORT_EVERY_S = 1.0
AGENT_STALE_S = 5.0


def is_agent_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in AGENT_PATHS)


class AgentLink:
    def __init__(self, socket_path: str, ctx: Any) -> None:
        self.socket_path = socket_path
        self.ctx = ctx
        self.agent_status: dict[str, Any] | None = None
        self.agent_seen = 0.0
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(  # idle connections closed before the agent's 5 s keep-alive does
                    path=self.socket_path, limit=32, keepalive_timeout=2.0
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- proxy --------------------------------------------------------------------------
    async def forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        parts = []
        size, limit = 0, self.ctx.settings.server.max_body_bytes
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                await self._error(
                    send, 413, f"request body over the {limit}-byte limit", "invalid_request_error"
                )
                return
            if not message.get("more_body"):
                break
        client = scope.get("client") or ("", 0)
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k not in _HOP and k != b"x-shadowtune-client"
        ]
        headers.append(("x-shadowtune-client", f"{client[0]}:{client[1]}"))
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target = target + b"?" + scope["query_string"]
        url = "http://shadowtune-agent" + target.decode("latin-1")
        started = False
        try:
            for attempt in (0, 1):
                try:
                    async with self.session().request(
                        scope["method"],
                        url,
                        headers=headers,
                        data=b"".join(parts),
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=120, sock_connect=2),
                    ) as resp:
                        out = [(k, v) for k, v in resp.raw_headers if k.lower() not in _HOP]
                        started = True
                        await send({"type": "http.response.start", "status": resp.status, "headers": out})
                        async for chunk in resp.content.iter_any():
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        await send({"type": "http.response.body", "body": b""})
                    return
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                    # a pooled connection the agent had closed (broken pipe, seen under make fuzz):
                    # nothing was answered, so once more on a fresh one
                    if started or attempt == 1:
                        raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("log agent unreachable for %s: %r", scope["path"], exc)
            if started:  # the answer had begun: end it, a second one cannot follow
                await send({"type": "http.response.body", "body": b""})
                return
            message = "the log agent is not reachable (it is restarting); try again in a moment"
            await self._error(send, 503, message, "server_error", code="log_agent_unavailable")

    @staticmethod
    async def _error(send: Any, status: int, message: str, type_: str, code: str | None = None) -> None:
        headers = [(b"content-type", b"application/json")]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": error_body(message, type_, code=code)})

    # -- reports ------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        writer = self.ctx.writer
        shadow = self.ctx.shadow
        wal = writer.status()
        return {
            "writer_id": writer.writer_id,
            "pid": os.getpid(),
            "wal": {
                "appended": wal["appended"],
                "pending_in_memory": wal["pending_in_memory"],
                "pending_bytes": writer.pending_bytes,
                "dropped": wal["dropped"],
                "healthy": wal["healthy"],
                "last_error": wal["last_error"],
            },
            "shadow": {
                "depth": shadow.depth,
                "in_flight": shadow.in_flight,
                "skipped": [[route, reason, n] for (route, reason), n in list(shadow.skipped.items())],
            },
        }

    async def report_once(self) -> None:
        body = orjson.dumps(self.report())
        async with self.session().post(
            "http://shadowtune-agent/_agent/report",
            data=body,
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=5, sock_connect=1),
        ) as resp:
            if resp.status == 200:
                self.agent_status = orjson.loads(await resp.read())
                self.agent_seen = time.monotonic()

    async def report_loop(self) -> None:
        while True:
            # the agent may be starting or restarting: the WAL keeps everything meanwhile
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError):
                await self.report_once()
            await asyncio.sleep(REPORT_EVERY_S)

    def fresh_agent_status(self) -> dict[str, Any] | None:
        if self.agent_status is None or time.monotonic() - self.agent_seen > AGENT_STALE_S:
            return None
        return self.agent_status
