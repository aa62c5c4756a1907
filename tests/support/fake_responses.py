"""The Responses API (``POST /v1/responses``) and legacy completions (``POST /v1/completions``)
of `FakeUpstream`, scripted by the model name like its chat completions:

* any model: answers ``"<model>: <last user text>"``; ``stream`` sends the typed events
  (``response.created`` ... ``response.output_text.delta`` ... ``response.completed``);
* ``errevent``: streams ``response.created`` and one delta, then an ``error`` event;
* ``failed``: streams ``response.created``, then ``response.failed``;
* ``error-<status>``: that status with an OpenAI error body;
* ``badjson``: 200 with a truncated JSON body.

A ``previous_response_id`` the server did not create answers 404, as OpenAI does; the ids it
created are kept in ``FakeUpstream.response_ids``. Responses created without ``store: false``
are kept in ``FakeUpstream.stored`` with their input items, for ``GET /v1/responses/{id}``
(``stream=true`` re-sends ``response.created`` and the final event, after ``starting_after``),
``DELETE``, ``GET .../input_items`` (``after``, ``limit``, ``order``) and ``POST .../cancel`` (a
``background: true`` response, answered ``queued``, becomes ``cancelled``; others answer 400).
An unknown id answers OpenAI's 404.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
from aiohttp import web


def _input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    for item in reversed(value or []):
        if isinstance(item, dict) and item.get("role", "user") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            for part in content or []:
                if isinstance(part, dict) and part.get("type") == "input_text":
                    return str(part.get("text"))
    return ""


def _response(rid: str, model: str, text: str, status: str, prev: str | None) -> dict[str, Any]:
    output = []
    if status == "completed":
        output = [
            {
                "type": "message",
                "id": f"msg_{rid[5:]}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": model,
        "output": output,
        "usage": {
            "input_tokens": 7,
            "output_tokens": len(text.split()),
            "total_tokens": 7 + len(text.split()),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "previous_response_id": prev,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
    }


async def responses(up: Any, request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())  # orjson: deep nesting parses (stdlib json recurses)
    up.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
    model: str = body.get("model", "")
    if model.startswith("error-"):
        status = int(model.split("-", 1)[1])
        error = {"message": f"scripted {status}", "type": "server_error", "param": None, "code": None}
        return web.json_response({"error": error}, status=status)
    prev = body.get("previous_response_id")
    if prev is not None and prev not in up.response_ids:
        error = {
            "message": f"Previous response with id '{prev}' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
        return web.json_response({"error": error}, status=404)
    rid = f"resp_{time.time_ns()}"
    up.response_ids.add(rid)
    text = f"{model}: {_input_text(body.get('input'))}"
    if body.get("store", True) is not False:
        status = "queued" if body.get("background") else "completed"
        up.stored[rid] = {"response": _response(rid, model, text, status, prev), "items": _items(rid, body)}
        if body.get("background"):
            return web.json_response(up.stored[rid]["response"])
    if model == "badjson":
        data = json.dumps(_response(rid, model, text, "completed", prev)).encode()
        return web.Response(body=data[: len(data) // 2], content_type="application/json")
    if not body.get("stream"):
        return web.json_response(_response(rid, model, text, "completed", prev))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    seq = 0

    async def emit(kind: str, **fields: Any) -> None:
        nonlocal seq
        event = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        await resp.write(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())

    item_id = f"msg_{rid[5:]}"
    await emit("response.created", response=_response(rid, model, "", "in_progress", prev))
    await emit("response.in_progress", response=_response(rid, model, "", "in_progress", prev))
    if model == "failed":
        failed = _response(rid, model, "", "failed", prev)
        failed["error"] = {"code": "server_error", "message": "the model failed"}
        await emit("response.failed", response=failed)
        await resp.write_eof()
        return resp
    item = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}
    await emit("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    await emit("response.content_part.added", item_id=item_id, output_index=0, content_index=0, part=part)
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    for k, piece in enumerate(pieces):
        await emit(
            "response.output_text.delta",
            item_id=item_id,
            output_index=0,
            content_index=0,
            delta=piece,
            logprobs=[],
        )
        if model == "errevent" and k == 0:
            await emit("error", code="server_error", message="the model overloaded midway", param=None)
            await resp.write_eof()
            return resp
    await emit(
        "response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text, logprobs=[]
    )
    done_part = {"type": "output_text", "text": text, "annotations": []}
    await emit("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=done_part)
    final = _response(rid, model, text, "completed", prev)
    await emit("response.output_item.done", output_index=0, item=final["output"][0])
    await emit("response.completed", response=final)
    await resp.write_eof()
    return resp


def _items(rid: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("input")
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    items = []
    for i, item in enumerate(value or []):
        if isinstance(item, dict):
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": "input_text", "text": content}]
            role = item.get("role", "user")
            items.append({"type": "message", "id": f"msg_{rid[5:]}_{i}", "role": role, "content": content})
    return items


def _not_found(rid: str) -> web.Response:
    error = {"message": f"Response with id '{rid}' not found.", "type": "invalid_request_error"}
    return web.json_response({"error": {**error, "param": None, "code": None}}, status=404)


def _seen(up: Any, request: web.Request) -> str:
    up.requests.append(
        {
            "path": request.path,
            "method": request.method,
            "query": list(request.query.items()),
            "headers": dict(request.headers),
            "body": None,
        }
    )
    return request.match_info["rid"]


async def retrieve(up: Any, request: web.Request) -> web.StreamResponse:
    rid = _seen(up, request)
    if rid not in up.stored:
        return _not_found(rid)
    final = up.stored[rid]["response"]
    if request.query.get("stream") != "true":
        return web.json_response(final)
    after = int(request.query.get("starting_after", "-1"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    created = {**final, "status": "in_progress", "output": []}
    for seq, (kind, obj) in enumerate([("response.created", created), ("response.completed", final)]):
        if seq > after:
            event = {"type": kind, "sequence_number": seq, "response": obj}
            await resp.write(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())
    await resp.write_eof()
    return resp


async def delete(up: Any, request: web.Request) -> web.Response:
    rid = _seen(up, request)
    if up.stored.pop(rid, None) is None:
        return _not_found(rid)
    return web.json_response({"id": rid, "object": "response", "deleted": True})


async def input_items(up: Any, request: web.Request) -> web.Response:
    rid = _seen(up, request)
    if rid not in up.stored:
        return _not_found(rid)
    items = list(up.stored[rid]["items"])
    if request.query.get("order", "desc") == "desc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(request.query.get("limit", "20"))
    page = items[:limit]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


async def cancel(up: Any, request: web.Request) -> web.Response:
    rid = _seen(up, request)
    if rid not in up.stored:
        return _not_found(rid)
    response = up.stored[rid]["response"]
    if response["status"] not in ("queued", "in_progress"):
        error = {"message": "Only background responses can be cancelled.", "type": "invalid_request_error"}
        return web.json_response({"error": {**error, "param": None, "code": None}}, status=400)
    response["status"] = "cancelled"
    return web.json_response(response)


async def completions(up: Any, request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())  # orjson: deep nesting parses (stdlib json recurses)
    up.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
    model: str = body.get("model", "")
    prompt = body.get("prompt")
    text = f"{model}: {prompt if isinstance(prompt, str) else json.dumps(prompt)}"
    cid = f"cmpl-{time.time_ns()}"
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": len(text.split()),
        "total_tokens": 5 + len(text.split()),
    }
    if not body.get("stream"):
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}
        return web.json_response(
            {
                "id": cid,
                "object": "text_completion",
                "created": 1,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    def chunk(piece: str, finish: str | None) -> bytes:
        choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}
        obj = {"id": cid, "object": "text_completion", "created": 1, "model": model, "choices": [choice]}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    for i in range(0, len(text), 4):
        await resp.write(chunk(text[i : i + 4], None))
    await resp.write(chunk("", "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        obj = {
            "id": cid,
            "object": "text_completion",
            "created": 1,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp
