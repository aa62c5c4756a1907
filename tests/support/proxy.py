"""A small forwarding HTTP proxy on 127.0.0.1 (asyncio, in a thread), for the proxy tests.

* ``CONNECT host:port``: answers ``200 Connection established`` and pipes bytes both ways (the
  TLS inside is the client's and the upstream's; the proxy never sees plaintext).
* Absolute-form requests (``POST http://host:port/path HTTP/1.1``): opens a connection to that
  host and forwards the request, rewritten to origin form, then pipes both ways.
* ``auth="user:password"``: requires ``Proxy-Authorization: Basic ...`` (407 otherwise).
* ``blackhole=True``: accepts connections and never answers (a proxy that hangs).
* ``relay_to=port``: a plain TCP relay to ``127.0.0.1:port`` (no HTTP at all), each connection
  recorded as ``RELAY`` (counts the connections a client opens, TLS ones included).

``requests`` records each connection's first line (``CONNECT 127.0.0.1:443``, ``POST http://...``)
and ``auth_seen`` its ``Proxy-Authorization`` header.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from urllib.parse import urlsplit


class Proxy:
    def __init__(
        self, *, auth: str | None = None, blackhole: bool = False, relay_to: int | None = None
    ) -> None:
        self.auth = auth
        self.blackhole = blackhole
        self.relay_to = relay_to
        self.requests: list[str] = []
        self.auth_seen: list[str | None] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        creds = f"{self.auth}@" if self.auth else ""
        return f"http://{creds}127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            server.close()
            loop.run_until_complete(server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.blackhole:
                await reader.read()
                return
            if self.relay_to is not None:
                self.requests.append("RELAY")
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.relay_to)
                await _pipe_both(reader, writer, up_reader, up_writer)
                return
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            self.requests.append(f"{method} {target}")
            self.auth_seen.append(headers.get("proxy-authorization"))
            if self.auth is not None:
                expected = "Basic " + base64.b64encode(self.auth.encode()).decode()
                if headers.get("proxy-authorization") != expected:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await _pipe_both(reader, writer, up_reader, up_writer)
                return
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            kept = [line for line in lines[1:] if not line.lower().startswith("proxy-authorization:")]
            up_writer.write("\r\n".join([f"{method} {origin} {version}", *kept]).encode("latin-1"))
            await _pipe_both(reader, writer, up_reader, up_writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
