"""Serving a model version: a small OpenAI-compatible server for development and CPU.

`ChatModel` loads a base model with transformers (and a LoRA adapter with peft), renders
requests with the tokenizer's chat template and generates greedily or by sampling.
`create_app` wraps one `ChatModel` in an ASGI app (Starlette) with the endpoints a client
of the gateway needs:

* ``GET /v1/models``: the one model, under its served name (the version, e.g. ``extract-lora-v1``);
* ``POST /v1/chat/completions``: ``messages``, ``max_tokens`` / ``max_completion_tokens``,
  ``temperature``, ``top_p``, ``stop``, ``seed``, ``stream`` (SSE chunks, then ``[DONE]``;
  ``stream_options.include_usage`` adds a usage chunk). One choice per request;
* ``GET /health``.

Bodies are read as the gateway reads them (`gateway.protocol.requests`: the same 400s), then
checked against what this server does (its one model, one choice, the sampling ranges). Errors
are the gateway's (`gateway.errors`, in OpenAI's body); streams are framed by
`gateway.protocol.sse`. Requests are generated one at a time (a lock): this server is for
development, evaluation and CPU, not for production traffic; for that, see `trainer.vllm`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.protocol import sse
from gateway.protocol.messages import message_text
from gateway.protocol.requests import ChatRequest, check_chat, load_object
from trainer.errors import ServeError, TrainingError, missing_train_extra
from trainer.registry import ModelVersion


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages as plain ``{"role", "content"}`` text, which every chat template accepts.

    Content parts are joined; an assistant turn that only calls tools becomes the JSON of
    its tool calls; a ``developer`` message becomes a ``system`` one.
    """
    out = []
    for m in messages:
        role = "system" if m.get("role") == "developer" else str(m.get("role"))
        text = message_text(m.get("content"), sep="")
        if not text and m.get("tool_calls"):
            text = json.dumps(m["tool_calls"])
        out.append({"role": role, "content": text})
    return out


_MIN_TEMPERATURE = 1e-3
"""Below this, sampling is greedy decoding in effect, and logits divided by it can overflow: greedy."""


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class ChatModel:
    """A causal LM (plus an optional LoRA adapter) that answers chat messages."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        base_model: str,
        adapter_path: str | None = None,
        *,
        name: str | None = None,
        device: str | None = None,
    ) -> ChatModel:
        """Load ``base_model`` (a path or hub id) and, when given, the adapter at ``adapter_path``."""
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise missing_train_extra(exc) from exc
        device = pick_device(device)
        tok_source = adapter_path if adapter_path and _has_tokenizer(adapter_path) else base_model
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_source)
            dtype = (
                torch.bfloat16
                if device.startswith("cuda") and torch.cuda.is_bf16_supported()
                else torch.float32
            )
            model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
            if adapter_path:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter_path)
        except (OSError, ValueError) as exc:
            raise ServeError(
                f"cannot load {base_model}{f' with {adapter_path}' if adapter_path else ''}: {exc}"
            ) from exc
        if not tokenizer.chat_template:
            raise ServeError(f"{tok_source} has no chat template; use an instruction-tuned base model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.to(device)
        model.eval()
        return cls(model, tokenizer, name or base_model)

    @classmethod
    def from_version(cls, mv: ModelVersion, *, device: str | None = None) -> ChatModel:
        if mv.kind == "hosted" or mv.hosted_model:
            raise ServeError(
                f"{mv.version} is hosted by {mv.provider}: call the provider, there is nothing to serve"
            )
        if mv.status != "ready":
            raise ServeError(f"{mv.version} is {mv.status}, not ready")
        return cls.load(mv.base_model, mv.adapter_path, name=mv.version, device=device)

    @property
    def context_length(self) -> int:
        """The most positions the model was built for (the cap on ``max_tokens``)."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 4096)

    def _inputs(self, messages: list[dict[str, Any]]) -> Any:
        enc = self.tokenizer.apply_chat_template(
            template_messages(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def _gen_kwargs(
        self, max_tokens: int, temperature: float, top_p: float, seed: int | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if temperature >= _MIN_TEMPERATURE:
            import torch

            if seed is not None:
                torch.manual_seed(seed)
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion:
        """Generate one answer (greedy when ``temperature`` is 0)."""
        import torch

        inputs = self._inputs(messages)
        n_prompt = int(inputs["input_ids"].shape[1])
        with self._lock, torch.no_grad():
            out = self.model.generate(**inputs, **self._gen_kwargs(max_tokens, temperature, top_p, seed))
        new = out[0][n_prompt:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if len(new) < max_tokens or int(new[-1]) == self.tokenizer.eos_token_id else "length"
        text, stopped = _apply_stop(text, stop)
        return Completion(text, n_prompt, len(new), "stop" if stopped else finish)

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[str | Completion]:
        """Yield text deltas as they are generated, then the `Completion` (full text, counts, finish reason)."""
        from transformers import TextIteratorStreamer

        inputs = self._inputs(messages)
        n_prompt = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300
        )
        result: dict[str, Any] = {}

        def run() -> None:
            import torch

            try:
                with self._lock, torch.no_grad():
                    result["out"] = self.model.generate(
                        **inputs, streamer=streamer, **self._gen_kwargs(max_tokens, temperature, top_p, seed)
                    )
            except Exception as exc:  # surfaced to the client as a stream error event
                result["error"] = exc
                streamer.end()  # type: ignore[no-untyped-call]

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        sent = 0
        stopped = False
        for delta in streamer:
            text += delta
            cut, hit = _apply_stop(text, stop)
            if hit:
                stopped = True
                if len(cut) > sent:
                    yield cut[sent:]
                text = cut
                break
            safe = len(text) - _held_back(text, stop)  # hold back a possible start of a stop sequence
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if not stopped and len(text) > sent:
            yield text[sent:]
        thread.join()
        if "error" in result:
            raise ServeError(f"generation failed: {result['error']}")
        new = result["out"][0][n_prompt:]
        finish = (
            "stop"
            if stopped or len(new) < max_tokens or int(new[-1]) == self.tokenizer.eos_token_id
            else "length"
        )
        yield Completion(text, n_prompt, len(new), finish)


def _has_tokenizer(path: str) -> bool:
    import os

    return os.path.exists(os.path.join(path, "tokenizer_config.json"))


def _apply_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop or () if s and s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def _held_back(text: str, stop: list[str] | None) -> int:
    longest = 0
    for s in stop or ():
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                longest = max(longest, k)
                break
    return longest


# -- HTTP ------------------------------------------------------------------------------------
def _parse(body: bytes, served: str, context: int) -> tuple[ChatRequest, dict[str, Any]]:
    """The request and `ChatModel` arguments of a chat completions body, read as the gateway reads
    one (`gateway.protocol.requests`); the dev server's own limits after that. Raises the 4xx."""
    req = ChatRequest(load_object(body))
    check_chat(req.raw)
    if req.model != served:
        raise NotFound(
            f"the model '{req.model}' does not exist; this server serves '{served}'",
            param="model",
            code="model_not_found",
        )
    if (req.n or 1) != 1:
        raise InvalidRequest("this server returns one choice per request (n=1)", param="n")
    max_tokens = _first(req, "max_completion_tokens", "max_tokens", default=min(256, context))
    if not _is_int(max_tokens) or not 1 <= max_tokens <= context:
        raise InvalidRequest(f"max_tokens must be an integer from 1 to {context}", param="max_tokens")
    temperature = _number(req, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(req, "top_p", 1.0, 0.0, 1.0)
    stop = req.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise InvalidRequest("stop must be a string or a list of strings", param="stop")
    seed = req.get("seed")
    if seed is not None and not (_is_int(seed) and -(2**63) <= seed < 2**64):
        raise InvalidRequest("seed must be a 64-bit integer", param="seed")
    args = {
        "messages": req.messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stop": stop,
        "seed": seed,
    }
    return req, args


def _first(req: ChatRequest, *keys: str, default: Any) -> Any:
    return next((req.get(k) for k in keys if req.get(k) is not None), default)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(req: ChatRequest, key: str, default: float, lo: float, hi: float) -> float:
    value = req.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidRequest(f"{key} must be between {lo:g} and {hi:g}", param=key)
    return float(value)


def create_app(model: ChatModel) -> Any:
    """The ASGI app serving ``model`` under ``model.name``."""
    from starlette.applications import Starlette
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    created = int(time.time())

    def error(exc: GatewayError) -> Response:
        return Response(exc.body(), status_code=exc.status, media_type="application/json")

    async def models(request: Request) -> Response:
        card = {"id": model.name, "object": "model", "created": created, "owned_by": "shadowtune"}
        return JSONResponse({"object": "list", "data": [card]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": model.name})

    async def chat(request: Request) -> Response:
        try:
            req, args = _parse(await request.body(), model.name, model.context_length)
        except GatewayError as exc:
            return error(exc)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if req.stream:
            options = req.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return StreamingResponse(
                iterate_in_threadpool(_sse(model, args, cid, now, include_usage)),
                media_type="text/event-stream",
            )
        try:
            done: Completion = await run_in_threadpool(lambda: model.complete(**args))
        except Exception as exc:
            return error(GatewayError(f"generation failed: {exc}"))
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": now,
                "model": model.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": done.text},
                        "finish_reason": done.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(done),
            }
        )

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def _usage(done: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _sse(model: ChatModel, args: dict[str, Any], cid: str, now: int, include_usage: bool) -> Iterator[bytes]:
    def chunk(
        delta: dict[str, Any], finish: str | None = None, usage: Any = None, choices: bool = True
    ) -> bytes:
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": now,
            "model": model.name,
        }
        body["choices"] = (
            [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices else []
        )
        if include_usage:
            body["usage"] = usage
        return sse.event(body)

    yield chunk({"role": "assistant", "content": ""})
    try:
        for item in model.stream(**args):
            if isinstance(item, Completion):
                yield chunk({}, item.finish_reason)
                if include_usage:
                    yield chunk({}, usage=_usage(item), choices=False)
            else:
                yield chunk({"content": item})
    except Exception as exc:  # one error event, then the end of the stream
        yield sse.event(GatewayError(f"generation failed: {exc}").body())
    yield sse.DONE


def serve_version(
    log_dir: str, version: str, *, host: str = "127.0.0.1", port: int = 8001, device: str | None = None
) -> None:
    """Load a registered version and serve it until interrupted (``shadowtune models serve``)."""
    from trainer.registry import Registry

    mv = Registry(log_dir).get(version)
    model = ChatModel.from_version(mv, device=device)
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - uvicorn is a core dependency
        raise TrainingError(str(exc)) from exc
    uvicorn.run(create_app(model), host=host, port=port, log_level="info")


@dataclass(frozen=True)
class DevServer:
    """A dev server running in the background (`start_dev_server`)."""

    url: str
    """Its OpenAI base URL (``http://127.0.0.1:<port>/v1``)."""
    pid: int
    """The process, leader of its own session: stop it with ``os.killpg(pid, signal.SIGTERM)``."""
    start_s: float
    """Seconds until it answered."""


def start_dev_server(
    log_dir: str,
    version: str,
    port: int | None = None,
    *,
    timeout: float = 300.0,
    output: str | None = None,
) -> DevServer:
    """``shadowtune models serve VERSION`` in the background, returned once ``/health`` answers.

    ``port`` is a free one when None; the server's output goes to the file ``output`` (nowhere
    when None). Raises `ServeError` when it exits first, or does not answer within ``timeout``
    (it is killed then).
    """
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    import httpx

    port = port or _free_port()
    cmd = [
        sys.executable,
        "-m",
        "gateway",
        "models",
        "serve",
        version,
        "--port",
        str(port),
        "--log-dir",
        log_dir,
    ]
    with open(output or os.devnull, "w") as sink:  # the child keeps its own copy of the file
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise ServeError(f"the dev server for {version} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return DevServer(f"http://127.0.0.1:{port}/v1", proc.pid, time.monotonic() - t0)
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise ServeError(f"the dev server for {version} did not answer within {timeout:g}s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
