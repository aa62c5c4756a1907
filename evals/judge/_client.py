"""The judges' HTTP client: an OpenAI-compatible ``/chat/completions`` caller with bounded
concurrency, retries and a response cache, and the price table that estimates what a run costs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from evals.errors import JudgeError, SourceError
from gateway.store.layout import judge_cache_path

DEFAULT_URL = "http://127.0.0.1:8000/v1"
"""The local gateway, which routes judge model names to their upstreams."""


# -- prices and cost -----------------------------------------------------------------------
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-1.5-flash": (0.075, 0.30),
}
"""Approximate USD per million (input, output) tokens; override or extend with a prices file."""


@dataclass(frozen=True)
class PriceTable:
    """USD per million input and output tokens, by model name (longest prefix wins)."""

    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        """Read ``{model: {input: USD/M, output: USD/M}}`` (YAML or JSON) over the defaults."""
        data = _read_mapping(path)
        prices = dict(DEFAULT_PRICES)
        for model, entry in data.items():
            if not isinstance(entry, Mapping):
                raise SourceError(f"{path}: price of {model} must be a mapping with input and output")
            prices[str(model)] = (float(entry.get("input", 0.0)), float(entry.get("output", 0.0)))
        return cls(prices)

    def lookup(self, model: str) -> tuple[float, float] | None:
        name = model.rsplit("/", 1)[-1]
        best = max(
            (k for k in self.prices if name.startswith(k) or model.startswith(k)), key=len, default=None
        )
        return self.prices[best] if best is not None else None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        price = self.lookup(model)
        if price is None:
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1e6


def estimate_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Rough prompt tokens: four characters a token, plus a few per message."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 4 * len(messages) + 3


@dataclass
class CostEstimate:
    """What a run should cost before it starts (uncached calls only)."""

    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    max_usd: float = 0.0
    unpriced: list[str] = field(default_factory=list)


# -- the HTTP client and its cache ---------------------------------------------------------
class ResponseCache:
    """Answers of judge and generation calls, one JSON line each, keyed on a hash of the question.

    Kept at ``<log_dir>/evals/cache/responses.jsonl``; append-only, so concurrent runs at
    worst ask the same question twice.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "key" in rec:
                    self._data[rec["key"]] = rec

    @classmethod
    def for_log_dir(cls, log_dir: str) -> ResponseCache:
        return cls(Path(judge_cache_path(log_dir)))

    @staticmethod
    def key(model: str, messages: Sequence[Mapping[str, Any]], tag: str, params: Mapping[str, Any]) -> str:
        blob = json.dumps([model, list(messages), tag, dict(params)], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        rec = {"key": key, **record}
        self._data[key] = rec
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def __contains__(self, key: str) -> bool:
        return key in self._data


@dataclass
class Completion:
    """One chat completion's text and usage."""

    content: str
    input_tokens: int
    output_tokens: int
    cached: bool


class ChatClient:
    """OpenAI-compatible ``/chat/completions`` over httpx: bounded concurrency, retries, a cache."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 3,
        cache: ResponseCache | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.cache = cache or ResponseCache(None)
        self._http: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None

    def cache_key(
        self, model: str, messages: Sequence[Mapping[str, Any]], tag: str, params: Mapping[str, Any]
    ) -> str:
        return ResponseCache.key(model, messages, tag, params)

    async def __aenter__(self) -> ChatClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout)
        self._sem = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def complete(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, tag: str, **params: Any
    ) -> Completion:
        """Ask ``model``; answered from the cache when the same question was asked before."""
        key = self.cache_key(model, messages, tag, params)
        hit = self.cache.get(key)
        if hit is not None:
            return Completion(hit["content"], hit.get("input_tokens", 0), hit.get("output_tokens", 0), True)
        if self._http is None or self._sem is None:
            raise JudgeError("ChatClient used outside `async with`", judge=model)
        body = {"model": model, "messages": list(messages), **params}
        async with self._sem:
            data = await self._post(model, body)
        try:
            content = data["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise JudgeError(f"{model}: response has no choices[0].message", judge=model) from exc
        usage = data.get("usage") or {}
        in_tok = int(usage.get("prompt_tokens") or estimate_tokens(messages))
        out_tok = int(usage.get("completion_tokens") or len(content) // 4)
        self.cache.put(
            key,
            {
                "model": model,
                "tag": tag,
                "content": content,
                "input_tokens": in_tok,
                "output_tokens": out_tok,
            },
        )
        return Completion(content, in_tok, out_tok, False)

    async def _post(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        delay = 0.25
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = await self._http.post("/chat/completions", json=body)
            except httpx.TransportError as exc:
                if last:
                    raise JudgeError(f"{model}: cannot reach {self.url}: {exc!r}", judge=model) from exc
            else:
                if resp.status_code < 400:
                    try:
                        data: dict[str, Any] = resp.json()
                    except ValueError as exc:
                        raise JudgeError(f"{model}: response is not JSON", judge=model) from exc
                    return data
                if (resp.status_code not in (408, 409, 429) and resp.status_code < 500) or last:
                    raise JudgeError(
                        f"{model}: HTTP {resp.status_code}: {_error_message(resp)}",
                        judge=model,
                        status_code=resp.status_code,
                    )
                retry_after = resp.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), 10.0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise JudgeError(f"{model}: no answer", judge=model)  # pragma: no cover


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (ValueError, AttributeError):
        pass
    return resp.text[:200]


def _read_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a mapping at the top level")
    return data
