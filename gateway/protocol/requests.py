"""Typed views of the request bodies the gateway serves, that keep every field.

A view wraps the parsed JSON object (``raw``) and reads the fields the gateway acts on;
whatever else the caller sent stays in ``raw`` untouched (the body goes upstream byte for
byte, re-serialised only to change ``model``: `RequestView.with_model`). `parse_request` is
the one parse of a body on the request path: JSON, an object, a string ``model``, and the
checks of its endpoint (chat completions, embeddings here; the Responses API's and legacy
completions' in `gateway.responses`), each failure a 400 in OpenAI's shape.

The views are classes with ``__slots__`` over the dict, not models that copy it: the hot
path pays one object per request. Import-light: orjson only.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest


class RequestView:
    """Any request body: ``model`` and ``stream``, the rest in ``raw``."""

    __slots__ = ("model", "raw", "stream")

    endpoint = ""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.model: str = raw["model"]
        self.stream: bool = raw.get("stream") is True

    def get(self, key: str, default: Any = None) -> Any:
        """Any field, as the caller sent it."""
        return self.raw.get(key, default)

    @property
    def user(self) -> Any:
        return self.raw.get("user")

    @property
    def metadata(self) -> Any:
        return self.raw.get("metadata")

    def with_model(self, model: str) -> bytes:
        """The body with ``model`` replaced, every other field kept."""
        return dump({**self.raw, "model": model})


class ChatRequest(RequestView):
    """``/v1/chat/completions``: ``messages`` (a non-empty list of objects with a role)."""

    __slots__ = ()
    endpoint = "chat.completions"

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.raw["messages"]
        return messages

    @property
    def n(self) -> int | None:
        n: int | None = self.raw.get("n")
        return n

    @property
    def tools(self) -> Any:
        return self.raw.get("tools")


class EmbeddingsRequest(RequestView):
    """``/v1/embeddings``: ``input``."""

    __slots__ = ()
    endpoint = "embeddings"

    @property
    def input(self) -> Any:
        return self.raw["input"]


class ResponsesRequest(RequestView):
    """``/v1/responses``: ``input``, ``instructions`` and the server-side state it names."""

    __slots__ = ()
    endpoint = "responses"

    @property
    def input(self) -> Any:
        return self.raw.get("input")

    @property
    def instructions(self) -> Any:
        return self.raw.get("instructions")

    @property
    def previous_response_id(self) -> str | None:
        prev = self.raw.get("previous_response_id")
        return prev if isinstance(prev, str) else None

    @property
    def stateful(self) -> bool:
        """Whether it continues a conversation stored by an upstream (``previous_response_id``, ``conversation``)."""
        return bool(self.raw.get("previous_response_id") or self.raw.get("conversation"))


class CompletionsRequest(RequestView):
    """``/v1/completions`` (legacy): ``prompt``."""

    __slots__ = ()
    endpoint = "completions"

    @property
    def prompt(self) -> Any:
        return self.raw["prompt"]


VIEWS: dict[str, type[RequestView]] = {
    v.endpoint: v for v in (ChatRequest, EmbeddingsRequest, ResponsesRequest, CompletionsRequest)
}


def load_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object with a string ``model`` (400 otherwise)."""
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    return req


def check_chat(req: dict[str, Any]) -> None:
    """The checks of a chat completions body beyond ``model`` (400 on failure)."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest(
                f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}].role"
            )
    stream = req.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    n = req.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise InvalidRequest("'n' must be a positive integer", param="n")


def check_embeddings(req: dict[str, Any]) -> None:
    if "input" not in req:
        raise InvalidRequest("'input' is required", param="input")


def dump(body: dict[str, Any]) -> bytes:
    """A request body to send on, re-encoded; nesting JSON cannot re-encode is the caller's 400.

    orjson reads up to 1,024 levels but writes 254: a body nested deeper parses, and cannot be
    sent on once changed (another model, the candidate's transform).
    """
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"the request cannot be forwarded: {exc} (JSON nested too deeply?)") from None
