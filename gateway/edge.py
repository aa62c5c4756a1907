"""The edge: what a request must pass before any handler sees it.

`Edge.refusal` runs once per request, on its headers only:

``Host``
    Where the gateway admits callers by their network address instead of a key, the
    ``Host`` header must name one of ``server.allowed_hosts`` (loopback names by default):
    against DNS rebinding, where a web page on ``evil.example`` re-resolves its own name to
    127.0.0.1 and reaches the gateway from the browser. That is a loopback client of the
    admin API or the review pages without ``server.admin_token`` (other clients are refused
    there anyway), and the whole API in open mode when the gateway listens on a loopback
    address. A request without ``Host`` (not a browser) passes. Refused: 400
    ``host_not_allowed``.
``Content-Length``
    A declared body over ``server.max_body_bytes`` is refused (413) before a byte of it is
    read, and the connection is closed (the hot path does the same itself, and logs it).
operational endpoints
    ``/metrics``, ``/docs``, ``/redoc``, ``/openapi.json`` answer loopback clients (with an
    allowed ``Host``) and the admin token, unless ``server.public_endpoints`` names them
    (403 ``endpoint_not_public``); the ``/readyz`` detail follows the same rule
    (`gateway.api.health`).

`Edge.guard` wraps ``receive`` while the body comes in: the whole body within
``server.body_timeout_s`` of the first read (else 408 and close) and at most
``max_body_bytes`` of it (413). The slow-*headers* half of slowloris is the HTTP
protocol's (`gateway.server`): no ASGI code runs before the headers are complete.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.config import Settings
from gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]

PROBES = frozenset({"/healthz", "/readyz"})
OPERATIONAL = {
    "/metrics": "metrics",
    "/docs": "docs",
    "/docs/oauth2-redirect": "docs",
    "/redoc": "docs",
    "/openapi.json": "docs",
}
_NETWORK_TRUSTED = ("/admin", "/review")


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped), ``localhost``; Starlette's test client counts too."""
    a = address.lower().removeprefix("::ffff:")
    return a.startswith("127.") or a in ("::1", "localhost", "testclient")


def host_name(value: str) -> str:
    """The name in a ``Host`` header: port and a trailing dot dropped, brackets off an IPv6 literal."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else v
    if v.count(":") == 1:
        v = v.partition(":")[0]
    return v.rstrip(".")


class HostMatcher:
    """``server.allowed_hosts``: exact names, ``*.example.com`` (subdomains), or ``*`` (any)."""

    def __init__(self, patterns: list[str]) -> None:
        self.any = "*" in patterns
        self.exact = frozenset(host_name(p) for p in patterns if not p.startswith("*"))
        self.suffixes = tuple(p[1:].lower().rstrip(".") for p in patterns if p.startswith("*."))

    def __call__(self, name: str) -> bool:
        return self.any or name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def cross_origin(scope: Scope) -> bool:
    """The browser says this request comes from another site: ``Sec-Fetch-Site`` other than
    same-origin/none, or an ``Origin`` (``null`` included) that is not this request's ``Host``.
    Clients that are not browsers send neither and are not cross-origin."""
    site = header(scope, b"sec-fetch-site")
    if site is not None and site.lower() not in (b"same-origin", b"none"):
        return True
    origin = header(scope, b"origin")
    if origin is None:
        return False
    netloc = urlsplit(origin.decode("latin-1")).netloc.lower() if origin != b"null" else ""
    return netloc != (header(scope, b"host") or b"").decode("latin-1").strip().lower()


def parse_json(body: bytes) -> Any:
    """A request body as JSON (orjson: UTF-8 only, no lone surrogates, nesting at most 1024 deep)."""
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


class Edge:
    """The per-request checks of one worker, built from the settings once."""

    def __init__(self, settings: Settings, auth: Any) -> None:
        srv = settings.server
        self.allowed = HostMatcher(srv.allowed_hosts)
        self.public = frozenset(srv.public_endpoints)
        self.admin_token = srv.admin_token.get_secret_value().encode() if srv.admin_token else None
        self.loopback_bind = is_loopback(srv.host)
        self.max_body = srv.max_body_bytes
        self.body_timeout = srv.body_timeout_s
        self.auth = auth
        self._hosts: dict[bytes, bool] = {}  # raw Host header -> allowed (the request path's cache)
        self._sweeper: _Sweeper | None = None

    # -- who is asking ------------------------------------------------------------------
    def host_allowed(self, scope: Scope) -> bool:
        value = header(scope, b"host")
        if value is None:
            return True
        known = self._hosts.get(value)
        if known is None:
            known = self.allowed(host_name(value.decode("latin-1")))
            if len(self._hosts) < 1000:
                self._hosts[value] = known
        return known

    def local(self, scope: Scope) -> bool:
        """A loopback client that names an allowed host (what loopback trust may rely on)."""
        return self._loopback_client(scope) and self.host_allowed(scope)

    @staticmethod
    def _loopback_client(scope: Scope) -> bool:
        client = scope.get("client")
        return client is not None and is_loopback(str(client[0]))

    def admin(self, scope: Scope) -> bool:
        """The request carries ``Authorization: Bearer <server.admin_token>``."""
        if self.admin_token is None:
            return False
        scheme, _, given = (header(scope, b"authorization") or b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.admin_token)

    def trusted(self, scope: Scope) -> bool:
        """Loopback (with an allowed ``Host``) or the admin token: who sees operational detail."""
        return self.local(scope) or self.admin(scope)

    # -- the checks ---------------------------------------------------------------------
    def refusal(self, scope: Scope, *, hot: bool) -> GatewayError | None:
        """Why this request is refused on its headers alone, or None. ``hot``: the hot path, which
        checks ``Content-Length`` itself (and logs the refusal)."""
        if hot:  # the request path: only the open-mode Host rule applies (it checks the size itself)
            if self.loopback_bind and self.auth.open and not self.host_allowed(scope):
                return self._bad_host(scope)
            return None
        path: str = scope["path"]
        if path.startswith(_NETWORK_TRUSTED):  # remote clients are refused there anyway (403)
            trusts_network = self.admin_token is None and self._loopback_client(scope)
        else:  # the API; probes and operational endpoints have their own rule
            trusts_network = (
                self.loopback_bind and path not in PROBES and path not in OPERATIONAL and self.auth.open
            )
        if trusts_network and not self.host_allowed(scope):
            return self._bad_host(scope)
        too_large = check_content_length(header(scope, b"content-length"), self.max_body)
        if too_large is not None:
            return too_large
        what = OPERATIONAL.get(path)
        if what is not None and what not in self.public and not self.trusted(scope):
            return Forbidden(
                f"{path} answers loopback clients and the admin token only "
                f"(add {what!r} to server.public_endpoints to serve it to everyone)",
                code="endpoint_not_public",
            )
        return None

    @staticmethod
    def _bad_host(scope: Scope) -> GatewayError:
        name = host_name((header(scope, b"host") or b"").decode("latin-1"))
        return InvalidRequest(
            f"Host {name[:100]!r} is not allowed: add it to server.allowed_hosts to reach the gateway by that name",
            code="host_not_allowed",
        )

    def guard(self, receive: Receive) -> Receive:
        sweeper = self._sweeper
        if sweeper is None:  # the first request of this worker: its event loop is running now
            sweeper = self._sweeper = _Sweeper(asyncio.get_running_loop(), self.body_timeout)
        return _BodyGuard(receive, sweeper, self.max_body)


def check_content_length(value: bytes | None, limit: int) -> GatewayError | None:
    """413 for a declared body over ``limit`` (the HTTP parser has already refused a malformed one)."""
    if value is None:
        return None
    try:
        declared = int(value)
    except ValueError:
        return InvalidRequest("Content-Length is not a number", code="invalid_content_length")
    if declared > limit:
        return PayloadTooLarge(f"request body over the {limit}-byte limit (Content-Length: {declared})")
    return None


class _BodyGuard:
    """``receive`` with a deadline and a size bound until the body is complete, then plain ``receive``.

    The deadline is ``body_timeout_s`` after the first read. A read after it is a 408; a
    read still waiting at it is cancelled by the worker's sweep (`_Sweeper`) and turned into
    a 408. No timer per request: the request path pays a clock read and a set insertion."""

    __slots__ = ("deadline", "done", "expired", "limit", "receive", "seen", "sweeper", "task")

    def __init__(self, receive: Receive, sweeper: _Sweeper, limit: int) -> None:
        self.receive = receive
        self.sweeper = sweeper
        self.limit = limit
        self.seen = 0
        self.done = False
        self.expired = False
        self.deadline = 0.0
        self.task: asyncio.Task[Any] | None = None

    async def __call__(self) -> dict[str, Any]:
        if self.done:
            return await self.receive()
        sweeper = self.sweeper
        now = sweeper.loop.time()
        if not self.deadline:
            self.deadline = now + sweeper.timeout
        elif now > self.deadline:
            self.done = True
            raise RequestTimeout("the request body did not arrive in time (server.body_timeout_s)")
        self.task = asyncio.current_task()
        sweeper.add(self)
        try:
            message = await self.receive()
        except asyncio.CancelledError:
            task = self.task
            if self.expired and task is not None and task.cancelling():
                task.uncancel()
                self.done = True
                raise RequestTimeout(
                    "the request body did not arrive in time (server.body_timeout_s)"
                ) from None
            raise
        finally:
            sweeper.waiting.discard(self)
            self.task = None
        if message["type"] != "http.request":
            self.done = True
            return message
        self.seen += len(message.get("body", b""))
        if self.seen > self.limit:
            self.done = True
            raise PayloadTooLarge(f"request body over the {self.limit}-byte limit")
        if not message.get("more_body"):
            self.done = True
        return message


class _Sweeper:
    """Cancels the body reads that are past their deadline, a few times per ``body_timeout_s``;
    armed only while some read is waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.interval = min(1.0, timeout / 4)
        self.waiting: set[_BodyGuard] = set()
        self.armed = False

    def add(self, guard: _BodyGuard) -> None:
        self.waiting.add(guard)
        if not self.armed:
            self.armed = True
            self.loop.call_later(self.interval, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        for guard in [g for g in self.waiting if now > g.deadline]:
            self.waiting.discard(guard)
            guard.expired = True
            if guard.task is not None:
                guard.task.cancel()
        self.armed = bool(self.waiting)
        if self.armed:
            self.loop.call_later(self.interval, self.sweep)


__all__ = [
    "Edge",
    "HostMatcher",
    "check_content_length",
    "host_name",
    "is_loopback",
    "parse_json",
]
