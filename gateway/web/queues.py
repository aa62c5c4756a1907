"""Review queues and bulk actions, under ``/review/queues`` and ``/review/bulk``.

A queue is a list of at most `MAX_ITEMS` calls, newest first, from the period's partitions
(``period``: 24h by default, or 7d, 30d):

``thumbs_down``     served calls a user gave a thumbs-down
``regenerated``     served calls a user regenerated
``judge_lost``      pairs the judge gave to the baseline (``eval judge``'s verdicts)
``errors``          calls that failed (status >= 400 or an error type), routed ones
``relabel_needed``  thumbs-down, flagged or regenerated calls nobody relabelled or excluded yet
``sample``          a uniform random sample of served calls (``seed`` in the URL), to see what
                    the traffic looks like rather than only what went wrong; drawn from a pool
                    of the period's calls read in the background (`gateway.web._sample`)

The URL pins the queue (``until``: the time it was opened, for the sample the time its pool
was read; ``seed``), so it does not shift
under a reviewer working through it: ``/review/queues/<kind>`` lists it (select rows, apply a
bulk action), ``/review/queues/<kind>/<i>`` shows item ``i`` as the call page does, with
previous/next, the progress (items this reviewer has acted on) and keyboard shortcuts
(``review.js``). Every action posts back to the item it was taken on.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from gateway.errors import InvalidRequest, NotFound
from gateway.store import LogStore
from gateway.store import windows as win
from gateway.store.reader import REVIEWER_SQL
from gateway.web import _common as web
from gateway.web import _conversation as conv
from gateway.web import _queries as q
from gateway.web import _sample

router = APIRouter()

MAX_ITEMS = _sample.MAX_ITEMS
MAX_BULK = 1000
QUEUES = {
    "thumbs_down": "Thumbs-down",
    "regenerated": "Regenerated",
    "judge_lost": "Judge: candidate lost",
    "errors": "Errors",
    "relabel_needed": "Relabel needed",
    "sample": "Random sample",
}
BULK = {"exclude": ("exclude", None), "thumbs_up": ("thumbs", "up"), "thumbs_down": ("thumbs", "down")}


def _event_queue(store: LogStore, lo: int, hi: int, kinds: str, *, unreviewed: bool = False) -> list[str]:
    ev = win.source(store, "events", lo, None)
    skip = (
        f"AND call_id NOT IN (SELECT call_id FROM {ev} WHERE kind IN ('relabel', 'exclude'))"
        if unreviewed
        else ""
    )
    rows = store.sql(
        f"""
        SELECT call_id, max(ts) AS last FROM {ev}
        WHERE ts >= make_timestamptz($lo) AND ts < make_timestamptz($hi) AND NOT {REVIEWER_SQL} AND ({kinds}) {skip}
        GROUP BY call_id ORDER BY last DESC, call_id DESC LIMIT {MAX_ITEMS}
        """,
        {"lo": lo, "hi": hi},
    )
    ids = [r["call_id"] for r in rows]
    rids = [i for i in ids if not i.startswith("call_")]
    if rids:  # feedback posted with the response's chatcmpl- id: the call it names
        found = store.sql(
            f"SELECT call_id, response_id FROM {win.source(store, 'calls', lo - q.DAY_US, hi)} "
            "WHERE served AND list_contains($r, response_id)",
            {"r": rids},
        )
        by_rid = {r["response_id"]: r["call_id"] for r in found}
        ids = [by_rid.get(i, i) for i in ids]
    return list(dict.fromkeys(ids))


def queue_ids(
    store: LogStore, kind: str, lo: int, hi: int, seed: str, pools: _sample.Pools | None = None
) -> list[str]:
    """The queue's call ids, in order (``pools``: where the sample's pools are kept)."""
    if kind == "thumbs_down":
        return _event_queue(store, lo, hi, "kind = 'thumbs' AND value = 'down'")
    if kind == "regenerated":
        return _event_queue(store, lo, hi, "kind = 'regeneration'")
    if kind == "relabel_needed":
        kinds = "(kind = 'thumbs' AND value = 'down') OR kind IN ('flag', 'regeneration')"
        return _event_queue(store, lo, hi, kinds, unreviewed=True)
    if kind == "errors":
        rows = q.newest_first(
            store,
            f"route IS NOT NULL AND {q.ERROR_SQL} AND ts < make_timestamptz({hi})",
            {},
            MAX_ITEMS,
            since_us=lo,
        )
        return [r["call_id"] for r in rows]
    if kind == "sample":
        rows = (pools or _sample.Pools()).get(store, lo, hi)
        return [r["call_id"] for r in _sample.pick(rows, seed)]
    if kind == "judge_lost":
        if not q._has_view(store, "judge_verdicts"):
            return []
        rows = store.sql(
            f"""
            SELECT v.call_id FROM judge_verdicts v JOIN {win.source(store, "calls", lo, hi)} c ON c.call_id = v.call_id
            WHERE v.outcome = 'baseline' AND c.ts >= make_timestamptz($lo) AND c.ts < make_timestamptz($hi)
            GROUP BY v.call_id ORDER BY max(c.ts) DESC LIMIT {MAX_ITEMS}
            """,
            {"lo": lo, "hi": hi},
        )
        return [r["call_id"] for r in rows]
    raise NotFound(f"no review queue {kind!r}", code="queue_not_found")


def pools(request: Request) -> _sample.Pools:
    """This process's sample pools (`gateway.web._sample`)."""
    state = request.app.state
    found: _sample.Pools | None = getattr(state, "review_sample_pools", None)
    if found is None:
        found = state.review_sample_pools = _sample.Pools()
    return found


async def newest_pool(request: Request, pin: Pin) -> None:
    """A sample queue opened without ``until`` draws from its period's newest pool (computed in
    the background, at most the cache's ttl old; kept next to the log like
    the dashboard's numbers, so a restart starts from the last one); the pin takes its window."""
    if pin.kind != "sample" or pin.pinned:
        return
    got = await newest_pool_of(request.app.state, pin.period)
    if got is not None:  # (else, after 5 s: this request computes the pool of now itself)
        until, rows = got[0]
        pin.pin_until(until)
        pools(request).put(pin.lo, pin.until, rows)


async def newest_pool_of(
    state: Any, period: str, *, wait: float = 5.0
) -> tuple[tuple[int, list[dict[str, Any]]], float] | None:
    """The period's newest sample pool ``((until, rows), computed at)`` of this process
    (`newest_pool`), or None while it is first computed (for longer than ``wait`` seconds)."""
    store = web.background_of(state)
    seconds = q.PERIODS[period]

    def compute() -> tuple[int, list[dict[str, Any]]]:
        until = q.now_us()
        return until, store.run(lambda s: _sample.pool(s, until - seconds * 1_000_000, until))

    return await web.cache_of(state).get(("sample-pool", period), compute, keep=True, wait=wait)


def reviewed(store: LogStore, ids: list[str], lo: int, who: str) -> set[str]:
    """The queue's items this reviewer has acted on (any reviewer event since the period began)."""
    if not ids:
        return set()
    rows = store.sql(
        f"SELECT DISTINCT call_id FROM {win.source(store, 'events', lo, None)} "
        f"WHERE {REVIEWER_SQL} AND reviewer = $who AND list_contains($ids, call_id)",
        {"who": who, "ids": ids},
    )
    return {r["call_id"] for r in rows}


class Pin:
    """A queue as the URL pins it: kind, period, the time it was opened, the sample's seed."""

    def __init__(self, request: Request, kind: str) -> None:
        if kind not in QUEUES:
            raise NotFound(f"no review queue {kind!r}", code="queue_not_found")
        p = request.query_params
        self.kind = kind
        self.period: str = p.get("period") or "24h"
        if self.period not in q.PERIODS:
            self.period = "24h"
        self.pinned = bool(p.get("until"))
        try:
            self.until = int(p.get("until") or q.now_us())
        except ValueError:
            raise InvalidRequest("until must be epoch microseconds", param="until") from None
        seed = p.get("seed") or secrets.token_hex(4)
        self.seed = "".join(ch for ch in seed if ch.isalnum())[:32] or "0"
        self.lo = self.until - q.PERIODS[self.period] * 1_000_000

    def pin_until(self, until: int) -> None:
        self.until, self.pinned = until, True
        self.lo = until - q.PERIODS[self.period] * 1_000_000

    def query(self) -> str:
        return urlencode({"period": self.period, "until": self.until, "seed": self.seed})

    def url(self, i: int | None = None) -> str:
        tail = "" if i is None else f"/{i}"
        return f"/review/queues/{self.kind}{tail}?{self.query()}"


@router.get("/queues")
async def queues_index(request: Request) -> Response:
    who = web.reviewer(request)
    pins = {k: Pin(request, k) for k in QUEUES}
    await newest_pool(request, pins["sample"])
    kept = pools(request)

    def read(store: LogStore) -> dict[str, int]:
        return {k: len(queue_ids(store, k, p.lo, p.until, p.seed, kept)) for k, p in pins.items()}

    counts = await web.read(request, read)
    items = [{"kind": k, "title": t, "count": counts[k], "url": pins[k].url()} for k, t in QUEUES.items()]
    period = pins["errors"].period
    return web.page(
        request,
        who,
        "queues.html",
        nav="queues",
        items=items,
        period=period,
        periods=list(q.PERIODS),
        queue=None,
    )


@router.get("/queues/{kind}")
async def queue_list(kind: str, request: Request) -> Response:
    who = web.reviewer(request)
    pin = Pin(request, kind)
    await newest_pool(request, pin)
    kept = pools(request)

    def read(store: LogStore) -> tuple[list[dict[str, Any]], set[str]]:
        ids = [] if kind == "sample" else queue_ids(store, kind, pin.lo, pin.until, pin.seed)
        rows = _rows(store, ids, pin, kept)
        ids = [r["call_id"] for r in rows]
        return rows, reviewed(store, ids, pin.lo, who.who)

    rows, done = await web.read(request, read)
    for i, row in enumerate(rows):
        if "summary" not in row:  # (a sample's pool keeps the summary, not the request)
            row["summary"] = conv.last_user_text(row.pop("request"))
        row["is_error"] = web.is_error(row)
        row["item_url"] = pin.url(i)
        row["reviewed"] = row["call_id"] in done
    return web.page(
        request,
        who,
        "queue.html",
        forms=True,
        nav="queues",
        kind=kind,
        title=QUEUES[kind],
        rows=rows,
        reviewed=len(done),
        here=pin.url(),
        start_url=pin.url(0),
        queue=None,
    )


def _rows(store: LogStore, ids: list[str], pin: Pin, kept: _sample.Pools) -> list[dict[str, Any]]:
    if pin.kind == "sample":
        rows = _sample.pick(kept.get(store, pin.lo, pin.until), pin.seed)
        if rows:
            q.attach_outcomes(store, rows, min(r["ts_us"] for r in rows))
        return rows
    return q.rows_by_id(store, ids, pin.lo - q.DAY_US, pin.until + q.DAY_US)


@router.get("/queues/{kind}/{index}")
async def queue_item(kind: str, index: int, request: Request) -> Response:
    from gateway.web.review import call_context

    who = web.reviewer(request)
    pin = Pin(request, kind)
    await newest_pool(request, pin)
    kept = pools(request)

    def read(store: LogStore) -> tuple[list[str], set[str]]:
        ids = queue_ids(store, kind, pin.lo, pin.until, pin.seed, kept)
        return ids, reviewed(store, ids, pin.lo, who.who)

    ids, done = await web.read(request, read)
    if not 0 <= index < len(ids):
        raise NotFound(f"the queue has {len(ids)} items: no item {index}", code="queue_item_not_found")
    ctx = await call_context(request, ids[index])
    bar = {
        "kind": kind,
        "title": QUEUES[kind],
        "index": index,
        "total": len(ids),
        "reviewed": len(done),
        "list_url": pin.url(),
        "prev_url": pin.url(index - 1) if index > 0 else None,
        "next_url": pin.url(index + 1) if index + 1 < len(ids) else None,
    }
    return web.page(
        request, who, "call.html", forms=True, nav="queues", queue=bar, back=pin.url(index), **ctx
    )


@router.post("/bulk")
async def bulk(request: Request) -> Response:
    """One action on a selection of calls: exclude, or a reviewer's thumb, one event per call."""
    from gateway.web.review import thumb_event

    who, fields = await web.form(request)
    action = (fields.get("action") or [""])[-1]
    if action not in BULK:
        raise InvalidRequest(f"the bulk action must be one of {', '.join(BULK)}", param="action")
    ids = list(dict.fromkeys(fields.get("call_id", [])))
    if not ids:
        raise InvalidRequest("select at least one call", param="call_id")
    if len(ids) > MAX_BULK:
        raise InvalidRequest(f"at most {MAX_BULK} calls at once", param="call_id")
    found = await web.read(request, lambda s: q.existing(s, ids))
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"no call {missing[0]!r} in the log", code="call_not_found")
    kind, value = BULK[action]
    for call_id in ids:
        rec = (
            thumb_event(call_id, value or "", who)
            if kind == "thumbs"
            else web.event(call_id, kind, value, who)
        )
        web.append(request, rec)
    back = web.safe_back((fields.get("back") or [""])[-1], "/review/calls")
    sep = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{sep}{urlencode({'done': 'bulk', 'n': len(ids)})}", status_code=303)
