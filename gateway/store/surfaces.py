"""Log rows of the API surfaces other than chat completions: ``responses`` and ``completions``.

Rows are told apart by their ``endpoint`` column (``chat.completions``, ``embeddings``,
``responses``, ``completions``). What the request path logs for these is what it logs for
chat: the raw request body and the raw answer (JSON, or SSE text). Here, off the request
path, a streamed answer becomes one JSON object (`gateway.protocol.sse`) and the derived
columns are filled:

* ``responses`` (Responses API): the stream's last ``response.completed`` /
  ``response.incomplete`` / ``response.failed`` event carries the whole response object, which
  becomes the row's ``response``; ``output_text`` is the text of the ``output_text`` parts of
  its message items, ``finish_reason`` the response's ``status`` (or the incomplete reason).
  A stream that broke off before its final event keeps the text of its deltas.
* ``completions`` (legacy): chunks' ``choices[].text`` concatenated per choice;
  ``output_text`` is the first choice's text.

Token counts come from ``usage`` (``input_tokens`` / ``output_tokens`` or the chat names).
"""

from __future__ import annotations

from typing import Any


def derive(rec: dict[str, Any], resp: dict[str, Any]) -> None:
    """Fill ``output_text`` and ``finish_reason`` of a ``responses`` / ``completions`` row."""
    endpoint = rec.get("endpoint")
    if endpoint == "responses":
        if rec.get("output_text") is None:
            parts = [
                str(part.get("text") or "")
                for item in _items(resp.get("output"))
                if isinstance(item, dict) and item.get("type") == "message"
                for part in _items(item.get("content"))
                if isinstance(part, dict) and part.get("type") == "output_text"
            ]
            rec["output_text"] = "".join(parts) if parts else None
        if rec.get("finish_reason") is None:
            details = resp.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            rec["finish_reason"] = _str(reason) or _str(resp.get("status"))
    elif endpoint == "completions":
        choices = _items(resp.get("choices"))
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        if rec.get("output_text") is None and isinstance(first.get("text"), str):
            rec["output_text"] = first["text"]
        if rec.get("finish_reason") is None:
            rec["finish_reason"] = _str(first.get("finish_reason"))


def _items(value: Any) -> list[Any]:
    """A list from the upstream's body, or nothing: its values are not ours to trust."""
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
