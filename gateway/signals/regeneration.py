"""Regenerations, detected from the call log (so it works across workers and replicas).

A served call A is marked *regenerated* when the user asked again instead of using its
answer. Three rules, in this order of precedence:

``explicit``
    a later served call carries ``regenerate_of = A`` (the client's
    ``x-shadowtune-regenerate-of`` header, holding A's call id or response id).
``retry``
    a later served call B on the same route from the same conversation: the same sticky
    key (``user``, else ``session_id``, else ``client_key``) and the same messages up to
    and including the last user turn, sent within ``window_s`` of A. Only the call just
    before B is marked (A, B, C in a row mark A and B). A B whose messages *continue* A's
    (A's messages after the last user turn are a strict prefix of B's: a tool-call loop)
    is not a retry.
``rephrase`` (off by default)
    within ``rephrase_window_s`` the same user edits and resends the last message (same
    history before the last user turn, a different last user message) or asks again
    right after A's answer (B's history is A's messages plus one assistant message), and
    the two user messages are similar (`difflib` ratio at least ``rephrase_similarity``).

Each mark is one ``events`` row: ``kind = 'regeneration'``, ``source = 'detector'``,
``value`` the rule, ``value_num`` 1, ``ts`` the time of the later call and ``data``
``{"by": <later call id>, "gap_s": ...}``. Detection is idempotent: a call that already
has a ``regeneration`` event is never marked again, so the detector can run every few
minutes over an overlapping period.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from gateway.durations import epoch_us
from gateway.protocol.messages import message_text
from gateway.store import queries
from gateway.store.ids import new_id

_RULE_ORDER = {"explicit": 0, "retry": 1, "rephrase": 2}
_STICKY = (("u", "user"), ("s", "session_id"), ("k", "client_key"))


@dataclass(frozen=True, slots=True)
class _Turn:
    call_id: str
    ts_us: int
    key: tuple[str, str]  # (route, sticky key)
    prefix: bytes  # digest of messages up to and including the last user turn
    history: bytes  # digest of messages before the last user turn
    history_trimmed: bytes | None  # ... minus one trailing assistant message, if there is one
    full: bytes  # digest of all messages
    tail: tuple[bytes, ...]  # digests of the messages after the last user turn
    last_user: str  # the last user message's text (rephrase only: empty otherwise)
    ok: bool  # answered without an error


def detect_regenerations(
    store: Any,
    since: dt.datetime | float,
    window_s: float,
    rephrase: bool = False,
    *,
    until: dt.datetime | float | None = None,
    rephrase_window_s: float = 120.0,
    rephrase_similarity: float = 0.5,
) -> list[dict[str, Any]]:
    """Regeneration events for served calls made from ``since`` on (see the module docstring).

    ``store`` is a `gateway.store.LogStore` (refresh it to see the newest rows);
    ``since`` and ``until`` are datetimes or epoch seconds. Calls up to ``window_s``
    before ``since`` are read too, so a call just before ``since`` can be marked by a
    retry just after it. Returns the records to append; writes nothing.
    """
    since_us = epoch_us(since)
    until_us = epoch_us(until) if until is not None else None
    lookback = max(window_s, rephrase_window_s if rephrase else 0.0)
    lo_us = since_us - int(lookback * 1e6)
    marks = _Marks(queries.regenerated_call_ids(store, lo_us))
    _mark_explicit(marks, queries.explicit_regenerations(store, lo_us, until_us, since_us))
    turns = [
        t
        for batch in queries.regeneration_inputs(store, lo_us, until_us)
        for t in (_turn(cast("dict[str, Any]", r), keep_text=rephrase) for r in batch)
        if t is not None
    ]
    _mark_retries(marks, turns, since_us, int(window_s * 1e6))
    if rephrase:
        _mark_rephrases(marks, turns, since_us, int(rephrase_window_s * 1e6), rephrase_similarity)
    return marks.records()


class _Marks:
    """The events found so far: one per earlier call, the rule of highest precedence winning."""

    def __init__(self, already: set[str]) -> None:
        self.already = already  # calls with a regeneration event in the log: never marked again
        self.found: dict[str, tuple[int, dict[str, Any]]] = {}

    def mark(self, rule: str, earlier: str, later: str, later_ts: int, gap_us: int | None) -> None:
        if earlier in self.already or earlier == later:
            return
        rank = _RULE_ORDER[rule]
        if earlier in self.found and self.found[earlier][0] <= rank:
            return
        data: dict[str, Any] = {"by": later}
        if gap_us is not None:
            data["gap_s"] = round(gap_us / 1e6, 3)
        self.found[earlier] = (rank, _event(earlier, rule, later_ts, data))

    def records(self) -> list[dict[str, Any]]:
        return [rec for _, rec in sorted(self.found.values(), key=lambda x: (x[1]["ts"], x[1]["call_id"]))]


def _event(call_id: str, rule: str, ts_us: int, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": new_id("evt"),
        "call_id": call_id,
        "ts": ts_us,
        "kind": "regeneration",
        "value": rule,
        "value_num": 1.0,
        "comment": None,
        "user": None,
        "source": "detector",
        "data": orjson.dumps(data).decode(),
    }


def _mark_explicit(marks: _Marks, named: Iterable[queries.ExplicitRegeneration]) -> None:
    """``explicit``: a call names the one it regenerates (by call id or response id)."""
    for r in named:
        gap = r["ts_us"] - r["target_ts_us"] if r["target_ts_us"] is not None else None
        marks.mark("explicit", r["target"], r["call_id"], r["ts_us"], gap)


def _mark_retries(marks: _Marks, turns: list[_Turn], since_us: int, window_us: int) -> None:
    """``retry``: the same conversation sent again on the same route, within the window."""
    for group in _group(turns, lambda t: (t.key, t.prefix)).values():
        for a, b in itertools.pairwise(group):
            if b.ts_us < since_us or b.ts_us - a.ts_us > window_us:
                continue
            if len(b.tail) > len(a.tail) and b.tail[: len(a.tail)] == a.tail:
                continue  # B continues A (tool-call loop), it does not retry it
            marks.mark("retry", a.call_id, b.call_id, b.ts_us, b.ts_us - a.ts_us)


def _mark_rephrases(
    marks: _Marks, turns: list[_Turn], since_us: int, window_us: int, similarity: float
) -> None:
    """``rephrase``: the nearest earlier call of the same user that B's last message rephrases."""
    for group in _group(turns, lambda t: t.key).values():
        for i, b in enumerate(group):
            if b.ts_us < since_us:
                continue
            for a in reversed(group[:i]):
                if b.ts_us - a.ts_us > window_us:
                    break
                if _is_rephrase(a, b, similarity):
                    marks.mark("rephrase", a.call_id, b.call_id, b.ts_us, b.ts_us - a.ts_us)
                    break


def record_regenerations(writer: Any, events: Iterable[dict[str, Any]]) -> int:
    """Append detected events through a `gateway.store.LogWriter`; returns how many."""
    n = 0
    for rec in events:
        writer.append("events", dict(rec))
        n += 1
    return n


def _is_rephrase(a: _Turn, b: _Turn, threshold: float) -> bool:
    if not a.ok or a.last_user == b.last_user:
        return False
    edited = b.history == a.history
    followed_up = b.history_trimmed is not None and b.history_trimmed == a.full
    if not (edited or followed_up):
        return False
    return difflib.SequenceMatcher(None, a.last_user, b.last_user).ratio() >= threshold


def _group(turns: list[_Turn], key: Any) -> dict[Any, list[_Turn]]:
    groups: dict[Any, list[_Turn]] = defaultdict(list)
    for t in turns:
        groups[key(t)].append(t)
    return groups


def _turn(row: dict[str, Any], *, keep_text: bool = True) -> _Turn | None:
    sticky = next((f"{tag}:{row[col]}" for tag, col in _STICKY if row[col]), None)
    if sticky is None or not row["request"]:
        return None
    try:
        request = orjson.loads(row["request"])
    except orjson.JSONDecodeError:
        return None
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    last = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), default=None
    )
    if last is None:
        return None
    history = messages[:last]
    trimmed = (
        history[:-1]
        if history and isinstance(history[-1], dict) and history[-1].get("role") == "assistant"
        else None
    )
    status = row["status"]
    return _Turn(
        call_id=row["call_id"],
        ts_us=row["ts_us"],
        key=(row["route"] or "", sticky),
        prefix=_hash(messages[: last + 1]),
        history=_hash(history),
        history_trimmed=_hash(trimmed) if trimmed is not None else None,
        full=_hash(messages),
        tail=tuple(_hash(m) for m in messages[last + 1 :]),
        last_user=message_text(messages[last].get("content")) if keep_text else "",
        ok=not row["error_type"] and (status is None or status < 400),
    )


def _hash(value: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
