"""Upstream misbehaviour for `FakeUpstream`, scripted by the model name (chat completions):

* ``badjson``: 200, ``application/json``, a truncated JSON body.
* ``notjson``: 200, ``application/json``, an HTML page.
* ``errevent``: streams two chunks, then ``data: {"error": ...}`` and ``[DONE]`` (a normal
  answer when not streamed).
* ``gzip`` / ``deflate`` / ``rawdeflate``: the normal answer (streamed or not), compressed with
  that ``Content-Encoding`` although the gateway did not ask for it.
* ``br``: bytes labelled ``Content-Encoding: br`` that are not brotli.
* ``cut``: a ``Content-Length`` body that stops halfway (the connection drops).
* ``drip-<seconds>``: the JSON answer a few bytes at a time, ``seconds`` between writes.
* ``huge-<n>``: an answer of ``n`` characters, streamed in 64 KiB chunks when streamed.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from typing import Any

from aiohttp import web

FAULTS = frozenset({"badjson", "notjson", "errevent", "gzip", "deflate", "rawdeflate", "br", "cut"})


def is_fault(model: str) -> bool:
    return model in FAULTS or model.startswith(("drip-", "huge-"))


def _answer(model: str, text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{time.time_ns()}",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _events(model: str, text: str) -> list[bytes]:
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    out = [_chunk(model, {"role": "assistant", "content": ""})]
    out += [_chunk(model, {"content": p}) for p in pieces]
    out += [_chunk(model, {}, "stop"), b"data: [DONE]\n\n"]
    return out


def _compressor(kind: str) -> Any:
    if kind == "gzip":
        return zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    if kind == "rawdeflate":
        return zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return zlib.compressobj()


async def answer(request: web.Request, body: dict[str, Any], model: str, text: str) -> web.StreamResponse:
    stream = bool(body.get("stream"))
    if model == "badjson":
        data = json.dumps(_answer(model, text)).encode()
        return web.Response(body=data[: len(data) // 2], content_type="application/json")
    if model == "notjson":
        return web.Response(text="<html><body>maintenance</body></html>", content_type="application/json")
    if model in ("gzip", "deflate", "rawdeflate"):
        header = "deflate" if model == "rawdeflate" else model
        comp = _compressor(model)
        if not stream:
            data = comp.compress(json.dumps(_answer(model, text)).encode()) + comp.flush()
            return web.Response(
                body=data, headers={"Content-Type": "application/json", "Content-Encoding": header}
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": header})
        await resp.prepare(request)
        for event in _events(model, text):
            await resp.write(comp.compress(event) + comp.flush(zlib.Z_SYNC_FLUSH))
            await asyncio.sleep(0)
        await resp.write(comp.flush())
        await resp.write_eof()
        return resp
    if model == "br":
        return web.Response(
            body=b"\x8b\x00not-brotli-at-all" * 8,
            headers={
                "Content-Type": "text/event-stream" if stream else "application/json",
                "Content-Encoding": "br",
            },
        )
    if model == "cut":
        data = json.dumps(_answer(model, text)).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return resp
    if model.startswith("drip-"):
        gap = float(model.split("-", 1)[1])
        data = json.dumps(_answer(model, text)).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        step = max(1, len(data) // 5)
        for i in range(0, len(data), step):
            await resp.write(data[i : i + step])
            await asyncio.sleep(gap)
        await resp.write_eof()
        return resp
    if model.startswith("huge-"):
        size = int(model.split("-", 1)[1])
        if not stream:
            return web.json_response(_answer(model, "x" * size))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk(model, {"role": "assistant", "content": ""}))
        piece = "x" * 65536
        for i in range(0, size, 65536):
            await resp.write(_chunk(model, {"content": piece[: min(65536, size - i)]}))
        await resp.write(_chunk(model, {}, "stop") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    # errevent
    if not stream:
        return web.json_response(_answer(model, text))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in _events(model, text)[:2]:
        await resp.write(event)
    error = {
        "error": {"message": "the model overloaded midway", "type": "server_error", "code": "overloaded"}
    }
    await resp.write(b"data: " + json.dumps(error).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp
