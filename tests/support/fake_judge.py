"""A fake OpenAI-compatible provider for judge and contestant models, served over real HTTP.

Behaviour is scripted by model name:

* ``judge-first``: always prefers the answer shown first (position bias).
* ``judge-second``: always prefers the answer shown second.
* ``judge-long`` (or any ``*-long-judge``): prefers the longer answer, ties on equal length;
  passes a criterion for the answers at least as long as the other.
* ``judge-tie``: always a tie.
* ``judge-garbage``: replies with text that holds no verdict.
* ``judge-down``: HTTP 503 every time.
* ``echo``: a contestant that answers the last user message verbatim.
* ``shout``: a contestant that answers the last user message in upper case, with "!!!".

Every request body is kept in `FakeJudge.requests`, so tests can count calls.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_A = re.compile(r"<answer_a>\n(.*?)\n</answer_a>", re.S)
_B = re.compile(r"<answer_b>\n(.*?)\n</answer_b>", re.S)
_CRITERIA = re.compile(r"^- (\w+):", re.M)


class FakeJudge:
    """The scripted provider; `serve` runs it on 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.on_request: Callable[[dict[str, Any]], None] | None = None  # a test's act while judging
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    def calls(self, model: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if model is None or r.get("model") == model)

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self.lock:
            self.requests.append(body)
        if self.on_request is not None:
            self.on_request(body)
        model = str(body.get("model"))
        user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if model == "judge-down":
            return JSONResponse(
                {"error": {"message": "overloaded", "type": "server_error", "code": None}}, 503
            )
        if model == "echo":
            content = user
        elif model == "shout":
            content = user.upper() + "!!!"
        elif model.startswith("judge") or model.endswith("judge"):
            content = self.verdict(model, user)
        else:
            return JSONResponse(
                {
                    "error": {
                        "message": f"unknown model {model}",
                        "type": "invalid_request_error",
                        "code": None,
                    }
                },
                404,
            )
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_chars // 4,
                    "completion_tokens": len(content) // 4,
                    "total_tokens": prompt_chars // 4 + len(content) // 4,
                },
            }
        )

    @staticmethod
    def verdict(model: str, user: str) -> str:
        if model == "judge-garbage":
            return "I cannot decide, both are lovely."
        a = _A.search(user)
        b = _B.search(user)
        len_a = len(a.group(1)) if a else 0
        len_b = len(b.group(1)) if b else 0
        if model == "judge-first":
            winner = "A"
        elif model == "judge-second":
            winner = "B"
        elif model == "judge-tie":
            winner = "tie"
        else:
            winner = "A" if len_a > len_b else "B" if len_b > len_a else "tie"
        out: dict[str, Any] = {
            "reason": f"{model} picks {winner} (lengths {len_a} vs {len_b})",
            "winner": winner,
        }
        names = _CRITERIA.findall(user.split("<criteria>", 1)[1]) if "<criteria>" in user else []
        if names:
            out["criteria"] = {n: {"A": len_a >= len_b, "B": len_b >= len_a} for n in names}
        return json.dumps(out)


class ServerThread:
    """uvicorn in a thread on 127.0.0.1, port 0 (httpx's test-server pattern)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", loop="asyncio", http="h11", ws="none"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake judge server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
