"""Content-Encoding of upstream answers: the hot path asks for none and decodes what comes anyway.

The upstream client sends ``Accept-Encoding: identity``. Compression buys little between a
gateway and its model servers (the answers are small, or streamed token by token, where a
compressor's buffering adds latency) and would cost the hot path CPU on every byte. An upstream
(or a proxy in front of it) that compresses anyway is decoded here, chunk by chunk, so the
caller and the log get the plain bytes and the ``Content-Encoding`` header is dropped: relaying
the compressed bytes instead would leave the log (which needs the text) decoding them anyway.

``gzip``, ``x-gzip`` and ``deflate`` (zlib or raw) are decoded with the standard library;
``br`` when the ``brotli`` package is installed. Any other encoding is refused with a 502
(`UnsupportedEncoding`), never passed on undecoded.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

ACCEPT_ENCODING = "identity"


class UnsupportedEncoding(Exception):
    """The upstream used a Content-Encoding this gateway cannot decode."""


class _Deflate:
    """``deflate`` is zlib-wrapped by the RFC, raw in some servers: sniff the first bytes."""

    def __init__(self) -> None:
        self._d: Any = None

    def decompress(self, data: bytes) -> bytes:
        if self._d is None:
            raw = len(data) < 2 or (data[0] & 0x0F) != 8 or ((data[0] << 8) | data[1]) % 31 != 0
            self._d = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        out: bytes = self._d.decompress(data)
        return out


def decoder(encoding: bytes) -> Callable[[bytes], bytes] | None:
    """A chunk decoder for ``encoding`` (a Content-Encoding value); None for identity."""
    names = [e.strip().lower() for e in encoding.split(b",") if e.strip()]
    names = [n for n in names if n != b"identity"]
    if not names:
        return None
    if len(names) > 1:
        raise UnsupportedEncoding(f"stacked content encodings {encoding.decode('latin-1')!r}")
    name = names[0]
    if name in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if name == b"deflate":
        return _Deflate().decompress
    if name == b"br":
        try:
            import brotli
        except ImportError:
            raise UnsupportedEncoding(
                "brotli-encoded answer and the brotli package is not installed"
            ) from None
        return brotli.Decompressor().process  # type: ignore[no-any-return]
    raise UnsupportedEncoding(f"unsupported content encoding {name.decode('latin-1')!r}")


async def decoded(chunks: AsyncIterator[bytes], decode: Callable[[bytes], bytes]) -> AsyncIterator[bytes]:
    """``chunks`` decoded; a chunk that decodes to nothing yet is held back."""
    async for chunk in chunks:
        try:
            out = decode(chunk)
        except zlib.error as exc:
            raise UnsupportedEncoding(f"the compressed answer does not decode: {exc}") from None
        except Exception as exc:  # brotli.error and the like
            raise UnsupportedEncoding(f"the compressed answer does not decode: {exc}") from None
        if out:
            yield out


def content_encoding(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    return next((v for k, v in headers if k == b"content-encoding"), None)
