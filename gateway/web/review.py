"""The review pages: server-rendered HTML over the call log, under ``/review``.

``/review``
    dashboard: per route and variant over 24h/7d/30d: a table (calls, error rate, p50/p95,
    the outcome rates of ``eval outcomes`` with their definitions, cost), the "Worth it?" panel
    (`gateway.web._worth`: ``report worth-it``'s cost, speed and projection) and SVG charts over
    time (traffic, error rate, latency, outcome rates with 95 % intervals, the canary's share
    with the controller's decisions, drift scores, the judge's win rate); requests that
    matched no route apart; the live route states.
``/review/calls``
    the calls, newest first, filtered by route, variant, status, text, period, served only;
    checkboxes for bulk actions (`gateway.web.queues`).
``/review/calls/{call_id}``
    one call: the conversation, its baseline/candidate siblings side by side with a word
    diff and a JSON diff, the judge's verdicts on the pair, its outcome events; forms that
    POST a relabel, an exclusion, a thumb or a "which is better" ``choice`` (``events`` rows
    with ``source = 'reviewer'`` and the reviewer in ``reviewer``, kept out of the users'
    outcome rates) and redirect back (303).
``/review/queues``, ``/review/ops``
    review queues and bulk actions (`gateway.web.queues`); route changes, the controller and
    the trigger runs (`gateway.web.ops`).

Access, CSRF and same-origin rules: `gateway.web._common`. Reads go through one long-lived
store per process (`gateway.web._store`), each query bounded to the partitions it needs
(`gateway.web._queries`); writes go through the gateway's `LogWriter`, so a relabel is
visible on the next page load.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from gateway.errors import InvalidRequest, NotFound
from gateway.signals.feedback import FeedbackError, validate_feedback
from gateway.store import SCHEMA_VERSION, LogStore
from gateway.web import _common as web
from gateway.web import _conversation as conv
from gateway.web import _dashboard as dash
from gateway.web import _diff as diff
from gateway.web import _queries as q
from gateway.web import _search
from gateway.web import _series as series
from gateway.web import _worth as worth

router = APIRouter(prefix="/review", include_in_schema=False)

MAX_RELABEL = 100_000
MAX_PAGE = 1_000_000
_STATIC = {"review.css": "text/css; charset=utf-8", "review.js": "text/javascript; charset=utf-8"}
_DONE = {
    "relabel": "Relabel saved.",
    "exclude": "Excluded from datasets.",
    "thumbs": "Thumb recorded.",
    "choice": "Choice recorded.",
}
CHOICES = {
    "baseline": "the baseline's answer is better",
    "candidate": "the candidate's answer is better",
    "tie": "both are as good",
}


# -- pages ------------------------------------------------------------------------------
def _decisions(request: Request, routes: list[str]) -> dict[str, list[dict[str, Any]]]:
    backend = request.app.state.ctx.routes.backend
    out: dict[str, list[dict[str, Any]]] = {}
    for route in routes:
        try:
            out[route] = backend.records("decisions", route, 500)
        except Exception:  # the state backend is down: the chart goes without its marks
            out[route] = []
    return out


async def dashboard_numbers(
    state: Any, period: str, *, wait: float = 5.0
) -> tuple[dict[str, Any], float] | None:
    """The dashboard's numbers for ``period`` and when they were computed (kept a minute, and next
    to the log across restarts: `gateway.web._store.Cached`); None while first computed."""
    key, compute = dashboard_job(state, period)
    return await web.cache_of(state).get(key, compute, keep=True, wait=wait)


def dashboard_job(state: Any, period: str) -> tuple[tuple[Any, ...], Callable[[], dict[str, Any]]]:
    """The dashboard's cache key for ``period`` (its inputs) and the function that computes it."""
    routes = [r.public() for _, r in sorted(state.ctx.routes.snapshot.routes.items())]
    sticky = {r["route"]: r.get("sticky_key") or "user" for r in routes}
    store = web.background_of(state)
    price = worth.prices(state.ctx.settings.upstreams)

    def on(s: LogStore) -> dict[str, Any]:
        data = series.dashboard(s, period, q.now_us(), sticky)
        data["worth"] = worth.panel(s, sorted(data["routes"]), data["lo"], data["hi"], price)
        return data

    def compute() -> dict[str, Any]:
        return store.run(on)

    return ("dashboard", period, tuple(sorted(sticky.items())), tuple(sorted(price.items()))), compute


@router.get("")
async def dashboard(request: Request) -> Response:
    who = web.reviewer(request)
    period = request.query_params.get("period", "24h")
    if period not in q.PERIODS:
        period = "24h"
    snap = request.app.state.ctx.routes.snapshot
    routes = [state.public() for _, state in sorted(snap.routes.items())]
    store = web.background(request)
    got = await dashboard_numbers(request.app.state, period)
    if got is None:
        return web.page(
            request, who, "computing.html", nav="dashboard", period=period, periods=list(q.PERIODS)
        )
    data, at = got
    x_range = (data["lo"], data["hi"])
    names = sorted(data["routes"])
    decisions = await asyncio.to_thread(_decisions, request, names)
    lo_s = data["lo"] / 1e6
    charts = {
        r: dash.route_charts(
            r,
            data["routes"][r],
            x_range,
            [d for d in decisions.get(r, []) if float(d.get("ts") or 0) >= lo_s],
        )
        for r in names
    }
    drift = await asyncio.to_thread(dash.drift_charts, store.log_dir, names, x_range)
    rates = [row for r in names for row in dash.rate_table(r, data["routes"][r])]
    return web.page(
        request,
        who,
        "dashboard.html",
        nav="dashboard",
        period=period,
        periods=list(q.PERIODS),
        stats=data["table"],
        rates=rates,
        definitions=series.DEFINITIONS,
        unrouted=data["unrouted"],
        charts=charts,
        drift=drift,
        judge=dash.judge_chart(data["judge"], x_range),
        worth=data["worth"],
        anchors={r: "charts-" + worth.slug(r) for r in names},
        routes=routes,
        routes_version=snap.version,
        computed_age=max(0, round(time.time() - at)),
    )


def _filter(request: Request) -> q.CallFilter:
    params = request.query_params
    try:
        page = max(1, int(params.get("page", "1")))
    except ValueError:
        raise InvalidRequest("page must be a whole number", param="page") from None
    if page > MAX_PAGE:
        raise InvalidRequest(f"page must be between 1 and {MAX_PAGE}", param="page")
    before, before_id = _cursor(params.get("before", ""), params.get("before_id", ""))
    return q.CallFilter(
        before=before,
        before_id=before_id,
        route=params.get("route", ""),
        variant=params.get("variant", ""),
        status=params.get("status", "") if params.get("status") in ("ok", "error") else "",
        q=params.get("q", "").strip(),
        served=params.get("served", "") not in ("", "0", "false"),
        period=params.get("period", "") if params.get("period") in q.PERIODS else "",
        page=page,
    )


def _cursor(before: str, before_id: str) -> tuple[int | None, str]:
    """A text search page's start (`gateway.web._search.Cursor`) from the query string."""
    if not before:
        return None, ""
    if not re.fullmatch(r"[0-9]{1,18}", before):
        raise InvalidRequest("before must be a time in epoch microseconds", param="before")
    if len(before_id) > 200:
        raise InvalidRequest("before_id is too long", param="before_id")
    return int(before), before_id


@router.get("/calls")
async def calls(request: Request) -> Response:
    who = web.reviewer(request)
    flt = _filter(request)

    found: _search.Found | None = None
    if flt.q:
        found = await web.read(request, lambda s: q.search_calls(s, flt))
        rows, has_next = found.rows[: q.PAGE_SIZE], found.full
    else:
        rows, has_next = await web.read(request, lambda s: q.list_calls(s, flt))
    facets = await _facets(request)
    for row in rows:
        row["summary"] = conv.last_user_text(row.pop("request"))
        row["is_error"] = web.is_error(row)
    return web.page(
        request,
        who,
        "calls.html",
        forms=True,
        nav="calls",
        f=flt,
        rows=rows,
        facets=facets,
        periods=list(q.PERIODS),
        has_next=has_next,
        prev_url=_calls_url(flt, flt.page - 1),
        next_url=_calls_url(flt, flt.page + 1),
        search=_search_view(flt, found, rows),
        here=str(request.url.path) + ("?" + request.url.query if request.url.query else ""),
    )


async def _facets(request: Request) -> dict[str, list[str]]:
    """The filter drop-downs' routes and variants (the last 30 days, cached; the configured ones
    until the first are computed: a page does not wait for them)."""
    store = web.background(request)
    got = await web.cache(request).get(("facets",), lambda: store.run(q.facets), wait=0.0)
    if got is not None:
        return got[0]
    return {
        "routes": sorted(request.app.state.ctx.routes.snapshot.routes),
        "variants": ["baseline", "candidate"],
    }


def _calls_url(flt: q.CallFilter, page: int = 1, before: _search.Cursor | None = None) -> str:
    query = {
        "route": flt.route,
        "variant": flt.variant,
        "status": flt.status,
        "q": flt.q,
        "period": flt.period,
    }
    query = {k: v for k, v in query.items() if v}
    if flt.served:
        query["served"] = "1"
    if page > 1:
        query["page"] = str(page)
    if before is not None:
        query["before"] = str(before.ts_us)
        if before.call_id:
            query["before_id"] = before.call_id
    return "/review/calls" + ("?" + urlencode(query) if query else "")


def _search_view(
    flt: q.CallFilter, found: _search.Found | None, rows: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """What the calls page says about a text search: how far back it looked, and where it goes on."""
    if found is None:
        return None
    older = None
    if found.full:  # after the page's last call
        older = _calls_url(flt, before=_search.Cursor(rows[-1]["ts_us"], rows[-1]["call_id"]))
    elif not found.complete:  # the budget ran out: on from where it stopped
        older = _calls_url(flt, before=_search.Cursor(found.searched_from_us))
    return {
        "from_us": found.searched_from_us,
        "to_us": found.upper_us,
        "complete": found.complete,
        "full": found.full,
        "older_url": older,
        "newest_url": _calls_url(flt) if flt.before is not None else None,
    }


def compare(family: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline and candidate answers of a family, and their word and JSON diffs."""
    base = next((f for f in family if f["variant"] == "baseline"), None)
    cand = next((f for f in family if f["variant"] == "candidate"), None)
    if base is None or cand is None:
        return None
    a, b = base["answer"]["content"], cand["answer"]["content"]
    return {
        "baseline": base,
        "candidate": cand,
        "words": diff.word_diff(a, b),
        "json": diff.json_diff(a, b),
        "identical": a == b,
    }


async def call_context(request: Request, call_id: str) -> dict[str, Any]:
    """Everything the call page shows (the queue page shows the same, with its own bar)."""

    def read(store: LogStore) -> dict[str, Any] | None:
        detail = q.call_detail(store, call_id)
        if detail is not None:
            detail["verdicts"] = q.judge_verdicts(store, [f["call_id"] for f in detail["family"]])
        return detail

    detail = await web.read(request, read)
    if detail is None:
        raise NotFound(f"no call {call_id!r} in the log", code="call_not_found")
    call = detail["call"]
    call["is_error"] = web.is_error(call)
    family = detail["family"]
    for row in family:
        row["answer"] = conv.answer(row)
        row["is_error"] = web.is_error(row)
    family.sort(key=lambda r: (r["variant"] != "baseline", not r["served"], r["ts_us"]))
    mine = [e for e in detail["events"] if e["source"] in ("reviewer", "review")]
    return {
        "call": call,
        "family": family,
        "cmp": compare(family) if len(family) > 1 else None,
        "verdicts": detail["verdicts"],
        "answer": conv.answer(call),
        "messages": conv.messages(call["request"]),
        "tools": conv.tools(call["request"]),
        "events": detail["events"],
        "my_choice": next((e["value"] for e in reversed(mine) if e["kind"] == "choice"), None),
        "choices": CHOICES,
        "base": "/review/calls/" + quote(call_id, safe=""),
        "done": _DONE.get(request.query_params.get("done", ""), ""),
    }


@router.get("/calls/{call_id}")
async def call_page(call_id: str, request: Request) -> Response:
    who = web.reviewer(request)
    ctx = await call_context(request, call_id)
    return web.page(request, who, "call.html", forms=True, nav="calls", queue=None, back="", **ctx)


# -- actions ----------------------------------------------------------------------------
async def _form(request: Request, call_id: str) -> tuple[web.Reviewer, dict[str, str]]:
    """Check access, origin and CSRF, read the form, and make sure the call exists."""
    who, fields = await web.form(request)
    if not await web.read(request, lambda s: q.call_exists(s, call_id)):
        raise NotFound(f"no call {call_id!r} in the log", code="call_not_found")
    return who, {k: v[-1] for k, v in fields.items()}


def _back(call_id: str, done: str, fields: dict[str, str]) -> RedirectResponse:
    default = f"/review/calls/{quote(call_id, safe='')}"
    target = web.safe_back(fields.get("back", ""), default)
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}done={done}", status_code=303)


def relabel_answer(raw: str) -> str:
    answer = raw.replace("\r\n", "\n")
    if not answer.strip():
        raise InvalidRequest("the relabelled answer must not be empty", param="answer")
    if len(answer) > MAX_RELABEL:
        raise InvalidRequest(
            f"the relabelled answer is too long (at most {MAX_RELABEL} characters)", param="answer"
        )
    return answer


@router.post("/calls/{call_id}/relabel")
async def relabel(call_id: str, request: Request) -> Response:
    who, fields = await _form(request, call_id)
    answer = relabel_answer(fields.get("answer", ""))
    comment = fields.get("comment", "").strip()[:2000] or None
    web.append(request, web.event(call_id, "relabel", answer, who, comment=comment))
    return _back(call_id, "relabel", fields)


@router.post("/calls/{call_id}/exclude")
async def exclude(call_id: str, request: Request) -> Response:
    who, fields = await _form(request, call_id)
    web.append(request, web.event(call_id, "exclude", None, who))
    return _back(call_id, "exclude", fields)


def thumb_event(call_id: str, value: str, who: web.Reviewer) -> dict[str, Any]:
    try:
        rec = validate_feedback(
            {"call_id": call_id, "kind": "thumbs", "value": value},
            source="reviewer",
            user=None,
            reviewer=who.who,
        )
    except FeedbackError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    rec["schema_version"] = SCHEMA_VERSION
    rec["data"] = web.event(call_id, "thumbs", value, who)["data"]
    return rec


@router.post("/calls/{call_id}/thumbs")
async def thumbs(call_id: str, request: Request) -> Response:
    who, fields = await _form(request, call_id)
    web.append(request, thumb_event(call_id, fields.get("value", ""), who))
    return _back(call_id, "thumbs", fields)


@router.post("/calls/{call_id}/choice")
async def choice(call_id: str, request: Request) -> Response:
    """Which of the pair is better: a ``choice`` event on the served call, value the chosen call's id
    (or ``tie``), with both ids and the chosen variant in ``data``."""
    who, fields = await _form(request, call_id)
    picked = fields.get("value", "")
    if picked not in CHOICES:
        raise InvalidRequest('the choice must be "baseline", "candidate" or "tie"', param="value")
    ctx = await call_context(request, call_id)
    pair = ctx["cmp"]
    if pair is None:
        raise InvalidRequest("this call has no baseline/candidate pair to choose from", param="value")
    served = next((f for f in ctx["family"] if f["served"]), pair["baseline"])
    value = "tie" if picked == "tie" else pair[picked]["call_id"]
    data = {
        "variant": picked,
        "baseline_call_id": pair["baseline"]["call_id"],
        "candidate_call_id": pair["candidate"]["call_id"],
    }
    web.append(request, web.event(served["call_id"], "choice", value, who, data=data))
    return _back(call_id, "choice", fields)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in _STATIC:
        raise NotFound(f"no static file {name!r}")
    content = await asyncio.to_thread((web.HERE / "static" / name).read_bytes)
    return Response(content, media_type=_STATIC[name], headers={"cache-control": "public, max-age=3600"})


from gateway.web import ops, queues  # noqa: E402  (they use this module's handlers)

router.include_router(queues.router)
router.include_router(ops.router)
