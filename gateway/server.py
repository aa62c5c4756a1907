"""How the gateway is served: uvicorn (uvloop + httptools) with the HTTP protocol hardened.

uvicorn reads a request's headers with no time limit and no size limit (httptools has
none), and it answers a request it cannot parse with a plain-text 400. `GatewayProtocol`
adds, per connection:

- a **header timeout** (``server.header_timeout_s``): from a request's first byte to the
  end of its headers; then 408 and close. A new connection that sends nothing is closed
  silently after ``server.keep_alive_timeout_s``, like an idle keep-alive one (uvicorn
  would keep it forever; browsers open spare connections they use later).
- a **header size limit** (``server.max_header_bytes``): 431 and close.
- **OpenAI-shaped** answers to requests the parser refuses (a malformed request line, a
  bad or duplicated ``Content-Length``, a control character in a header): 400
  ``invalid_http_request`` and close.
- an answer's status line and headers **in one write with its first body bytes**
  (`gateway.coalesce`): one ``send()`` and one wake-up of the client instead of two.

What uvicorn and httptools still answer themselves: nothing, for the cases above. A
header *value* with bytes over 0x7f is valid HTTP (obs-text) and reaches the gateway,
which reads headers as latin-1. Idle keep-alive connections close after
``server.keep_alive_timeout_s``; the body's own deadline and size are checked in the
ASGI app (`gateway.edge`), where the refusal can be logged.

`uvicorn_options` is the one place the server's options are set: ``shadowtune serve`` and
the tests' in-process server use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.coalesce import HeadWithBody
from gateway.config import ServerConfig, Settings
from gateway.errors import error_body

PROTOCOL = "gateway.server:GatewayProtocol"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` (no host, port or app)."""
    return {
        "loop": "uvloop",
        "http": PROTOCOL,
        "ws": "none",  # no WebSocket endpoint: an Upgrade request is served as plain HTTP
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "timeout_keep_alive": settings.server.keep_alive_timeout_s,
        "timeout_graceful_shutdown": 10,
    }


def _server_settings(app: Any) -> Any:
    """The settings of the app uvicorn serves (through any middleware uvicorn wrapped it in)."""
    for _ in range(8):
        ctx = getattr(app, "ctx", None)
        if ctx is not None:
            return ctx.settings.server
        app = getattr(app, "app", None)
        if app is None:
            break
    return ServerConfig()


class _Refused(httptools.HttpParserError):
    """Raised from a parser callback to stop parsing a request already answered."""


class GatewayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size limit and JSON 400s.

    A connection is *idle* (nothing of a request yet), reading *headers*, *busy* (a request
    is being answered), or *draining* (the rest of the body of a request already answered).
    Idle: closed silently after ``keep_alive_timeout_s`` (uvicorn's own keep-alive timer
    covers the time after an answer). The first byte of anything while idle starts the
    header deadline, even bytes that begin no request, and the deadline also bounds a
    drain: uvicorn cancels its keep-alive timer on any byte and would keep such a
    connection forever."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        srv = _server_settings(self.app)
        self.header_timeout: float = srv.header_timeout_s
        self.max_header_bytes: int = srv.max_header_bytes
        self._timer: asyncio.TimerHandle | None = None
        self._phase = "idle"
        self._in_message = False  # the parser is between a request's first byte and its end
        self._header_bytes = 0  # bytes received while the headers were incomplete
        self._header_size = 0  # size of the request line and headers parsed so far

    # -- the header deadline ------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.timeout_keep_alive)  # a new connection that says nothing: idle, not slow

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle":  # the first byte since the connection opened or the last answer
            self._phase = "draining" if self._in_message else "headers"
            self._header_bytes = 0
            self._arm(self.header_timeout)
        super().data_received(data)
        if self._phase == "headers" and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        self._header_size = 0
        if self._phase != "headers":  # pipelined behind a request being answered, or after a drain
            self._phase = "headers"
            self._header_bytes = 0
            self._arm(self.header_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_message = False
        if self._phase == "draining":  # the answered request's body is in: idle again
            self._phase = "idle"
            self._arm(self.timeout_keep_alive)

    def on_url(self, url: bytes) -> None:
        self._header_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        size, self._header_size = self._header_size, 0
        self._phase = "busy"
        self._disarm()
        if size > self.max_header_bytes:
            self._too_large()
            raise _Refused("headers too large")  # stops the parser; uvicorn's handler finds it answered
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:
            # a new request's cycle: its answer's head goes out with the body's first bytes
            self.cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts a pipelined request, or arms the keep-alive timer
        if self.cycle is None or self.cycle.response_complete:
            self._phase = "idle"

    def _arm(self, timeout: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase in ("idle", "draining"):
            self.transport.close()  # it never started a request, or never finished an answered one
        elif self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined request trickles in: close after this answer
        else:
            message = "the request headers did not arrive in time (server.header_timeout_s)"
            self._reject(408, message, "request_timeout")

    # -- size, and what the parser refuses ----------------------------------------------
    def _too_large(self) -> None:
        limit = self.max_header_bytes
        self._reject(
            431, f"the request line and headers are over the {limit}-byte limit", "headers_too_large"
        )

    def _unsupported_upgrade_warning(self) -> None:
        pass  # no WebSocket endpoint (``ws="none"``): an Upgrade header is ignored, the request served

    def send_400_response(self, msg: str) -> None:
        self._reject(
            400,
            "invalid HTTP request: malformed request line, header or body framing (Content-Length)",
            "invalid_http_request",
        )

    def _reject(self, status: int, message: str, code: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        body = error_body(message, "invalid_request_error", code=code)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
