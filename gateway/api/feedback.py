"""``POST /v1/feedback``: outcome signals posted against a call (client key auth).

``{"call_id": "<x-request-id or chatcmpl- id>", "kind": "thumbs", "value": "down"}``.

* **Who.** The event records the key that posted it (``client_key``, ``key_id``), or
  ``source = 'admin'`` for the admin token.
* **Ownership.** With client keys on, a key may post only on a call it made; any other call,
  logged or not, is a 404 ``call_not_found`` (the same answer, so a key cannot probe for other
  keys' calls). The admin token may post on any call. In open mode (no keys) there is no owner
  and feedback may arrive before its call is logged: events are joined to calls at read time.
* **Idempotency.** A post repeating the latest stored ``(call, kind, poster)`` event is answered
  with that event (``"duplicate": true``) and not stored again; readers count one event per
  ``(call, kind, poster)`` in any case (``user_events``).
* **Rate limit.** ``signals.feedback_rate_per_min`` per key (per client address in open mode),
  per worker; above it a 429 ``rate_limit_exceeded`` with ``retry-after``.
"""

from __future__ import annotations

import asyncio
import hmac
import math
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

if TYPE_CHECKING:
    from gateway.signals.ownership import FeedbackIndex

from gateway.agent import feedback as agent_feedback
from gateway.agent.proxy import AgentLink
from gateway.edge import parse_json
from gateway.errors import InvalidRequest, NotFound, RateLimited
from gateway.signals.feedback import (
    CallOwner,
    CustomMetric,
    FeedbackError,
    RateLimiter,
    key_id,
    poster_id,
    same_feedback,
    validate_feedback,
)

router = APIRouter()


def _limiter(request: Request) -> RateLimiter:
    state = request.app.state
    if getattr(state, "feedback_limiter", None) is None:
        signals = state.ctx.settings.signals
        state.feedback_limiter = RateLimiter(signals.feedback_rate_per_min, signals.feedback_burst)
    limiter: RateLimiter = state.feedback_limiter
    return limiter


def _index(request: Request) -> FeedbackIndex | None:
    """The in-process ownership index (one process: the log agent is in it), None in a worker of serve."""
    state = request.app.state
    if isinstance(state.ctx.agent, AgentLink):
        return None  # the log agent keeps the index: a worker never loads DuckDB
    if getattr(state, "feedback_index", None) is None:
        settings = state.ctx.settings
        # the ownership index reads the call log (DuckDB): loaded at the first feedback, not at start
        from gateway.signals.ownership import FeedbackIndex

        state.feedback_index = FeedbackIndex(settings.store.log_dir, settings.store.wal_dir)
    index: FeedbackIndex = state.feedback_index
    return index


async def _lookup(
    request: Request, rec: dict[str, Any], keyed: bool
) -> tuple[CallOwner | None, dict[str, Any] | None]:
    """The call's owner (waited for when keyed) and the stored event this post may repeat."""
    index = _index(request)
    if index is None:
        link = request.app.state.ctx.agent
        return await agent_feedback.ask(link, rec["call_id"], rec["kind"], poster_id(rec), wait=keyed)
    owner = await asyncio.to_thread(index.owner, rec["call_id"], wait=keyed)
    stored = await asyncio.to_thread(
        index.existing,
        owner.call_id if owner else rec["call_id"],
        rec["call_id"],
        rec["kind"],
        poster_id(rec),
    )
    return owner, stored


def _is_admin(request: Request, header: str) -> bool:
    token = request.app.state.ctx.settings.server.admin_token
    scheme, _, given = header.partition(" ")
    return (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
    )


@router.post("/v1/feedback")
@router.post("/feedback")
async def post_feedback(request: Request) -> Any:
    ctx = request.app.state.ctx
    header = request.headers.get("authorization", "")
    admin = _is_admin(request, header)
    key_name = None if admin else ctx.auth.check(header.encode() or None)
    kid = key_id(header.partition(" ")[2].strip()) if key_name is not None else None
    limiter = _limiter(request)
    who = (
        f"key:{kid}" if kid else "admin" if admin else f"addr:{request.client.host if request.client else ''}"
    )
    wait = limiter.allow(who)
    if wait is not None:
        err = RateLimited(
            f"too much feedback from this key: at most {ctx.settings.signals.feedback_rate_per_min:g} a minute",
            code="rate_limit_exceeded",
        )
        return Response(
            err.body(),
            status_code=err.status,
            media_type="application/json",
            headers={"retry-after": str(max(1, math.ceil(wait)))},
        )
    body = parse_json(await request.body())  # orjson: bounded nesting, no lone surrogates
    signals = ctx.settings.signals
    try:
        rec = validate_feedback(
            body,
            custom_metrics=ctx.custom_metrics,
            rating_range=(signals.rating_min, signals.rating_max),
            source="admin" if admin else "api",
            user=None,
            client_key=key_name,
            key_id=kid,
        )
    except FeedbackError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    keyed = key_name is not None
    owner, stored = await _lookup(request, rec, keyed)
    if keyed and (owner is None or owner.client_key != key_name):
        raise NotFound(f"no call {rec['call_id']!r} made with this key", code="call_not_found")
    out = {"object": "feedback", "call_id": rec["call_id"], "kind": rec["kind"]}
    if stored is not None and same_feedback(stored, rec):
        return {"id": stored["event_id"], **out, "duplicate": True}
    ctx.writer.append("events", rec)
    index = _index(request)
    if index is not None:
        index.remember({**rec, "call_id": owner.call_id if owner else rec["call_id"]})
    return {"id": rec["event_id"], **out, "duplicate": False}


def custom_metrics(raw: list[dict[str, Any]]) -> list[CustomMetric]:
    return [CustomMetric(**m) for m in raw]
