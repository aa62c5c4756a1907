"""Drift's samples: what one logged call looks like to the checks, and the windows they come from."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evals.errors import DriftError
from gateway import durations
from gateway.store import LogStore


@dataclass(frozen=True)
class Sample:
    """One request as drift sees it: the user's text, whether tools were in play, the output."""

    text: str
    tools: bool = False
    output: str | None = None
    source_id: str | None = None


def message_text(content: Any) -> str:
    """A message's content as text: a string as is, the text parts of a list joined by spaces.

    Drift's only content->text helper (to become `gateway.protocol`'s ``message_text``)."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content) if content else ""


def sample_from_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: bool = False,
    output: str | None = None,
    source_id: str | None = None,
) -> Sample:
    """A `Sample` from chat messages: user and tool contents (system prompts are config, not traffic)."""
    parts = []
    for msg in messages:
        if not isinstance(msg, Mapping):
            continue
        role = msg.get("role")
        tools = tools or bool(msg.get("tool_calls")) or role == "tool"
        if role in ("system", "developer", "assistant"):
            continue
        content = message_text(msg.get("content"))
        if content:
            parts.append(content)
    return Sample("\n".join(parts), tools, output, source_id)


def sample_from_call(
    request: str | None, output_text: str | None, response: str | None, call_id: str
) -> Sample:
    try:
        req = json.loads(request or "{}")
    except json.JSONDecodeError:
        req = {}
    tools = bool(req.get("tools") or req.get("functions"))
    output = output_text
    try:
        msg = json.loads(response or "{}")["choices"][0]["message"]
        tools = tools or bool(msg.get("tool_calls"))
        if output is None and msg.get("tool_calls"):
            output = json.dumps(msg["tool_calls"])
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        pass
    return sample_from_messages(req.get("messages") or (), tools=tools, output=output, source_id=call_id)


WINDOW_SQL = """
SELECT call_id, request, output_text, response FROM calls
WHERE route = $route AND served AND coalesce(status, 200) < 400 AND ts >= $since AND ts < $until
ORDER BY hash(call_id) LIMIT $limit
"""


def load_window(
    store: LogStore, route: str, since: dt.datetime, until: dt.datetime, *, limit: int = 5000
) -> list[Sample]:
    """Served calls of ``route`` in ``[since, until)`` (a deterministic pseudo-random sample of ``limit``)."""
    rows = store.sql(WINDOW_SQL, {"route": route, "since": since, "until": until, "limit": limit})
    return [sample_from_call(r["request"], r["output_text"], r["response"], r["call_id"]) for r in rows]


def load_dataset_reference(log_dir: str, name: str) -> list[Sample]:
    """The training split of a dataset (every row when it has no split column) as samples."""
    from evals.golden.sets import read_dataset

    examples = read_dataset(log_dir, name, split="train", fallback_all=True)
    return [
        sample_from_messages(
            e.messages, tools=bool(e.meta.get("tools")), output=e.reference, source_id=e.example_id
        )
        for e in examples
    ]


def parse_duration(text: str) -> dt.timedelta:
    """``30m``, ``24h``, ``7d``, ``2w`` -> a timedelta (`gateway.durations`)."""
    try:
        return durations.parse_duration(text)
    except ValueError as exc:
        raise DriftError(str(exc)) from None
