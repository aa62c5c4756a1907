"""Stored responses of the Responses API: retrieve, delete, input items, cancel.

=======================================  ==================================================
``GET /v1/responses/{id}``               retrieve (``include``, ``stream``, ``starting_after``)
``DELETE /v1/responses/{id}``            delete
``GET /v1/responses/{id}/input_items``   list input items (``after``, ``before``, ``limit``
                                         1-100, ``order`` asc/desc, ``include``)
``POST /v1/responses/{id}/cancel``       cancel a background response
=======================================  ==================================================

Each goes to the upstream that created the response — the route, variant and upstream that
`gateway.responses.ResponseOrigins` noted when the gateway served it, shared by every worker
and replica through the state backend — whatever the route's state is now (a response the
candidate created is read from the candidate after a rollback too). The ``/v1`` prefix is
optional, as on the hot path.

* An id the gateway did not serve (or whose memory expired, ``store.response_ids_days``), one
  it deleted, and one created under another client key answer 404 in OpenAI's shape
  (``Response with id '...' not found.``): one caller cannot read, delete or cancel another's
  responses through the gateway's shared provider key. In zero-config mode (``--upstream``) an
  id the gateway does not know is sent to that one upstream, which is the only one that can know
  it (responses created before the gateway was put in front).
* Authentication is the hot path's (client keys, open mode), and so are the edge's rules
  (``Host`` allow-list in open mode, body limits and deadlines). Query parameters are checked
  (400 on a bad ``limit``, ``order``, ``stream`` or ``starting_after``) and re-encoded.
* Upstream answers are relayed (a streamed retrieve event by event); upstream errors keep or get
  OpenAI's shape; faults answer a generic 502/504 with the request id, the detail (credentials
  redacted) goes to the gateway's log on stderr.

These requests are **not logged in the call log**: its rows are model calls, which training,
evals and the controller count. A retrieve hands back an answer already logged under the call
that created it (same ``response_id``), so a row per retrieve would count the output, its cost
and its errors twice; a delete or a cancel produces no model output. (A ``background: true``
response's row holds what the upstream answered at creation, its queued state.)
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from gateway.protocol import sse
from gateway.protocol.errors import as_openai_error
from gateway.store.ids import new_id
from gateway.upstream import faults
from gateway.upstream import litellm as litellm_upstream

if TYPE_CHECKING:
    from gateway.config import UpstreamConfig
    from gateway.hotpath import HotPath, Receive, Scope, Send
    from gateway.upstream.reply import UpstreamReply

log = logging.getLogger("shadowtune")

_PATH = re.compile(r"/(?:v1/)?responses/([^/]+)(/input_items|/cancel)?/?")
_OPS = {
    ("", "GET"): "retrieve",
    ("", "DELETE"): "delete",
    ("/input_items", "GET"): "input_items",
    ("/cancel", "POST"): "cancel",
}
_ALLOW = {"": b"GET, DELETE", "/input_items": b"GET", "/cancel": b"POST"}
_JSON = (b"content-type", b"application/json")
_MAX_BODY = 65536


def match(path: str) -> tuple[str, str] | None:
    """``(response id, suffix)`` when ``path`` names a stored response, else None."""
    found = _PATH.fullmatch(path)
    if found is None:
        return None
    return found[1], found[2] or ""


class StoredResponses:
    """The plain ASGI handler of the four paths, on the hot path's upstream clients."""

    def __init__(self, hot: HotPath) -> None:
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send, target: tuple[str, str]) -> None:
        request_id = new_id("req")
        t0 = time.perf_counter()
        response_id, suffix = target
        op = _OPS.get((suffix, scope["method"]))
        try:
            if op is None:
                allow = _ALLOW[suffix]
                err = MethodNotAllowed(f"{scope['method']} is not allowed here; use {allow.decode()}")
                await _send_error(send, err, request_id, [(b"allow", allow)])
                return
            await self._serve(scope, receive, send, op, response_id, request_id, t0)
        except GatewayError as exc:
            if exc.status >= 500:
                log.warning(
                    "%s of stored response %s failed (%s): %s",
                    op,
                    response_id[:100],
                    request_id,
                    faults.log_message(exc),
                )
            await _send_error(send, exc, request_id)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        op: str,
        response_id: str,
        request_id: str,
        t0: float,
    ) -> None:
        headers = dict(scope["headers"])
        client_key = self.hot.auth.check(headers.get(b"authorization"))
        caller = headers.get(b"authorization") if client_key is None else None
        body = await _read_body(receive)
        if body.strip() and faults.invalid_json(body):
            raise InvalidRequest("the request body must be a JSON object (or empty)")
        query = _query(scope.get("query_string", b""), op)
        name, upstream = await self._where(response_id, client_key)
        reply = await self._open(name, upstream, op, response_id, query, body, caller)
        try:
            await self._relay(send, reply, request_id, t0)
        finally:
            reply.close()
        if op == "delete" and reply.status < 300:
            await self.hot.origins.forget(response_id)

    async def _where(self, response_id: str, client_key: str | None) -> tuple[str, UpstreamConfig]:
        """The upstream that created ``response_id`` (name, config); 404 when there is none."""
        origin = await self.hot.origins.origin(response_id)
        if origin is not None and origin.get("key") is not None and origin["key"] != client_key:
            origin = None  # another caller's response: as good as unknown
        missing = NotFound(f"Response with id '{response_id[:200]}' not found.")
        missing.code = None  # type: ignore[assignment]  # OpenAI's own 404 for an unknown id has no code
        passthrough = self.hot.passthrough
        if origin is None:
            if passthrough is None:
                raise missing
            return "passthrough", passthrough
        name = str(origin.get("upstream"))
        if name == "passthrough":
            if passthrough is None:
                raise missing
            return name, passthrough
        upstream = self.hot.routes.snapshot.upstreams.get(name)
        if upstream is None:
            log.warning(
                "stored response %s: its upstream %r is no longer configured", response_id[:100], name
            )
            raise missing
        return name, upstream

    async def _open(
        self,
        name: str,
        upstream: UpstreamConfig,
        op: str,
        response_id: str,
        query: list[tuple[str, str]],
        body: bytes,
        caller: bytes | None,
    ) -> UpstreamReply:
        if not upstream.fast_path:
            return await litellm_upstream.stored(upstream, op, response_id, query)
        path = f"/responses/{quote(response_id, safe='')}"
        path += {"input_items": "/input_items", "cancel": "/cancel"}.get(op, "")
        if query:
            path += "?" + urlencode(query)
        method = {"retrieve": "GET", "input_items": "GET", "delete": "DELETE"}.get(op, "POST")
        return await self.hot.client.send(
            upstream, path, body, caller if name == "passthrough" else None, None, method=method
        )

    async def _relay(self, send: Send, reply: UpstreamReply, request_id: str, t0: float) -> None:
        status = reply.status
        if reply.is_stream and status < 400 and reply.chunks is not None:
            head = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": _ids(head, request_id, t0)})
            try:
                async for chunk in reply.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except GatewayError as exc:  # broke off midway: one SSE error event, then a clean close
                log.warning("stored response stream failed (%s): %s", request_id, faults.log_message(exc))
                event = sse.event(faults.public_body(exc, request_id))
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        data = await reply.read()
        if status < 400 and faults.invalid_json(data):
            raise faults.invalid_answer(data, reply.content_type)
        if status >= 400:
            data = as_openai_error(data, status, clean=faults.redact)
            if status >= 500:
                log.warning("stored response: the upstream answered %d (%s)", status, request_id)
        headers = _ids([_JSON, *reply.headers], request_id, t0)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def _query(raw: bytes, op: str) -> list[tuple[str, str]]:
    """The query parameters, checked where OpenAI defines them (400), to be re-encoded."""
    try:
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, max_num_fields=100)
    except ValueError as exc:
        raise InvalidRequest(f"the query string is malformed: {exc}") from None
    for key, value in pairs:
        if op == "input_items" and key == "limit":
            if not value.isdigit() or len(value) > 3 or not 1 <= int(value) <= 100:
                raise InvalidRequest("'limit' must be an integer from 1 to 100", param="limit")
        elif op == "input_items" and key == "order" and value not in ("asc", "desc"):
            raise InvalidRequest("'order' must be 'asc' or 'desc'", param="order")
        elif op == "retrieve" and key == "stream" and value not in ("true", "false"):
            raise InvalidRequest("'stream' must be true or false", param="stream")
        elif op == "retrieve" and key == "starting_after" and (not value.isdigit() or len(value) > 18):
            raise InvalidRequest("'starting_after' must be a non-negative integer", param="starting_after")
    return pairs


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise PayloadTooLarge(f"request body over the {_MAX_BODY}-byte limit of this endpoint")
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _ids(headers: list[tuple[bytes, bytes]], request_id: str, t0: float) -> list[tuple[bytes, bytes]]:
    overhead = f"{(time.perf_counter() - t0) * 1000:.3f}".encode()
    return [*headers, (b"x-request-id", request_id.encode()), (b"x-shadowtune-overhead-ms", overhead)]


async def _send_error(
    send: Send, exc: GatewayError, request_id: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [_JSON, (b"x-request-id", request_id.encode()), *(extra or ())]
    if exc.close_connection:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": faults.public_body(exc, request_id)})


__all__ = ["StoredResponses", "match"]
