"""What every review page shares: access, CSRF, rendering, the process's store, form posts.

Access is the admin API's: with ``server.admin_token`` set, ``Authorization: Bearer
<token>``, or ``?token=<token>`` once, which sets an HttpOnly cookie for ``/review``
(holding an HMAC of the token, never the token); without a token, loopback clients that
name an allowed ``Host`` only (``server.allowed_hosts``, against DNS rebinding).

Every form post must be same-origin (``Origin`` / ``Sec-Fetch-Site``, `gateway.edge`) and
carry the CSRF token: each page with forms sets a random ``shadowtune_csrf`` cookie
(HttpOnly, SameSite=Strict) and puts the same value in a hidden ``csrf`` field; a post whose
field does not match the cookie is refused (403 ``csrf_failed``). No server-side state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import jinja2
import orjson
from fastapi import Request
from fastapi.responses import HTMLResponse

from gateway import __version__
from gateway.edge import cross_origin
from gateway.errors import Forbidden, InvalidRequest, Unauthorized
from gateway.store import SCHEMA_VERSION, LogStore
from gateway.store.ids import new_id
from gateway.web._snapshot import Snapshots
from gateway.web._store import Cached, SharedStore

COOKIE = "shadowtune_review"
CSRF_COOKIE = "shadowtune_csrf"
MAX_FORM = 400_000
HERE = Path(__file__).parent
_CSRF = re.compile(r"[A-Za-z0-9_-]{43}")

T = TypeVar("T")


# -- access -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reviewer:
    who: str
    set_cookie: str | None = None  # cookie value to set on the response (token given in the query)


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"shadowtune-review-cookie", hashlib.sha256).hexdigest()


def reviewer(request: Request) -> Reviewer:
    token = request.app.state.ctx.settings.server.admin_token
    if token is None:
        if not request.app.state.ctx.edge.local(request.scope):
            raise Forbidden("the review pages need server.admin_token to be reached from another host")
        return Reviewer("local")
    secret = token.get_secret_value()
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), secret.encode()):
        return Reviewer("admin")
    expected = _cookie_value(secret)
    if hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), expected.encode()):
        return Reviewer("admin")
    if hmac.compare_digest(request.query_params.get("token", "").encode(), secret.encode()):
        return Reviewer("admin", set_cookie=expected)
    raise Unauthorized(
        "the review pages need the admin token (Authorization: Bearer, or ?token= once)",
        code="invalid_admin_token",
    )


def same_origin(request: Request) -> None:
    """Refuse cross-site form posts (the cookie, or loopback trust, must not be usable by other sites)."""
    if cross_origin(request.scope):
        raise Forbidden("cross-origin form posts are not accepted", code="cross_origin")


def check_csrf(request: Request, fields: dict[str, str]) -> None:
    """The form's ``csrf`` field must be this browser's ``shadowtune_csrf`` cookie."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = fields.get("csrf", "")
    if not _CSRF.fullmatch(cookie) or not hmac.compare_digest(given.encode(), cookie.encode()):
        raise Forbidden(
            "the form's CSRF token is missing or does not match: reload the page and try again",
            code="csrf_failed",
        )


def _csrf(request: Request) -> tuple[str, bool]:
    """This browser's CSRF token, and whether it is new (then the page sets the cookie)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if _CSRF.fullmatch(current):
        return current, False
    return secrets.token_urlsafe(32), True


async def form(request: Request) -> tuple[Reviewer, dict[str, list[str]]]:
    """Check access, origin and CSRF and read the urlencoded form (every value of each field)."""
    who = reviewer(request)
    same_origin(request)
    body = await request.body()
    if len(body) > MAX_FORM:
        raise InvalidRequest("the form is too large")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise InvalidRequest("the form is not valid UTF-8") from None
    check_csrf(request, {k: v[-1] for k, v in fields.items()})
    return who, fields


# -- rendering --------------------------------------------------------------------------
def _ts(us: int | None) -> str:
    if us is None:
        return "—"
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    sign, value = ("-" if value < 0 else ""), abs(value)
    return f"{sign}${value:.4f}" if value < 1 else f"{sign}${value:,.2f}"


def _num(value: object) -> str:
    """Numbers as ``%g`` (``20`` and ``20.0`` alike), anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def _epoch(value: float | None) -> str:
    return "—" if value is None else _ts(int(value * 1e6))


env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(ts=_ts, ms=ms, pct=pct, usd=_usd, epoch=_epoch, num=_num)


def page(
    request: Request, who: Reviewer, template: str, *, forms: bool = False, **context: Any
) -> HTMLResponse:
    """Render a page; ``forms``: it has forms that post, so it carries the CSRF token (and cookie)."""
    csrf, new = _csrf(request) if forms else ("", False)
    html = env.get_template(template).render(who=who.who, version=__version__, csrf=csrf, **context)
    response = HTMLResponse(html, headers={"cache-control": "no-store", "x-frame-options": "DENY"})
    if who.set_cookie:
        response.set_cookie(COOKIE, who.set_cookie, path="/review", httponly=True, samesite="strict")
    if new:
        response.set_cookie(CSRF_COOKIE, csrf, path="/review", httponly=True, samesite="strict")
    return response


# -- the store ---------------------------------------------------------------------------
def shared(request: Request) -> SharedStore:
    """This process's `SharedStore` (made on first use)."""
    return shared_of(request.app.state)


def shared_of(state: Any) -> SharedStore:
    store: SharedStore | None = getattr(state, "review_store", None)
    if store is None:
        cfg = state.ctx.settings.store
        store = state.review_store = SharedStore(
            cfg.log_dir, wal_dir=cfg.wal_dir, max_tail_bytes=cfg.tail_read_max_mb * 2**20
        )
    return store


def background(request: Request) -> SharedStore:
    """A second store for the cached aggregates, so their minutes never queue the other pages."""
    return background_of(request.app.state)


def background_of(state: Any) -> SharedStore:
    store: SharedStore | None = getattr(state, "review_background_store", None)
    if store is None:
        cfg = state.ctx.settings.store
        store = state.review_background_store = SharedStore(
            cfg.log_dir, wal_dir=cfg.wal_dir, max_age=10.0, max_tail_bytes=cfg.tail_read_max_mb * 2**20
        )
    return store


def cache(request: Request) -> Cached:
    return cache_of(request.app.state)


def cache_of(state: Any) -> Cached:
    found: Cached | None = getattr(state, "review_cache", None)
    if found is None:
        found = state.review_cache = Cached(snapshots=Snapshots(state.ctx.settings.store.log_dir))
    return found


async def read(request: Request, fn: Callable[[LogStore], T]) -> T:
    return await shared(request).read(fn)


def event(
    call_id: str,
    kind: str,
    value: str | None,
    who: Reviewer,
    *,
    comment: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``events`` row posted by a reviewer (``source = 'reviewer'``, kept out of user outcomes)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": new_id("evt"),
        "call_id": call_id,
        "ts": time.time_ns() // 1000,
        "kind": kind,
        "value": value,
        "value_num": None,
        "comment": comment,
        "user": None,
        "source": "reviewer",
        "data": orjson.dumps({"reviewer": who.who, **(data or {})}).decode(),
        "client_key": None,
        "key_id": None,
        "reviewer": who.who,
    }


def append(request: Request, record: dict[str, Any]) -> None:
    """Write a reviewer's event through the gateway's writer; the next read sees it."""
    request.app.state.ctx.writer.append("events", record)
    shared(request).touch()  # (the dashboard's cache stays: reviewers' events are not in its numbers)


def is_error(row: dict[str, Any]) -> bool:
    return bool((row.get("status") or 0) >= 400 or row.get("error_type"))


def safe_back(url: str, default: str) -> str:
    """A redirect target from a form: a path under ``/review`` only (never another site)."""
    if url.startswith("/review") and not url.startswith("//") and "\\" not in url and "\n" not in url:
        return url
    return default
