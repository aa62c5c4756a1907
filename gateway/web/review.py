"""The review pages: server-rendered HTML over the call log, under ``/review``.

``/review``
    dashboard: per route and variant over 24h/7d/30d (calls, error rate, p50/p95
    latency, thumbs-up rate, cost) and the live route states.
``/review/calls``
    the calls, newest first, filtered by route, variant, status, text, served only.
``/review/calls/{call_id}``
    one call: the conversation, the answer, its baseline/candidate siblings side by
    side, its outcome events; forms that POST a relabel, an exclusion or a thumb
    (``events`` rows with ``source = 'reviewer'`` and the reviewer in ``reviewer``) and
    redirect back (303). A reviewer's thumb is idempotent per (call, reviewer) at read time
    and is kept out of the user-outcome rates (``reviewer_thumbs_up/down`` apart).

Access is the admin API's: with ``server.admin_token`` set, ``Authorization: Bearer
<token>``, or ``?token=<token>`` once, which sets an HttpOnly cookie for ``/review``
(holding an HMAC of the token, never the token); without a token, loopback clients that
name an allowed ``Host`` only (``server.allowed_hosts``, against DNS rebinding).

Every form post must be same-origin (``Origin`` / ``Sec-Fetch-Site``) and carry the CSRF
token: each page sets a random ``shadowtune_csrf`` cookie (HttpOnly, SameSite=Strict) and
puts the same value in a hidden ``csrf`` field of its forms (the call page is the one with forms); a post whose field does not
match the cookie is refused (403 ``csrf_failed``). No server-side state: any worker checks it.

Every read opens its own `LogStore` in a worker thread (DuckDB blocks); writes go
through the gateway's `LogWriter`, so a relabel is visible on the next page load.
"""

from __future__ import annotations

import asyncio
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
from urllib.parse import parse_qs, quote, urlencode

import duckdb
import jinja2
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway import __version__
from gateway.edge import cross_origin
from gateway.errors import Forbidden, InvalidRequest, NotFound, Overloaded, Unauthorized
from gateway.signals.feedback import FeedbackError, validate_feedback
from gateway.store import SCHEMA_VERSION, LogStore
from gateway.store.ids import new_id
from gateway.web import _conversation as conv
from gateway.web import _queries as q

router = APIRouter(prefix="/review", include_in_schema=False)

COOKIE = "shadowtune_review"
CSRF_COOKIE = "shadowtune_csrf"
MAX_RELABEL = 100_000
MAX_PAGE = 1_000_000
_HERE = Path(__file__).parent
_CSRF = re.compile(r"[A-Za-z0-9_-]{43}")
_STATIC = {"review.css": "text/css; charset=utf-8", "review.js": "text/javascript; charset=utf-8"}
_DONE = {"relabel": "Relabel saved.", "exclude": "Excluded from datasets.", "thumbs": "Thumb recorded."}

T = TypeVar("T")


# -- access -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reviewer:
    who: str
    set_cookie: str | None = None  # cookie value to set on the response (token given in the query)


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"shadowtune-review-cookie", hashlib.sha256).hexdigest()


def _reviewer(request: Request) -> Reviewer:
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


def _same_origin(request: Request) -> None:
    """Refuse cross-site form posts (the cookie, or loopback trust, must not be usable by other sites)."""
    if cross_origin(request.scope):
        raise Forbidden("cross-origin form posts are not accepted", code="cross_origin")


def _check_csrf(request: Request, fields: dict[str, str]) -> None:
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


# -- rendering --------------------------------------------------------------------------
def _ts(us: int | None) -> str:
    if us is None:
        return "—"
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(ts=_ts, ms=_ms, pct=_pct, usd=_usd)


def _page(
    request: Request, reviewer: Reviewer, template: str, *, forms: bool = False, **context: Any
) -> HTMLResponse:
    """Render a page; ``forms``: it has forms that post, so it carries the CSRF token (and cookie)."""
    csrf, new = _csrf(request) if forms else ("", False)
    html = _env.get_template(template).render(who=reviewer.who, version=__version__, csrf=csrf, **context)
    response = HTMLResponse(html, headers={"cache-control": "no-store", "x-frame-options": "DENY"})
    if reviewer.set_cookie:
        response.set_cookie(COOKIE, reviewer.set_cookie, path="/review", httponly=True, samesite="strict")
    if new:
        response.set_cookie(CSRF_COOKIE, csrf, path="/review", httponly=True, samesite="strict")
    return response


async def _read(request: Request, fn: Callable[[LogStore], T]) -> T:
    store_cfg = request.app.state.ctx.settings.store

    def run() -> T:
        for attempt in range(3):  # a compaction may remove a file between listing and reading it
            try:
                with LogStore.open(store_cfg.log_dir, wal_dir=store_cfg.wal_dir) as store:
                    return fn(store)
            except duckdb.IOException:
                if attempt == 2:
                    raise Overloaded("the call log is being rewritten (compaction); try again") from None
        raise AssertionError("unreachable")

    return await asyncio.to_thread(run)


def _is_error(row: dict[str, Any]) -> bool:
    return bool((row.get("status") or 0) >= 400 or row.get("error_type"))


# -- pages ------------------------------------------------------------------------------
@router.get("")
async def dashboard(request: Request) -> Response:
    reviewer = _reviewer(request)
    period = request.query_params.get("period", "24h")
    if period not in q.PERIODS:
        period = "24h"
    stats = await _read(request, lambda s: q.dashboard(s, period))
    for row in stats:
        rated = row["thumbs_up"] + row["thumbs_down"]
        row["thumbs_rate"] = row["thumbs_up"] / rated if rated else None
    snap = request.app.state.ctx.routes.snapshot
    routes = [state.public() for _, state in sorted(snap.routes.items())]
    return _page(
        request,
        reviewer,
        "dashboard.html",
        nav="dashboard",
        period=period,
        periods=list(q.PERIODS),
        stats=stats,
        routes=routes,
        routes_version=snap.version,
    )


@router.get("/calls")
async def calls(request: Request) -> Response:
    reviewer = _reviewer(request)
    params = request.query_params
    try:
        page = max(1, int(params.get("page", "1")))
    except ValueError:
        raise InvalidRequest("page must be a whole number", param="page") from None
    if page > MAX_PAGE:
        raise InvalidRequest(f"page must be between 1 and {MAX_PAGE}", param="page")
    flt = q.CallFilter(
        route=params.get("route", ""),
        variant=params.get("variant", ""),
        status=params.get("status", "") if params.get("status") in ("ok", "error") else "",
        q=params.get("q", "").strip(),
        served=params.get("served", "") not in ("", "0", "false"),
        page=page,
    )

    def read(store: LogStore) -> tuple[list[dict[str, Any]], bool, dict[str, list[str]]]:
        rows, has_next = q.list_calls(store, flt)
        return rows, has_next, q.facets(store)

    rows, has_next, facets = await _read(request, read)
    for row in rows:
        row["summary"] = conv.last_user_text(row.pop("request"))
        row["is_error"] = _is_error(row)
    return _page(
        request,
        reviewer,
        "calls.html",
        nav="calls",
        f=flt,
        rows=rows,
        facets=facets,
        has_next=has_next,
        prev_url=_calls_url(flt, flt.page - 1),
        next_url=_calls_url(flt, flt.page + 1),
    )


def _calls_url(flt: q.CallFilter, page: int) -> str:
    query = {"route": flt.route, "variant": flt.variant, "status": flt.status, "q": flt.q}
    query = {k: v for k, v in query.items() if v}
    if flt.served:
        query["served"] = "1"
    if page > 1:
        query["page"] = str(page)
    return "/review/calls" + ("?" + urlencode(query) if query else "")


@router.get("/calls/{call_id}")
async def call_page(call_id: str, request: Request) -> Response:
    reviewer = _reviewer(request)
    detail = await _read(request, lambda s: q.call_detail(s, call_id))
    if detail is None:
        raise NotFound(f"no call {call_id!r} in the log", code="call_not_found")
    call = detail["call"]
    call["is_error"] = _is_error(call)
    family = detail["family"]
    for row in family:
        row["answer"] = conv.answer(row)
        row["is_error"] = _is_error(row)
    family.sort(key=lambda r: (r["variant"] != "baseline", not r["served"], r["ts_us"]))
    return _page(
        request,
        reviewer,
        "call.html",
        forms=True,
        nav="calls",
        call=call,
        family=family,
        answer=conv.answer(call),
        messages=conv.messages(call["request"]),
        tools=conv.tools(call["request"]),
        events=detail["events"],
        base="/review/calls/" + quote(call_id, safe=""),
        done=_DONE.get(request.query_params.get("done", ""), ""),
    )


# -- actions ----------------------------------------------------------------------------
async def _form(request: Request, call_id: str) -> tuple[Reviewer, dict[str, str]]:
    """Check access and origin, read the urlencoded form, and make sure the call exists."""
    reviewer = _reviewer(request)
    _same_origin(request)
    body = await request.body()
    if len(body) > 4 * MAX_RELABEL:
        raise InvalidRequest("the form is too large")
    try:
        fields = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise InvalidRequest("the form is not valid UTF-8") from None
    _check_csrf(request, fields)
    if not await _read(request, lambda s: q.call_exists(s, call_id)):
        raise NotFound(f"no call {call_id!r} in the log", code="call_not_found")
    return reviewer, fields


def _event(call_id: str, kind: str, value: str | None, reviewer: Reviewer) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": new_id("evt"),
        "call_id": call_id,
        "ts": time.time_ns() // 1000,
        "kind": kind,
        "value": value,
        "value_num": None,
        "comment": None,
        "user": None,
        "source": "reviewer",
        "data": orjson.dumps({"reviewer": reviewer.who}).decode(),
        "client_key": None,
        "key_id": None,
        "reviewer": reviewer.who,
    }


def _back(call_id: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"/review/calls/{quote(call_id, safe='')}?done={done}", status_code=303)


@router.post("/calls/{call_id}/relabel")
async def relabel(call_id: str, request: Request) -> Response:
    reviewer, fields = await _form(request, call_id)
    answer = fields.get("answer", "").replace("\r\n", "\n")
    if not answer.strip():
        raise InvalidRequest("the relabelled answer must not be empty", param="answer")
    if len(answer) > MAX_RELABEL:
        raise InvalidRequest(
            f"the relabelled answer is too long (at most {MAX_RELABEL} characters)", param="answer"
        )
    request.app.state.ctx.writer.append("events", _event(call_id, "relabel", answer, reviewer))
    return _back(call_id, "relabel")


@router.post("/calls/{call_id}/exclude")
async def exclude(call_id: str, request: Request) -> Response:
    reviewer, _ = await _form(request, call_id)
    request.app.state.ctx.writer.append("events", _event(call_id, "exclude", None, reviewer))
    return _back(call_id, "exclude")


@router.post("/calls/{call_id}/thumbs")
async def thumbs(call_id: str, request: Request) -> Response:
    reviewer, fields = await _form(request, call_id)
    try:
        rec = validate_feedback(
            {"call_id": call_id, "kind": "thumbs", "value": fields.get("value", "")},
            source="reviewer",
            user=None,
            reviewer=reviewer.who,
        )
    except FeedbackError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    rec["schema_version"] = SCHEMA_VERSION
    rec["data"] = orjson.dumps({"reviewer": reviewer.who}).decode()
    request.app.state.ctx.writer.append("events", rec)
    return _back(call_id, "thumbs")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in _STATIC:
        raise NotFound(f"no static file {name!r}")
    content = await asyncio.to_thread((_HERE / "static" / name).read_bytes)
    return Response(content, media_type=_STATIC[name], headers={"cache-control": "public, max-age=3600"})
