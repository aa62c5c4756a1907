"""OpenAI's error body, built in one place: ``{"error": {"message", "type", "param", "code"}}``.

`error_object` is the body as a dict (for frameworks that serialise it themselves), `error_body`
the same as bytes. An upstream's error answer is read by `upstream_error` (what the log row
keeps) and passed on to the caller by `as_openai_error`, wrapped in this shape when it is not
already in it. ``code`` is a string or null. Import-light: orjson only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import orjson


class ErrorInfo(TypedDict):
    """The ``error`` member of the body: ``code`` is a string or null, as in OpenAI's API."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorObject(TypedDict):
    """OpenAI's error body."""

    error: ErrorInfo


def error_object(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> ErrorObject:
    """The OpenAI error body as a dict."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """The OpenAI error body, as bytes."""
    return orjson.dumps(error_object(message, type_, param=param, code=code))


def upstream_error(data: bytes) -> tuple[str, str]:
    """``(error_type, error_message)`` of an upstream's error answer, whatever its shape."""
    try:
        err = orjson.loads(data).get("error")
        if isinstance(err, dict):
            return str(err.get("type") or "upstream_error"), str(err.get("message") or "")
        if isinstance(err, str):
            return "upstream_error", err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return "upstream_error", data[:500].decode("utf-8", "replace")


def as_openai_error(data: bytes, status: int, *, clean: Callable[[str], str] | None = None) -> bytes:
    """Pass an upstream error through; wrap it in OpenAI's shape if it is not already (its text
    passed through ``clean`` first, e.g. `gateway.upstream.faults.redact`)."""
    try:
        parsed = orjson.loads(data)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return data
    except orjson.JSONDecodeError:
        pass
    text = data[:2000].decode("utf-8", "replace")
    text = (clean(text) if clean is not None else text) or f"upstream answered {status}"
    return error_body(text, "upstream_error", code=str(status))
