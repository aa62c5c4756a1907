"""An Anthropic-shaped provider for `FakeUpstream`: ``POST /v1/messages`` (what litellm calls for
``provider: anthropic`` with an ``api_base``), streamed (``message_start`` ...
``content_block_delta`` ... ``message_stop``) or not. ``error-<status>`` answers that status with
Anthropic's error body; any other model answers ``"<model>: <last user text>"``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            return " ".join(str(b.get("text")) for b in content or [] if isinstance(b, dict))
    return ""


async def messages(up: Any, request: web.Request) -> web.StreamResponse:
    body = await request.json()
    up.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
    model: str = body.get("model", "")
    if model.startswith("error-"):
        status = int(model.split("-", 1)[1])
        error = {"type": "error", "error": {"type": "overloaded_error", "message": f"scripted {status}"}}
        return web.json_response(error, status=status)
    text = f"{model}: {_last_user(body.get('messages') or [])}"
    words = len(text.split())
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 7, "output_tokens": words},
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def emit(kind: str, **fields: Any) -> None:
        await resp.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode())

    start = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 0},
    }
    await emit("message_start", message=start)
    await emit("content_block_start", index=0, content_block={"type": "text", "text": ""})
    for i in range(0, len(text), 4):
        await emit("content_block_delta", index=0, delta={"type": "text_delta", "text": text[i : i + 4]})
    await emit("content_block_stop", index=0)
    await emit(
        "message_delta",
        delta={"stop_reason": "end_turn", "stop_sequence": None},
        usage={"output_tokens": words},
    )
    await emit("message_stop")
    await resp.write_eof()
    return resp
