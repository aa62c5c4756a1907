"""A lean HTTP/1.1 client for the hot path: asyncio protocols, httptools parsing, keep-alive pools.

Why not aiohttp or httpx here: on every production call, their request and response object
layers cost more CPU than the rest of the gateway together (measured with
``../shared/bench/peers.sh``; see ``docs/benchmarks.md``). This client does the one thing the
hot path needs: POST a JSON body to an upstream and hand back the status, the headers and an
async iterator of body chunks, as they arrive.

* One pool of idle connections per (scheme, host, port); a request takes one or opens one.
* A pooled connection the server closed while idle is detected (nothing received, connection
  lost) and the request is sent again once on a fresh connection; nothing was answered, so this
  is safe for a POST.
* Timeouts are idle timeouts: ``timeout`` seconds without a byte from the upstream.
* Back-pressure: reading from the upstream pauses while 64 chunks wait for a slow client.
* Proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, read
  once per pool as `urllib.request` reads them): an ``https`` upstream is reached through a
  ``CONNECT`` tunnel, TLS running end to end inside it; an ``http`` upstream gets its request in
  absolute form (``POST http://host/path``). Credentials in the proxy URL go in
  ``Proxy-Authorization``. Only ``http://`` proxies.
* TLS per upstream (`TLSFiles`): a private CA (``ca_file``) and a client certificate for mTLS
  (``cert_file``, ``key_file``); connections with different TLS settings are never shared.
* Interim answers (``100 Continue``, ``103 Early Hints``) are skipped for the final one; bytes
  on an idle connection (a ``408`` sent before closing it) retire it; an IPv6 host keeps its
  brackets in ``Host``.

What it lacks, by choice (its tests: ``tests/integration/test_http1_client.py``):

* HTTP/2 and HTTP/3, and pipelining: one exchange per connection at a time, so concurrency
  means connections (up to 256 idle ones kept per upstream; no cap on open ones).
* A total deadline: a stream that sends a byte within every ``timeout`` never times out here
  (the caller going away ends it).
* Redirects (a 3xx is the upstream's answer), cookies, request bodies streamed in pieces,
  ``Expect: 100-continue``, trailers (read and dropped), decompression (`gateway.upstream.
  encoding` decodes bodies), ``https://`` and SOCKS proxies, proxy settings changed after start.
* Retries beyond the one resend above: failures go to the caller's retry policy
  (`gateway.upstream.openai_compat`), which knows whether the call may be repeated.
* Its own expiry of idle connections: one is used until the server closes it, and a request
  that finds it closed unanswered is sent again once.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import NamedTuple
from urllib.parse import SplitResult, unquote, urlsplit

import httptools

_MAX_IDLE_PER_HOST = 256
_PAUSE_AT = 64


class UpstreamClosed(Exception):
    """The connection ended before a complete answer (``.answered``: whether any byte came back)."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class UpstreamIdle(Exception):
    """No byte from the upstream for ``timeout`` seconds."""


class ConnectTimeout(UpstreamIdle):
    """The TCP (or proxy, or TLS) connection was not up within the connect timeout."""


class ProxyRefused(OSError):
    """The proxy did not open the ``CONNECT`` tunnel."""


class TLSFiles(NamedTuple):
    """An upstream's TLS settings: private CA bundle, client certificate and key (mTLS)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


_Key = tuple[str, str, int, TLSFiles | None]


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_chunks", "_done", "_error", "_ev", "_has_length", "_headers_fut", "_idle_handle", "_interim", "_last",
        "_loop", "_paused", "_timeout", "answered", "closed", "headers", "keep_alive", "key", "parser",
        "status", "transport",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, key: _Key) -> None:
        self._loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._has_length = False
        self._headers_fut: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._ev: asyncio.Future[None] | None = None
        self._done = False
        self._interim = False
        self.answered = False
        self.keep_alive = True
        self._paused = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._error: Exception | None = None
        self._last = 0.0
        self._timeout = 0.0

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._headers_fut is None:
            # bytes while no request is in flight (a server's "408" on an idle keep-alive connection,
            # a server that speaks first): the connection is out of step, never to be used; parsed,
            # they would leave it "answered" and complete before the next request was even sent
            self.close()
            return
        self.answered = True
        self._last = self._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"malformed answer from the upstream: {exc}", True))
            self.close()
            return
        if len(self._chunks) >= _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done:
            return
        if self._headers_fut is not None and self._headers_fut.done() and not self._has_length:
            self._done = True  # a body delimited by the end of the connection
            self._wake()
            return
        reason = exc or "by the server"
        self._fail(UpstreamClosed(f"connection to the upstream closed ({reason})", self.answered))

    # -- httptools callbacks --------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in (b"content-length", b"transfer-encoding"):
            self._has_length = True
        self.headers.append((lname, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # an interim answer (100 Continue, 103 Early Hints): the final one follows on this
            # connection (RFC 9110 15.2: a client must read and skip them)
            self._interim = True
            self.headers = []
            self._has_length = False
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        fut = self._headers_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._done = True
        self._wake()

    # -- driving one exchange -------------------------------------------------------------
    def _wake(self) -> None:
        ev = self._ev
        if ev is not None and not ev.done():
            ev.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc  # sticky: seen by the body iterator even when it is not waiting right now
        for fut in (self._headers_fut, self._ev):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def _arm_idle(self) -> None:
        self._idle_handle = self._loop.call_at(self._last + self._timeout, self._check_idle)

    def _check_idle(self) -> None:
        if self._done or self.closed:
            return
        if self._loop.time() - self._last >= self._timeout:
            self._fail(UpstreamIdle(f"no answer from the upstream for {self._timeout:g}s"))
            self.close()
        else:
            self._arm_idle()

    async def request(self, head: bytes, body: bytes, timeout: float) -> None:
        """Send a request; returns when the status line and headers are in."""
        if self.closed:  # lost (or refused, above) since it was pooled or opened: nothing was sent
            raise UpstreamClosed("connection to the upstream closed before the request", False)
        self._headers_fut = self._loop.create_future()
        self._timeout = timeout
        self._last = self._loop.time()
        self._arm_idle()
        assert self.transport is not None
        self.transport.write(head + body)
        await self._headers_fut

    async def body(self) -> AsyncIterator[bytes]:
        """The answer's body, chunk by chunk; leaves the connection reusable or closed."""
        chunks = self._chunks
        try:
            while True:
                while chunks:
                    # what already arrived goes out together: one write downstream, no added wait
                    chunk = (
                        chunks.popleft()
                        if len(chunks) == 1
                        else b"".join([chunks.popleft() for _ in range(len(chunks))])
                    )
                    if self._paused and len(chunks) < _PAUSE_AT // 2 and self.transport is not None:
                        self._paused = False
                        self.transport.resume_reading()
                    yield chunk
                if self._done:
                    break
                if self._error is not None:
                    raise self._error
                self._ev = self._loop.create_future()
                await self._ev
                self._ev = None
        except BaseException:
            self.close()  # never reuse a half-read connection
            raise
        self.finish()

    @property
    def complete(self) -> bool:
        """The whole answer has arrived and every chunk was handed out."""
        return self._done and not self._chunks

    def finish(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if not self._done:
            self.close()

    def close(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Keep-alive connection pools for every upstream the hot path talks to."""

    def __init__(self, proxies: dict[str, str] | None = None) -> None:
        self._idle: dict[_Key, list[_Conn]] = {}
        self._ssl: dict[TLSFiles | None, ssl.SSLContext] = {}
        self.proxies = urllib.request.getproxies_environment() if proxies is None else proxies
        self._proxy_cache: dict[tuple[str, str], SplitResult | None] = {}

    def ssl_context(self, tls: TLSFiles | None) -> ssl.SSLContext:
        ctx = self._ssl.get(tls)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=tls.ca_file if tls else None)
            if tls is not None and tls.cert_file:
                ctx.load_cert_chain(tls.cert_file, tls.key_file)
            self._ssl[tls] = ctx
        return ctx

    def proxy_for(self, scheme: str, host: str) -> SplitResult | None:
        """The proxy for ``scheme://host`` under the environment's proxy settings, or None."""
        key = (scheme, host)
        if key in self._proxy_cache:
            return self._proxy_cache[key]
        proxy = self.proxies.get(scheme) or self.proxies.get("all")
        found = None
        if proxy and not urllib.request.proxy_bypass_environment(host, self.proxies):  # type: ignore[attr-defined]
            found = urlsplit(proxy if "://" in proxy else "http://" + proxy)
            if found.scheme != "http":
                raise ValueError(f"only http:// proxies are supported, not {found.scheme}://")
        self._proxy_cache[key] = found
        return found

    async def _connect(self, key: _Key) -> _Conn:
        loop = asyncio.get_running_loop()
        scheme, host, port, tls = key
        ctx = self.ssl_context(tls) if scheme == "https" else None
        proxy = self.proxy_for(scheme, host)
        if proxy is None:
            _, conn = await loop.create_connection(lambda: _Conn(loop, key), host, port, ssl=ctx)
            return conn
        phost, pport = proxy.hostname or "localhost", proxy.port or 80
        if ctx is None:  # plain http through a proxy: absolute-form requests on a proxy connection
            _, conn = await loop.create_connection(lambda: _Conn(loop, key), phost, pport)
            return conn
        raw, tunnel = await loop.create_connection(lambda: _Tunnel(loop), phost, pport)
        try:
            await tunnel.open(f"{host}:{port}", _proxy_auth(proxy))
            conn = _Conn(loop, key)
            transport = await loop.start_tls(raw, conn, ctx, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        assert transport is not None
        conn.connection_made(transport)
        return conn

    def _release(self, conn: _Conn) -> None:
        if conn.closed or not conn.keep_alive:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < _MAX_IDLE_PER_HOST:
            conn._reset()
            idle.append(conn)
        else:
            conn.close()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        connect_timeout: float,
        tls: TLSFiles | None = None,
        method: str = "POST",
    ) -> tuple[int, list[tuple[bytes, bytes]], AsyncIterator[bytes], _Conn]:
        """POST ``body`` (or ``method``: the stored-responses calls also GET and DELETE); returns
        (status, headers, body chunks, connection) once the headers are in."""
        (scheme, host, port), path, host_header = _target(url)
        key: _Key = (scheme, host, port, tls if scheme == "https" else None)
        proxy = self.proxy_for(scheme, host) if scheme == "http" else None
        if proxy is not None:
            path = f"http://{host_header}{path}"
            auth = _proxy_auth(proxy)
            if auth:
                headers = {**headers, "Proxy-Authorization": auth}
        head = _head(path, host_header, headers, len(body), method)
        for attempt in (0, 1):
            idle = self._idle.get(key)
            while idle and idle[-1].closed:
                idle.pop()
            reused = bool(idle)
            if idle:
                conn = idle.pop()
            else:
                try:
                    conn = await asyncio.wait_for(self._connect(key), connect_timeout)
                except TimeoutError:
                    raise ConnectTimeout(f"could not connect within {connect_timeout:g}s") from None
            try:
                await conn.request(head, body, timeout)
            except UpstreamClosed as exc:
                conn.close()
                if reused and not exc.answered and attempt == 0:
                    continue  # the server had closed this idle connection: send again, fresh
                raise
            except BaseException:
                conn.close()
                raise
            return conn.status, conn.headers, self._body(conn), conn
        raise AssertionError("unreachable")

    async def _body(self, conn: _Conn) -> AsyncIterator[bytes]:
        async for chunk in conn.body():
            yield chunk
        self._release(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _Tunnel(asyncio.Protocol):
    """The proxy's answer to ``CONNECT``; TLS to the upstream takes the connection over after it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buf = b""
        self._done: asyncio.Future[bytes] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\r\n\r\n" in self._buf and not self._done.done():
            self._done.set_result(self._buf)
        elif len(self._buf) > 65536 and not self._done.done():
            self._done.set_exception(ProxyRefused("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(ProxyRefused(f"the proxy closed the connection ({exc or 'no answer'})"))

    async def open(self, authority: str, auth: str | None) -> None:
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = await self._done
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise ProxyRefused(f"the proxy refused CONNECT {authority}: {status_line[:200]}")


def _proxy_auth(proxy: SplitResult) -> str | None:
    if proxy.username is None:
        return None
    pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def basic_auth(url: str) -> str | None:
    """``Authorization: Basic`` from credentials in ``url`` (``https://user:pw@host``), if any."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


_TARGETS: dict[str, tuple[tuple[str, str, int], str, str]] = {}


def _target(url: str) -> tuple[tuple[str, str, int], str, str]:
    cached = _TARGETS.get(url)
    if cached is not None:
        return cached
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url}")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
    name = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets (RFC 9112 3.2)
    host_header = name if default_port else f"{name}:{port}"
    out = ((scheme, host, port), path, host_header)
    if len(_TARGETS) < 1024:
        _TARGETS[url] = out
    return out


def _head(path: str, host: str, headers: dict[str, str], length: int, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {length}"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
