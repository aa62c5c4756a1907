"""A response's head and its first body bytes in one write to the socket.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and each body message in a write of its own: two ``send()`` calls,
and two wake-ups of the client, for every answer — a JSON answer, or a stream whose events
came from the upstream together (the common case on a fast upstream). `HeadWithBody` wraps
the connection's transport for one request's response cycle (`gateway.server`): the head
waits for the first body bytes and goes out with them in one write, or by itself at the end
of the current event-loop iteration, whichever comes first — so a stream whose first event
is slow to come still has its headers at once, a microsecond later at most.

An interim ``100 Continue`` is never held (the client waits for it before it sends the
body), and nothing after the head is.
"""

from __future__ import annotations

import asyncio
from typing import Any


class HeadWithBody:
    """The transport a response cycle writes to (see the module docstring); anything else is the real one's."""

    __slots__ = ("_head", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif self._started or data.startswith(b"HTTP/1.1 100 "):
            self._transport.write(data)
        else:
            self._started = True
            self._head = data
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
