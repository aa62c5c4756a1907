"""From the logged request/response JSON to what the call page shows.

Pure functions, tolerant of anything: a body that is missing, not JSON, or shaped
unlike OpenAI's still renders (as raw text) rather than failing the page. Nothing here
escapes HTML; the templates do (Jinja2 autoescape).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from gateway.protocol.messages import message_text


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _tool_calls(raw: Any) -> list[dict[str, str]]:
    out = []
    for tc in raw if isinstance(raw, list) else ():
        if not isinstance(tc, dict):
            continue
        fn: dict[str, Any] = tc["function"] if isinstance(tc.get("function"), dict) else {}
        args = fn.get("arguments", "")
        parsed = _loads(args) if isinstance(args, str) else args
        pretty = json.dumps(parsed, indent=2, ensure_ascii=False) if parsed is not None else str(args)
        out.append({"id": str(tc.get("id") or ""), "name": str(fn.get("name") or "?"), "arguments": pretty})
    return out


def messages(request_json: str | None) -> list[dict[str, Any]]:
    """The request's messages as ``{role, name, content, tool_calls, tool_call_id}``."""
    body = _loads(request_json)
    if not isinstance(body, dict):
        return []
    out = []
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        out.append(
            {
                "role": str(m.get("role") or "?"),
                "name": m.get("name"),
                "content": message_text(m.get("content"), sep="\n", placeholders=True),
                "tool_calls": _tool_calls(m.get("tool_calls")),
                "tool_call_id": m.get("tool_call_id"),
            }
        )
    return out


def tools(request_json: str | None) -> list[str]:
    """Names of the tools the request offered."""
    body = _loads(request_json)
    names = []
    for t in (body.get("tools") or ()) if isinstance(body, dict) else ():
        if isinstance(t, dict) and isinstance(t.get("function"), dict):
            names.append(str(t["function"].get("name") or "?"))
    return names


def answer(call: dict[str, Any]) -> dict[str, Any]:
    """The first choice's message: ``{content, tool_calls}``; falls back on ``output_text``."""
    body = _loads(call.get("response"))
    message: dict[str, Any] = {}
    if isinstance(body, dict) and isinstance(body.get("choices"), list) and body["choices"]:
        first = body["choices"][0]
        if isinstance(first, dict) and isinstance(first.get("message"), dict):
            message = first["message"]
    content = message_text(message.get("content"), sep="\n", placeholders=True) if message else ""
    return {
        "content": content or call.get("output_text") or "",
        "tool_calls": _tool_calls(message.get("tool_calls")),
    }


def last_user_text(request_json: str | None, limit: int = 140) -> str:
    """The last user message, shortened: the calls list's one-line summary."""
    for m in reversed(messages(request_json)):
        if m["role"] == "user":
            text = " ".join(m["content"].split())
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return ""
