"""What an upstream call hands back to the request path, whichever client made it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class UpstreamReply:
    """An upstream answer whose status and headers are known and whose body is still to read."""

    status: int
    content_type: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: AsyncIterator[bytes] | None = None
    body: bytes | None = None
    waited_s: float = 0.0  # time spent in retries' back-off before this reply
    _close: object = None
    _complete: object = None  # () -> bool: every byte of the answer has been handed out

    @property
    def complete(self) -> bool:
        return bool(self._complete()) if self._complete is not None else False  # type: ignore[operator]

    @property
    def is_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    async def read(self) -> bytes:
        if self.body is None:
            parts = [c async for c in self.chunks] if self.chunks is not None else []
            self.body = b"".join(parts)
        return self.body

    def close(self) -> None:
        closer = self._close
        if closer is not None:
            closer()  # type: ignore[operator]
            self._close = None
