"""The text of an OpenAI message's ``content``, written once for the gateway, trainer and evals.

``content`` is a string, or a list of parts (``{"type": "text", "text": ...}``, ``image_url``,
``input_audio``, the Responses API's ``input_text`` / ``output_text``, ...), or null. Logged
bodies are not trusted: any other shape yields text, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson


def message_text(content: object, *, sep: str = " ", placeholders: bool = False) -> str:
    """The text of ``content``.

    A string is its own text. Of a list, the ``text`` of every part that has a string one,
    joined by ``sep``. Null, and any other value, is ``""``.

    ``placeholders`` is for showing a message to a person, with nothing left out: a part
    without text becomes ``[its type]`` (``[image_url]``), an item that is not an object its
    ``str``, and a ``content`` of another shape its JSON text.
    """
    if type(content) is str:
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif placeholders:
                    parts.append(f"[{part.get('type', 'part')}]")
            elif placeholders:
                parts.append(str(part))
        return sep.join(parts)
    if isinstance(content, str):  # a str subclass
        return str.__str__(content)
    if content is None or not placeholders:
        return ""
    try:
        return orjson.dumps(content).decode()
    except TypeError:
        return repr(content)


def map_text(content: object, fn: Callable[[str], str]) -> Any:
    """``content`` with ``fn`` applied to its text: the string, or each part's string ``text``.

    Parts without text and values of other shapes are kept as they are.
    """
    if isinstance(content, str):
        return fn(content)
    if isinstance(content, list):
        return [
            {**part, "text": fn(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return content
