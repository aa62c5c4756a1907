"""Log rows of the API surfaces other than chat completions: ``responses`` and ``completions``.

Rows are told apart by their ``endpoint`` column (``chat.completions``, ``embeddings``,
``responses``, ``completions``). What the request path logs for these is what it logs for
chat: the raw request body and the raw answer (JSON, or SSE text). Here, off the request
path, a streamed answer becomes one JSON object and the derived columns are filled:

* ``responses`` (Responses API): the stream's last ``response.completed`` /
  ``response.incomplete`` / ``response.failed`` event carries the whole response object, which
  becomes the row's ``response``; ``output_text`` is the text of the ``output_text`` parts of
  its message items, ``finish_reason`` the response's ``status`` (or the incomplete reason).
  A stream that broke off before its final event keeps the text of its deltas.
* ``completions`` (legacy): chunks' ``choices[].text`` concatenated per choice;
  ``output_text`` is the first choice's text.

Token counts come from ``usage`` (``input_tokens`` / ``output_tokens`` or the chat names).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

_FINAL = ("response.completed", "response.incomplete", "response.failed")


def _payloads(sse: str) -> list[dict[str, Any]]:
    out = []
    for line in sse.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def assemble_responses(sse: str) -> dict[str, Any]:
    """The response object of a streamed Responses API answer (see the module docstring)."""
    events = _payloads(sse)
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
    chunks = _payloads(sse)
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
    "responses": assemble_responses,
    "completions": assemble_completions,
}


def derive(rec: dict[str, Any], resp: dict[str, Any]) -> None:
    """Fill ``output_text`` and ``finish_reason`` of a ``responses`` / ``completions`` row."""
    endpoint = rec.get("endpoint")
    if endpoint == "responses":
        if rec.get("output_text") is None:
            parts = [
                str(part.get("text") or "")
                for item in _items(resp.get("output"))
                if isinstance(item, dict) and item.get("type") == "message"
                for part in _items(item.get("content"))
                if isinstance(part, dict) and part.get("type") == "output_text"
            ]
            rec["output_text"] = "".join(parts) if parts else None
        if rec.get("finish_reason") is None:
            details = resp.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            rec["finish_reason"] = _str(reason) or _str(resp.get("status"))
    elif endpoint == "completions":
        choices = _items(resp.get("choices"))
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        if rec.get("output_text") is None and isinstance(first.get("text"), str):
            rec["output_text"] = first["text"]
        if rec.get("finish_reason") is None:
            rec["finish_reason"] = _str(first.get("finish_reason"))


def _items(value: Any) -> list[Any]:
    """A list from the upstream's body, or nothing: its values are not ours to trust."""
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
