"""``POST /v1/feedback``: outcome signals posted against a call (client key auth).

``{"call_id": "<x-request-id or chatcmpl- id>", "kind": "thumbs", "value": "down"}``.
Feedback may arrive before its call is flushed to Parquet: events are joined to calls
at read time (`gateway.store.reader`), so order does not matter.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.edge import parse_json
from gateway.errors import InvalidRequest
from gateway.signals.feedback import CustomMetric, FeedbackError, validate_feedback

router = APIRouter()


@router.post("/v1/feedback")
@router.post("/feedback")
async def post_feedback(request: Request) -> dict[str, Any]:
    ctx = request.app.state.ctx
    ctx.auth.check(request.headers.get("authorization", "").encode() or None)
    body = parse_json(await request.body())  # orjson: bounded nesting, no lone surrogates
    signals = ctx.settings.signals
    try:
        rec = validate_feedback(
            body,
            custom_metrics=ctx.custom_metrics,
            rating_range=(signals.rating_min, signals.rating_max),
            source="api",
            user=None,
        )
    except FeedbackError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    ctx.writer.append("events", rec)
    return {"id": rec["event_id"], "object": "feedback", "call_id": rec["call_id"], "kind": rec["kind"]}


def custom_metrics(raw: list[dict[str, Any]]) -> list[CustomMetric]:
    return [CustomMetric(**m) for m in raw]
