"""Server-sent events: framed (`event`, `DONE`), and assembled into the one JSON object they stand for.

The request path relays a stream chunk by chunk and logs its raw SSE text; off the request
path (`gateway.store.rows`, in the log agent) that text becomes the answer a non-streamed
call would have had, per surface (`assemble`):

* ``chat.completions``: a ``chat.completion`` (`assemble_chat`): content, refusal and
  tool-call argument deltas concatenated per choice, finish reasons, logprobs, the usage
  chunk (``stream_options.include_usage``) and an error event kept;
* ``responses`` (Responses API): the response object of the last ``response.completed`` /
  ``response.incomplete`` / ``response.failed`` event; a stream that broke off before it
  keeps the text of its deltas (`assemble_responses`);
* ``completions`` (legacy): a ``text_completion``, ``choices[].text`` concatenated per
  choice (`assemble_completions`).

A stream the gateway writes itself (an error event, a provider SDK's chunks, the trainer's dev
server) is framed by `event` and, for chat and legacy completions, ends with `DONE`.

Payloads are the upstream's, not ours: every value is type-checked before use, and a
stream of no known shape raises (the caller keeps the raw text). Import-light: orjson only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

_FINAL = ("response.completed", "response.incomplete", "response.failed")

DONE = b"data: [DONE]\n\n"
"""The event that ends a chat or legacy completions stream."""


def event(data: Any, *, name: str | None = None) -> bytes:
    """One event: ``data`` as JSON (bytes are taken as already encoded), after ``event: name`` when named."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + payload + b"\n\n"


def payloads(sse: str) -> list[Any]:
    """The JSON values of an SSE text's ``data:`` events (``[DONE]`` and unparseable ones left out).

    Parsed in one ``orjson.loads`` when the stream is plain ``data: {...}`` events (the common
    case), line by line otherwise.
    """
    return _payloads(sse, _events_array(sse))


def _payloads(sse: str, events: str | None) -> list[Any]:
    """`payloads`, given the stream's `_events_array`."""
    if events is not None:
        try:
            parsed = orjson.loads(events)
            if isinstance(parsed, list):
                return parsed
        except orjson.JSONDecodeError:
            pass
    return _line_payloads(sse)


def _events_array(sse: str) -> str | None:
    """The payloads of a stream of plain ``data: {...}`` events as the text of one JSON array;
    None for a stream of another framing."""
    body = sse.rstrip()
    if body.endswith("data: [DONE]"):
        body = body[:-12].rstrip()
    if not body.startswith("data: "):
        return None
    return "[" + body[6:].replace("\n\ndata: ", ",") + "]"


def _line_payloads(sse: str) -> list[Any]:
    """`payloads` line by line: events with an ``event:`` line, or ``data:`` without its space."""
    out = []
    for line in sse.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            continue
        try:
            out.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            continue
    return out


def _objects(sse: str, events: str | None = None) -> list[dict[str, Any]]:
    """The stream's object payloads (``events``: its `_events_array`, when already built)."""
    return [
        c for c in _payloads(sse, events if events is not None else _events_array(sse)) if isinstance(c, dict)
    ]


# -- chat completions ----------------------------------------------------------------------
def assemble_chat(sse: str) -> dict[str, Any]:
    """Rebuild a ``chat.completion`` object from the SSE text of a streamed completion.

    The common case — one choice, text deltas only — takes a fast path: typed chunks
    (`gateway.protocol.chunks`), else the same over dicts (`_text_stream`).
    """
    events = _events_array(sse)
    if events is not None:
        from gateway.protocol.chunks import text_stream  # msgspec: only where streams are assembled

        typed = text_stream(events)
        if typed is not None:
            return _completion(*typed)
    chunks = _objects(sse, events)
    fast = _text_stream(chunks)
    if fast is not None:
        return fast
    simple = _single_choice(chunks)
    if simple is not None:
        base, choices, usage, error = simple
    else:
        base, choices, usage, error = _merged_choices(chunks)
    return _completion(base, choices, usage, error)


def _completion(
    base: dict[str, Any], choices: list[dict[str, Any]], usage: Any, error: Any = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": base.get("id"),
        "object": "chat.completion",
        "created": base.get("created"),
        "model": base.get("model"),
        "choices": choices,
    }
    if base.get("system_fingerprint"):
        out["system_fingerprint"] = base["system_fingerprint"]
    if usage is not None:
        out["usage"] = usage
    if error is not None:
        out["error"] = error
    return out


def _text_stream(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One choice of plain text deltas (most streams), in one pass; None if not that shape.

    Not that shape: an error event, several choices, an index other than 0, tool calls,
    logprobs, a refusal, a choice without a ``delta`` object, text that is not a string.
    """
    texts: list[str] = []
    role = finish = usage = None
    seen = False
    try:
        for c in chunks:
            if "error" in c:
                return None
            if c.get("usage"):
                usage = c["usage"]
            choices = c.get("choices")
            if not choices:
                continue
            if len(choices) > 1:
                return None
            ch = choices[0]
            d = ch["delta"]
            if ch.get("logprobs") or ch.get("index", 0) or d.get("refusal") or "tool_calls" in d:
                return None
            seen = True
            piece = d.get("content")
            if piece:
                texts.append(piece)
            if role is None and d.get("role"):
                role = d["role"]
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
        text = "".join(texts)
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    base = chunks[0] if chunks else {}
    message = {"role": role or "assistant", "content": text or None}
    choices_out = [{"index": 0, "message": message, "finish_reason": finish}] if seen else []
    return _completion(base, choices_out, usage)


_Parts = tuple[dict[str, Any], list[dict[str, Any]], Any, Any]


def _single_choice(chunks: list[dict[str, Any]]) -> _Parts | None:
    """Base chunk, choices, usage and error of a one-choice stream without tools or logprobs; else None."""
    base: dict[str, Any] = {}
    usage = error = role = finish = None
    texts: list[str] = []
    for chunk in chunks:
        if "error" in chunk:
            error = chunk["error"]
            continue
        if not base:
            base = chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices:
            continue
        if len(choices) > 1:
            return None
        ch = choices[0]
        delta = ch.get("delta") or {}
        if ch.get("index", 0) != 0 or "tool_calls" in delta or ch.get("logprobs") or delta.get("refusal"):
            return None
        piece = delta.get("content")
        if piece:
            texts.append(piece)
        if delta.get("role"):
            role = delta["role"]
        if ch.get("finish_reason"):
            finish = ch["finish_reason"]
    message = {"role": role or "assistant", "content": "".join(texts) or None}
    out = [{"index": 0, "message": message, "finish_reason": finish}] if texts or role or finish else []
    return base, out, usage, error


def _merged_choices(chunks: list[dict[str, Any]]) -> _Parts:
    """Every choice of the stream merged by index (several choices, tool calls, logprobs, refusals)."""
    base: dict[str, Any] = {}
    usage = error = None
    merged: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if "error" in chunk:
            error = chunk["error"]
            continue
        if not base:
            base = chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            _merge_choice(merged, ch)
    return base, [_finish_choice(merged[i]) for i in sorted(merged)], usage, error


def _merge_choice(choices: dict[int, dict[str, Any]], ch: dict[str, Any]) -> None:
    idx = ch.get("index", 0)
    acc = choices.setdefault(idx, {"index": idx, "role": None, "content": [], "tools": {}, "finish": None})
    delta = ch.get("delta") or {}
    if delta.get("role"):
        acc["role"] = delta["role"]
    if delta.get("content"):
        acc["content"].append(delta["content"])
    if delta.get("refusal"):
        acc.setdefault("refusal", []).append(delta["refusal"])
    for tc in delta.get("tool_calls") or ():
        slot = acc["tools"].setdefault(
            tc.get("index", 0), {"id": None, "type": "function", "name": [], "arguments": []}
        )
        if tc.get("id"):
            slot["id"] = tc["id"]
        if tc.get("type"):
            slot["type"] = tc["type"]
        fn = tc.get("function") or {}
        if fn.get("name"):
            slot["name"].append(fn["name"])
        if fn.get("arguments"):
            slot["arguments"].append(fn["arguments"])
    if ch.get("logprobs"):
        lp = acc.setdefault("logprobs", {"content": []})
        lp["content"].extend((ch["logprobs"] or {}).get("content") or ())
    if ch.get("finish_reason"):
        acc["finish"] = ch["finish_reason"]


def _finish_choice(acc: dict[str, Any]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": acc["role"] or "assistant", "content": "".join(acc["content"]) or None}
    if acc.get("refusal"):
        msg["refusal"] = "".join(acc["refusal"])
    if acc["tools"]:
        msg["tool_calls"] = [
            {
                "id": t["id"],
                "type": t["type"],
                "function": {"name": "".join(t["name"]), "arguments": "".join(t["arguments"])},
            }
            for _, t in sorted(acc["tools"].items())
        ]
    out = {"index": acc["index"], "message": msg, "finish_reason": acc["finish"]}
    if acc.get("logprobs"):
        out["logprobs"] = acc["logprobs"]
    return out


# -- the Responses API and legacy completions -----------------------------------------------
def _event_objects(sse: str) -> list[dict[str, Any]]:
    """Line by line: typed events may carry an ``event:`` line before their ``data:``."""
    return [obj for obj in _line_payloads(sse) if isinstance(obj, dict)]


def assemble_responses(sse: str) -> dict[str, Any]:
    """The response object of a streamed Responses API answer (see the module docstring)."""
    events = _event_objects(sse)
    error = None
    for event in reversed(events):
        if event.get("type") in _FINAL and isinstance(event.get("response"), dict):
            return dict(event["response"])
    base: dict[str, Any] = {}
    texts: list[str] = []
    for event in events:
        kind = event.get("type")
        if kind == "response.created" and isinstance(event.get("response"), dict):
            base = dict(event["response"])
        elif kind == "response.output_text.delta":
            texts.append(str(event.get("delta") or ""))
        elif kind == "error":
            error = {k: event.get(k) for k in ("code", "message", "param")}
    out: dict[str, Any] = {**base, "object": "response", "status": "failed" if error else "incomplete"}
    out["output"] = [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "".join(texts)}]}
    ]
    if error is not None:
        out["error"] = error
    return out


def assemble_completions(sse: str) -> dict[str, Any]:
    """A ``text_completion`` object from the chunks of a streamed legacy completion."""
    chunks = _event_objects(sse)
    base = next((c for c in chunks if "choices" in c), {})
    texts: dict[int, list[str]] = {}
    finish: dict[int, Any] = {}
    usage = None
    error = None
    for chunk in chunks:
        if "error" in chunk:
            error = chunk["error"]
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            if not isinstance(ch, dict):
                continue
            idx = int(ch.get("index") or 0)
            texts.setdefault(idx, []).append(str(ch.get("text") or ""))
            if ch.get("finish_reason"):
                finish[idx] = ch["finish_reason"]
    out: dict[str, Any] = {
        "id": base.get("id"),
        "object": "text_completion",
        "created": base.get("created"),
        "model": base.get("model"),
        "choices": [
            {"index": i, "text": "".join(texts[i]), "finish_reason": finish.get(i)} for i in sorted(texts)
        ],
    }
    if usage is not None:
        out["usage"] = usage
    if error is not None:
        out["error"] = error
    return out


ASSEMBLE: dict[str, Callable[[str], dict[str, Any]]] = {
    "chat.completions": assemble_chat,
    "responses": assemble_responses,
    "completions": assemble_completions,
}


def assemble(endpoint: str | None, sse: str) -> dict[str, Any]:
    """The answer a streamed call of ``endpoint`` stands for (chat completions for any other)."""
    return ASSEMBLE.get(endpoint or "", assemble_chat)(sse)
