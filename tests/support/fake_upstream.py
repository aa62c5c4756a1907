"""A fake OpenAI-compatible provider: a real HTTP server (aiohttp) on 127.0.0.1, port 0.

Behaviour is scripted by the model name the gateway sends upstream:

* ``echo-*`` (default): answers ``"<model>: <last user message>"``; honours ``n``,
  ``tools`` (calls the first tool with ``{"q": <last user message>}``),
  ``response_format`` (JSON object), ``logprobs`` and ``stream`` (+ ``include_usage``).
* ``error-<status>``: answers that status with an OpenAI error body, every time.
* ``flaky-<status>``: answers that status once per distinct request (by last message), then succeeds.
* ``slow-<seconds>``: waits before answering (headers included).
* ``stall``: streams two chunks, then hangs (for timeouts and disconnects).
* ``break``: streams two chunks, then drops the connection.
* ``len-<n>``: answers ``n`` characters.
* ``extract-*``: a prompted extraction model: ``Order from Alice: 3 lamp to Paris. Ordered on
  2024-05-14.`` -> ``{"name": "Alice", "qty": 3, "item": "lamp", "city": "Paris", "date": "2024-05-14"}``
  (`extract_order`; the date copied from the message, as a good prompt makes a model do).
* ``reject-<status>``: answers that status with an OpenAI error naming ``param`` and ``code``.
* ``html-<status>``: answers that status with a non-JSON (HTML) body.
* any model in ``FakeUpstream.scripted``: that exact status, headers and body bytes.
* broken JSON, mid-stream error events, compressed answers, cut bodies, slow bytes, huge
  answers: see `tests.support.fake_faults` (``badjson``, ``errevent``, ``gzip``, ``drip-<s>``...).

A request field ``x_reply_extra`` (an object) is merged into the answer (every chunk when
streamed), to check that unknown response fields come back unchanged. ``extra_headers``
are added to every chat answer (e.g. a provider's own ``x-request-id``).

``/v1/responses`` (with its stored responses: retrieve, delete, input items, cancel) and
``/v1/completions``: see `tests.support.fake_responses`; an
Anthropic-shaped ``/v1/messages`` (for the litellm path): `tests.support.fake_anthropic`.

Every request is recorded in ``FakeUpstream.requests`` (path, headers, JSON body).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
from typing import Any

from aiohttp import web

from tests.support import fake_anthropic, fake_faults, fake_responses


class FakeUpstream:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context  # served over TLS (https://127.0.0.1) when given
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.cancelled = 0
        self.extra_headers: dict[str, str] = {}
        self._flaky_seen: set[str] = set()
        self.response_ids: set[str] = set()
        self.stored: dict[str, dict[str, Any]] = {}  # response id -> {"response", "items"} (store != false)
        # model name -> (status, headers, raw body): answered byte for byte (hypothesis tests)
        self.scripted: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}/v1"

    # -- server life cycle ---------------------------------------------------------------
    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self.chat)
            app.router.add_post("/v1/embeddings", self.embeddings)
            app.router.add_get("/v1/models", self.models)
            app.router.add_post("/v1/responses", lambda r: fake_responses.responses(self, r))
            app.router.add_post("/v1/completions", lambda r: fake_responses.completions(self, r))
            app.router.add_get("/v1/responses/{rid}", lambda r: fake_responses.retrieve(self, r))
            app.router.add_delete("/v1/responses/{rid}", lambda r: fake_responses.delete(self, r))
            app.router.add_get(
                "/v1/responses/{rid}/input_items", lambda r: fake_responses.input_items(self, r)
            )
            app.router.add_post("/v1/responses/{rid}/cancel", lambda r: fake_responses.cancel(self, r))
            app.router.add_post("/v1/messages", lambda r: fake_anthropic.messages(self, r))
            self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # -- handlers --------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(x))), 0.5, -0.5]}
            for i, x in enumerate(inputs)
        ]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    def _record(self, request: web.Request, body: Any) -> None:
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "invalid JSON", "invalid_request_error")
        self._record(request, body)
        model: str = body.get("model", "")
        last = _last_user(body.get("messages") or [])
        self.in_flight += 1
        try:
            if model in self.scripted:
                status, headers, raw = self.scripted[model]
                return web.Response(status=status, headers=headers, body=raw)
            if fake_faults.is_fault(model):
                return await fake_faults.answer(request, body, model, f"{model}: {last}")
            if model.startswith("reject-"):
                status = int(model.split("-", 1)[1])
                return web.json_response(
                    {
                        "error": {
                            "message": f"rejected {status}",
                            "type": "invalid_request_error",
                            "param": "messages",
                            "code": "scripted_reject",
                        }
                    },
                    status=status,
                )
            if model.startswith("html-"):
                status = int(model.split("-", 1)[1])
                return web.Response(status=status, text="<html>bad gateway</html>", content_type="text/html")
            if model.startswith("error-"):
                status = int(model.split("-", 1)[1])
                return _error(
                    status, f"scripted {status}", "rate_limit_error" if status == 429 else "server_error"
                )
            if model.startswith("flaky-"):
                key = f"{model}:{last}"
                if key not in self._flaky_seen:
                    self._flaky_seen.add(key)
                    return _error(int(model.split("-", 1)[1]), "flaky", "server_error")
            if model.startswith("slow-"):
                await asyncio.sleep(float(model.split("-", 1)[1]))
            text = f"{model}: {last}"
            if model.startswith("len-"):
                text = "x" * int(model.split("-", 1)[1])
            if model.startswith("extract-"):
                text = extract_order(last)
            if body.get("stream"):
                return await self._stream(request, body, model, text)
            out = _completion(body, model, text)
            if isinstance(body.get("x_reply_extra"), dict):
                out.update(body["x_reply_extra"])
            return web.json_response(out, headers=self.extra_headers)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str, text: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **self.extra_headers})
        await resp.prepare(request)
        cid = f"chatcmpl-{time.time_ns()}"
        n = int(body.get("n") or 1)

        extra = body.get("x_reply_extra") if isinstance(body.get("x_reply_extra"), dict) else {}

        async def emit(obj: dict[str, Any]) -> None:
            obj = {**obj, **extra}
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": choices,
            }

        for i in range(n):
            await emit(
                chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            )
        if body.get("tools") and body.get("tool_choice") != "none":
            name = body["tools"][0]["function"]["name"]
            args = json.dumps({"q": _last_user(body["messages"])})
            await emit(
                chunk(
                    [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": 0,
                                        "id": "call_1",
                                        "type": "function",
                                        "function": {"name": name, "arguments": ""},
                                    }
                                ]
                            },
                            "finish_reason": None,
                        }
                    ]
                )
            )
            for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                await emit(
                    chunk(
                        [
                            {
                                "index": 0,
                                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": part}}]},
                                "finish_reason": None,
                            }
                        ]
                    )
                )
            await emit(chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
        else:
            pieces = [text[i : i + 4] for i in range(0, len(text), 4)] or [""]
            for k, piece in enumerate(pieces):
                for i in range(n):
                    c: dict[str, Any] = {"index": i, "delta": {"content": piece}, "finish_reason": None}
                    if body.get("logprobs"):
                        token = {"token": piece, "logprob": -0.1, "bytes": list(piece.encode())}
                        token["top_logprobs"] = []
                        c["logprobs"] = {"content": [token]}
                    await emit(chunk([c]))
                if model == "stall" and k == 1:
                    await asyncio.sleep(3600)
                if model == "break" and k == 1:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                await asyncio.sleep(0)
            for i in range(n):
                await emit(chunk([{"index": i, "delta": {}, "finish_reason": "stop"}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": 7,
                "completion_tokens": len(text.split()) * n,
                "total_tokens": 7 + len(text.split()) * n,
            }
            await emit({**chunk([]), "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return ""


def _completion(body: dict[str, Any], model: str, text: str) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    choices = []
    for i in range(n):
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop"
        if body.get("tools") and body.get("tool_choice") != "none":
            name = body["tools"][0]["function"]["name"]
            msg = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {
                            "name": name,
                            "arguments": json.dumps({"q": _last_user(body["messages"])}),
                        },
                    }
                ],
            }
            finish = "tool_calls"
        elif (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            msg["content"] = json.dumps({"answer": text})
        choice: dict[str, Any] = {"index": i, "message": msg, "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": [{"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}]
            }
        choices.append(choice)
    out = {
        "id": f"chatcmpl-{time.time_ns()}",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": len(text.split()) * n,
            "total_tokens": 7 + len(text.split()) * n,
        },
        "system_fingerprint": "fp_fake",
    }
    if "seed" in body:
        out["x_seed_seen"] = body["seed"]
    return out


def _error(status: int, message: str, type_: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": None, "code": None}}, status=status
    )


_ORDER = re.compile(r"Order from (\w+): (\d+) (\w+) to (\w+)\.(?: Ordered on (\d{4}-\d\d-\d\d)\.)?")


def extract_order(text: str) -> str:
    """The ``extract-*`` model's answer: the order's fields as JSON (``{"error": ...}`` when unreadable)."""
    m = _ORDER.search(text)
    if not m:
        return json.dumps({"error": "no order found"})
    out: dict[str, Any] = {"name": m.group(1), "qty": int(m.group(2)), "item": m.group(3), "city": m.group(4)}
    if m.group(5):
        out["date"] = m.group(5)
    return json.dumps(out)
