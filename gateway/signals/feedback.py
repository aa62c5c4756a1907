"""Explicit feedback: a client's ``{call_id, kind, value, comment?, user?}`` as an ``events`` record.

`validate_feedback` is pure (no I/O): it checks one feedback body and returns the record
to hand to ``LogWriter.append("events", record)``, or raises `FeedbackError` naming the
bad field, in which case nothing may be stored. The API router turns that error into a
400 ``invalid_request_error`` with ``param``.

Kinds and how they are stored (``value`` is text, ``value_num`` a number):

=============  ================================================  ====================
kind           value accepted                                    stored as
=============  ================================================  ====================
``thumbs``     ``"up"`` / ``"down"`` (also ``true``/``false``)   ``up``/``down``, 1/0
``rating``     a number in the declared range (default 1-5)      text, the number
``choice``     ``"a"`` / ``"b"``, or the id of the chosen call   the choice, NULL
``flag``       omitted, ``true``, or a short reason              reason or NULL, 1
custom name    bool or float, as declared by a `CustomMetric`    text, the number
=============  ================================================  ====================

Feedback may arrive before its call is flushed (or even before it is logged): events
are joined to calls by ``call_id`` (or the response's ``chatcmpl-`` id) at read time.
`orphan_feedback` lists events that still match no call after a join window, so they are
reported rather than silently lost.

Who posted: every event records its poster (`poster_id`): the client key (``client_key``,
its name, and ``key_id``, a short hash of the key) for the API, the reviewer for the review
page (``source = 'reviewer'``, ``reviewer``). With client keys on, only the key that made a
call (or an admin) may post on it (`gateway.signals.ownership`). Feedback is idempotent per
``(call, kind, poster)``: a repeat is not stored again, and readers keep only the latest
event of each (the ``user_events`` view). Reviewer events are kept out of the user-outcome
rates and shown apart (`REVIEWER_SOURCES`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.store import queries
from gateway.store.ids import new_id
from gateway.store.sources import REVIEWER_SOURCES

__all__ = ["REVIEWER_SOURCES", "CustomMetric", "FeedbackError", "RateLimiter", "validate_feedback"]

BUILTIN_KINDS = ("thumbs", "rating", "choice", "flag")
"""Kinds every client may send."""

RESERVED_KINDS = ("regeneration", "relabel", "exclude")
"""Kinds the gateway records itself (detector, review page); never accepted as feedback."""

FIELDS = ("call_id", "kind", "value", "comment", "user", "data")
MAX_ID = 200
MAX_VALUE = 200
MAX_COMMENT = 10_000
MAX_USER = 256


class FeedbackError(ValueError):
    """A feedback body that cannot be stored; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class CustomMetric(BaseModel):
    """A named outcome metric clients may report (``signals.custom_metrics`` in the config)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    """The feedback ``kind`` that carries it, e.g. ``task_completed``."""
    type: Literal["bool", "float"] = "float"
    """``bool`` (stored as 1/0) or ``float``."""
    higher_is_better: bool = True
    """Direction used when comparing variants."""
    min: float | None = None
    """Smallest accepted value (float metrics)."""
    max: float | None = None
    """Largest accepted value (float metrics)."""

    @model_validator(mode="after")
    def _check(self) -> CustomMetric:
        if self.name in BUILTIN_KINDS or self.name in RESERVED_KINDS:
            raise ValueError(f"custom metric name {self.name!r} clashes with a built-in feedback kind")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"custom metric {self.name!r}: min {self.min} is greater than max {self.max}")
        return self


def validate_feedback(
    body: Any,
    *,
    custom_metrics: Iterable[CustomMetric] = (),
    rating_range: tuple[float, float] = (1.0, 5.0),
    source: str = "api",
    user: str | None = None,
    now_us: int | None = None,
    client_key: str | None = None,
    key_id: str | None = None,
    reviewer: str | None = None,
) -> dict[str, Any]:
    """Check one feedback body; return the ``events`` record to append.

    Args:
        body: the decoded JSON body ``{call_id, kind, value, comment?, user?, data?}``.
        custom_metrics: the metrics declared in config; their names are extra kinds.
        rating_range: inclusive ``(low, high)`` bounds of ``rating``.
        source: ``api``, ``admin``, ``cli`` or ``reviewer``; stored in ``source``.
        user: the authenticated user, used when the body names none.
        now_us: the event time (epoch microseconds); now when omitted.
        client_key: name of the client key that posted it.
        key_id: short hash id of that key (`key_id`).
        reviewer: the reviewer who posted it (review page).

    Raises:
        FeedbackError: unknown kind, value out of range, or a malformed body.
    """
    if not isinstance(body, Mapping):
        raise FeedbackError("the feedback body must be a JSON object", None)
    unknown = sorted(str(k) for k in body if k not in FIELDS)
    if unknown:
        raise FeedbackError(f"unrecognized feedback field: {unknown[0]!r}", unknown[0])

    call_id = _short_text(body.get("call_id"), "call_id", MAX_ID, required=True)
    assert call_id is not None
    if any(ch.isspace() for ch in call_id):
        raise FeedbackError("call_id must not contain whitespace", "call_id")
    kind = _short_text(body.get("kind"), "kind", 64, required=True)
    assert kind is not None
    comment = _short_text(body.get("comment"), "comment", MAX_COMMENT)
    body_user = _short_text(body.get("user"), "user", MAX_USER)
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise FeedbackError("data must be a JSON object", "data")

    metrics = {m.name: m for m in custom_metrics}
    raw = body.get("value")
    extra: dict[str, Any] = {}
    value: str | None
    value_num: float | None
    if kind == "thumbs":
        value, value_num = _thumbs(raw)
    elif kind == "rating":
        value, value_num = _rating(raw, rating_range)
    elif kind == "choice":
        value, value_num = _choice(raw)
    elif kind == "flag":
        value, value_num = _flag(raw)
    elif kind in metrics:
        metric = metrics[kind]
        value, value_num = _custom(raw, metric)
        extra = {"metric_type": metric.type, "higher_is_better": metric.higher_is_better}
    elif kind in RESERVED_KINDS:
        raise FeedbackError(f"kind {kind!r} is recorded by the gateway, not sent as feedback", "kind")
    else:
        known = ", ".join([*BUILTIN_KINDS, *sorted(metrics)])
        raise FeedbackError(f"unknown feedback kind {kind!r} (expected one of: {known})", "kind")

    if data or extra:
        merged = {**(data or {}), **extra}
        try:
            data_text: str | None = orjson.dumps(merged).decode()
        except TypeError as exc:
            raise FeedbackError(f"data is not serialisable: {exc}", "data") from exc
    else:
        data_text = None
    return {
        "event_id": new_id("evt"),
        "call_id": call_id,
        "ts": now_us if now_us is not None else time.time_ns() // 1000,
        "kind": kind,
        "value": value,
        "value_num": value_num,
        "comment": comment,
        "user": body_user if body_user is not None else user,
        "source": source,
        "data": data_text,
        "client_key": client_key,
        "key_id": key_id,
        "reviewer": reviewer,
    }


def key_id(token: str) -> str:
    """A client key's short public id: the first 16 hex digits of its SHA-256 (never the key)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def poster_id(event: Mapping[str, Any]) -> str:
    """Who an event is from, for idempotency: the key, else the reviewer, else the user, else its source.

    Mirrors `gateway.store.reader.POSTER_SQL` (what the ``user_events`` view deduplicates on).
    """
    if event.get("key_id"):
        return f"key:{event['key_id']}"
    if event.get("reviewer"):
        return f"reviewer:{event['reviewer']}"
    if event.get("user"):
        return f"user:{event['user']}"
    return f"source:{event.get('source') or ''}"


def _short_text(raw: Any, param: str, limit: int, *, required: bool = False) -> str | None:
    if raw is None:
        if required:
            raise FeedbackError(f"missing required field: {param}", param)
        return None
    if not isinstance(raw, str):
        raise FeedbackError(f"{param} must be a string", param)
    if required and not raw.strip():
        raise FeedbackError(f"{param} must not be empty", param)
    if len(raw) > limit:
        raise FeedbackError(f"{param} is too long ({len(raw)} characters, at most {limit})", param)
    return raw


def _number(raw: Any, what: str) -> float:
    if isinstance(raw, bool):
        raise FeedbackError(f"{what} must be a number, not a boolean", "value")
    if isinstance(raw, int | float):
        num = float(raw)
    elif isinstance(raw, str):
        try:
            num = float(raw.strip())
        except ValueError:
            raise FeedbackError(f"{what} must be a number, got {raw[:40]!r}", "value") from None
    else:
        raise FeedbackError(f"{what} must be a number", "value")
    if not math.isfinite(num):
        raise FeedbackError(f"{what} must be a finite number", "value")
    return num


def _num_text(num: float) -> str:
    num = float(num)  # config bounds may be ints
    return str(int(num)) if num.is_integer() else repr(num)


def _thumbs(raw: Any) -> tuple[str, float]:
    if raw is True or (isinstance(raw, str) and raw.strip().lower() == "up"):
        return "up", 1.0
    if raw is False or (isinstance(raw, str) and raw.strip().lower() == "down"):
        return "down", 0.0
    raise FeedbackError('thumbs value must be "up" or "down"', "value")


def _rating(raw: Any, rating_range: tuple[float, float]) -> tuple[str, float]:
    if raw is None:
        raise FeedbackError("rating needs a value", "value")
    num = _number(raw, "rating")
    low, high = rating_range
    if not low <= num <= high:
        raise FeedbackError(
            f"rating {_num_text(num)} is out of range [{_num_text(low)}, {_num_text(high)}]", "value"
        )
    return _num_text(num), num


def _choice(raw: Any) -> tuple[str, None]:
    if not isinstance(raw, str) or not raw.strip():
        raise FeedbackError('choice value must be "a", "b" or the id of the chosen call', "value")
    text = raw.strip()
    if text.lower() in ("a", "b"):
        return text.lower(), None
    if len(text) > MAX_ID or any(ch.isspace() for ch in text):
        raise FeedbackError('choice value must be "a", "b" or the id of the chosen call', "value")
    return text, None


def _flag(raw: Any) -> tuple[str | None, float]:
    if raw is None or raw is True:
        return None, 1.0
    if isinstance(raw, str) and raw.strip():
        if len(raw) > MAX_VALUE:
            raise FeedbackError(f"flag reason is too long (at most {MAX_VALUE} characters)", "value")
        return raw.strip(), 1.0
    raise FeedbackError("flag value must be omitted, true, or a short reason", "value")


def _custom(raw: Any, metric: CustomMetric) -> tuple[str, float]:
    if metric.type == "bool":
        if raw is True or raw == 1 or (isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes")):
            return "true", 1.0
        if raw is False or raw == 0 or (isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no")):
            return "false", 0.0
        raise FeedbackError(f"{metric.name} is a boolean metric: value must be true or false", "value")
    if raw is None:
        raise FeedbackError(f"{metric.name} needs a value", "value")
    num = _number(raw, metric.name)
    if metric.min is not None and num < metric.min:
        raise FeedbackError(
            f"{metric.name} {_num_text(num)} is below its minimum {_num_text(metric.min)}", "value"
        )
    if metric.max is not None and num > metric.max:
        raise FeedbackError(
            f"{metric.name} {_num_text(num)} is above its maximum {_num_text(metric.max)}", "value"
        )
    return _num_text(num), num


def orphan_feedback(store: Any, window_s: float, *, now: float | None = None) -> list[dict[str, Any]]:
    """Feedback events older than ``window_s`` whose ``call_id`` matches no logged call.

    A call is matched by its ``call_id`` or its response id (``chatcmpl-...``). ``store``
    is a `gateway.store.LogStore`; refresh it first to see the newest rows. Events the
    gateway wrote itself (``source = 'detector'``) are never orphans and are skipped.
    Oldest first: ``{event_id, call_id, ts, kind, value, source, user, age_s}``.
    """
    now_s = time.time() if now is None else now
    cutoff_us = int((now_s - window_s) * 1_000_000)
    rows = cast("list[dict[str, Any]]", queries.orphan_events(store, cutoff_us))
    for row in rows:
        row["age_s"] = now_s - row.pop("ts_us") / 1e6
    return rows


class RateLimiter:
    """Token buckets per poster: ``rate`` posts a minute on average, bursts of ``burst``.

    Per process (each worker keeps its own buckets), bounded to ``max_keys`` posters.
    """

    def __init__(self, rate_per_min: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = rate_per_min / 60.0
        self.burst = float(max(burst, 1))
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, who: str, *, now: float | None = None) -> float | None:
        """None if ``who`` may post now (and take a token), else the seconds until it may."""
        if self.rate <= 0:
            return None
        t = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(who, (self.burst, t))
            tokens = min(self.burst, tokens + (t - last) * self.rate)
            if tokens < 1.0:
                self._buckets[who] = (tokens, t)
                return (1.0 - tokens) / self.rate
            if who not in self._buckets and len(self._buckets) >= self.max_keys:
                self._buckets.clear()
            self._buckets[who] = (tokens - 1.0, t)
            return None


@dataclass(frozen=True)
class CallOwner:
    """A logged call and the name of the client key that made it (None in open mode)."""

    call_id: str
    client_key: str | None
    recent: bool = False
    """Found in the WAL tail: its events, if any, are there too."""


def same_feedback(stored: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether ``record`` repeats ``stored`` (same value, number and comment)."""
    return (
        stored.get("value") == record.get("value")
        and stored.get("value_num") == record.get("value_num")
        and stored.get("comment") == record.get("comment")
    )
