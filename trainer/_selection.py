"""Stages 2 to 4 of a dataset build (`trainer.dataset`): the source calls, parsed, set apart, filtered.

A logged call becomes a `SourceCall` (its messages, tools and served answer, parsed from the
logged bodies; a call without a usable request body is left out). `select` drops the
excluded calls and sets the golden ones apart; `filter_steps` are the failed-call filter and
the active quality `Filters`, which `apply_filters` runs over the pool in order, counting each
step's removals and checking each for removing a region of the input space
(`trainer._coverage.region_warnings`). A relabelled call passes the quality filters: a hard
case is corrected, not dropped.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.protocol.transform import RequestTransform
from trainer._coverage import region_warnings
from trainer.split import input_key


@dataclass(frozen=True)
class Filters:
    """Optional quality filters; each one is checked for removing a region of the input space."""

    thumbs_up_only: bool = False
    """Keep only calls with a thumbs up and no thumbs down (a user's or a reviewer's)."""
    min_rating: float | None = None
    """Keep only calls rated at least this (unrated calls are dropped)."""
    no_flags: bool = False
    """Drop calls that were flagged."""
    no_regenerated: bool = False
    """Drop calls the user asked again for."""
    where: str | None = None
    """An SQL predicate over ``calls_with_outcomes`` that kept calls must satisfy."""

    def active(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}


@dataclass
class SourceCall:
    """A logged call as a dataset build reads it (``row`` is its `queries.training_calls` row)."""

    call_id: str
    ts: dt.datetime
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    served: dict[str, Any] | None  # the served assistant message
    response: dict[str, Any] | None
    row: dict[str, Any]
    key: str = ""

    @property
    def relabelled(self) -> bool:
        return self.row.get("relabel") is not None


def parse_call(row: dict[str, Any]) -> SourceCall | None:
    """The call of a row, or None when its logged request has no messages to learn from."""
    try:
        request = json.loads(row["request"]) if row["request"] else None
    except json.JSONDecodeError:
        return None
    try:
        response = json.loads(row["response"]) if row["response"] else None
    except json.JSONDecodeError:
        # An upstream's 2xx garbage (HTML, a truncated body) is logged raw as a 502: the call has
        # no served answer, but a relabel of it is exactly the hard case to keep.
        response = None
    if not isinstance(response, dict):
        response = None
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("messages"), list)
        or not request["messages"]
    ):
        return None
    served = None
    choices = response.get("choices") if isinstance(response, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):  # any other shape: no answer
        msg = choices[0].get("message")
        if isinstance(msg, dict):
            served = assistant_message(msg)
    if served is None and row.get("output_text") is not None:
        served = {"role": "assistant", "content": row["output_text"]}
    tools = request.get("tools") or None
    call = SourceCall(row["call_id"], row["ts"], request["messages"], tools, served, response, row)
    call.key = input_key(call.messages, call.tools)
    return call


def assistant_message(msg: dict[str, Any]) -> dict[str, Any]:
    """An answer's message as a label: its content, and its tool calls when it made any."""
    out: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
    if msg.get("tool_calls"):
        out["tool_calls"] = msg["tool_calls"]
    return out


def answered_ok(row: dict[str, Any]) -> bool:
    """Whether the call was answered without an error."""
    status = row.get("status")
    return (status is None or 200 <= status < 300) and not row.get("error_type")


@dataclass
class Selection:
    """The parsed source calls, split into the golden set and the pool the filters narrow."""

    calls: list[SourceCall]
    excluded: set[str]
    golden_ids: set[str]
    golden: list[SourceCall]
    pool: list[SourceCall]
    removed_by: dict[str, int]
    warnings: list[str]


def select(
    rows: list[dict[str, Any]],
    tf: RequestTransform | None,
    golden_ids: set[str],
    golden_tag: str | None,
) -> Selection:
    """Stages 2 and 3: parse the calls (as the candidate is sent them), drop exclusions, set the golden ones apart."""
    calls = [c for c in (parse_call(r) for r in rows) if c is not None]
    if tf is not None:  # train on exactly what the candidate is served
        for c in calls:
            c.messages = tf.apply_messages(c.messages)
            c.key = input_key(c.messages, c.tools)
    kept = [c for c in calls if not c.row.get("excluded")]
    if golden_tag:
        golden_ids |= {c.call_id for c in kept if golden_tag in (c.row.get("tags") or [])}
    golden = [c for c in kept if c.call_id in golden_ids]
    warnings = []
    missing_golden = golden_ids - {c.call_id for c in golden}
    if missing_golden:
        warnings.append(
            f"{len(missing_golden)} golden call(s) not found among the source calls (or excluded)"
        )
    return Selection(
        calls=calls,
        excluded={c.call_id for c in calls} - {c.call_id for c in kept},
        golden_ids=golden_ids,
        golden=golden,
        pool=[c for c in kept if c.call_id not in golden_ids],
        removed_by={"no_body": len(rows) - len(calls), "excluded": len(calls) - len(kept)},
        warnings=warnings,
    )


Keep = Callable[[SourceCall], bool]


def filter_steps(filters: Filters, where_ids: set[str] | None) -> list[tuple[str, Keep]]:
    """Stage 4's steps in order: failed calls, then the active quality filters (relabelled calls pass them)."""
    steps: list[tuple[str, Keep]] = [
        ("errors", lambda c: c.relabelled or (answered_ok(c.row) and c.served is not None))
    ]
    if filters.thumbs_up_only:
        steps.append(("thumbs_up_only", lambda c: c.relabelled or _thumbs_up(c.row)))
    if filters.min_rating is not None:
        floor = filters.min_rating
        steps.append(
            (
                "min_rating",
                lambda c: c.relabelled or (c.row["rating"] is not None and c.row["rating"] >= floor),
            )
        )
    if filters.no_flags:
        steps.append(("no_flags", lambda c: c.relabelled or not c.row["flags"]))
    if filters.no_regenerated:
        steps.append(("no_regenerated", lambda c: c.relabelled or not c.row["regenerated"]))
    if where_ids is not None:
        steps.append(("where", lambda c: c.call_id in where_ids))
    return steps


def _thumbs_up(row: dict[str, Any]) -> bool:
    """A thumbs up (a user's or a reviewer's) and no thumbs down."""
    ups = (row["thumbs_up"] or 0) + (row["reviewer_thumbs_up"] or 0)
    return ups > 0 and not row["thumbs_down"] and not row["reviewer_thumbs_down"]


def apply_filters(sel: Selection, steps: list[tuple[str, Keep]]) -> list[SourceCall]:
    """The pool once every step ran, each step's removals counted and checked for a removed region."""
    pool = sel.pool
    for step, keep in steps:
        after = [c for c in pool if keep(c)]
        removed = {c.call_id for c in pool} - {c.call_id for c in after}
        sel.removed_by[step] = len(removed)
        for rw in region_warnings(step, [(c.call_id, c.messages, c.tools) for c in pool], removed):
            sel.warnings.append(rw.message())
        pool = after
    return pool
