"""The hot path's own HTTP/1.1 client (`gateway.upstream.http1`), against a loopback server whose
answers each test writes byte for byte: keep-alive reuse and the three body framings, the one
resend of a request a pooled connection lost unanswered (and no resend once answered), malformed
and stalled answers, a connection that receives bytes while idle, interim (1xx) answers,
back-pressure, and the ``Host`` of an IPv6 upstream. What the client lacks is in the README
("Upstream failures, proxies and private CAs")."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.upstream.http1 import Http1Pool, UpstreamClosed, UpstreamIdle, _target

Answer = Callable[[int, int, bytes, asyncio.StreamWriter], Awaitable[bool]]
"""``(connection number, request number on it, request head, writer)`` -> keep the connection open."""


class Scripted:
    """A loopback HTTP/1.1 server: reads each request (head and ``Content-Length`` body) and lets
    ``answer`` write whatever bytes it likes; counts connections and records every request."""

    def __init__(self, answer: Answer, host: str = "127.0.0.1") -> None:
        self.answer, self.host = answer, host
        self.connections = 0
        self.requests: list[tuple[int, int, bytes]] = []
        self.server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._conn, self.host, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self._handlers:  # a handler still waiting (a stalled answer): done with
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}/v1/chat/completions"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, n = self.connections, 0
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                n += 1
                self.requests.append((conn, n, head + body))
                if not await self.answer(conn, n, head, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes = b'{"ok":true}') -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head + body


async def post(pool: Http1Pool, url: str, timeout: float = 2.0) -> tuple[int, dict[bytes, bytes], bytes, Any]:
    status, headers, chunks, conn = await asyncio.wait_for(
        pool.post(url, b'{"model":"m"}', {"Content-Type": "application/json"}, timeout, 2.0), 10
    )
    body = b"".join([c async for c in chunks])
    return status, dict(headers), body, conn


async def test_keep_alive_reuses_one_connection_for_each_body_framing():
    async def answer(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        if n == 1:
            w.write(ok(b"length"))
        elif n == 2:  # chunked, written in pieces
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"chu", b"nk", b"ed"):
                await asyncio.sleep(0.02)
                w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await w.drain()
            w.write(b"0\r\n\r\n")
        else:  # delimited by the end of the connection
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ")
            await w.drain()
            await asyncio.sleep(0.02)
            w.write(b"close")
            return False
        return True

    async with Scripted(answer) as server:
        pool = Http1Pool(proxies={})
        bodies = [(await post(pool, server.url))[2] for _ in range(4)]
        pool.close()
    assert bodies == [b"length", b"chunked", b"until close", b"length"]
    assert [(c, n) for c, n, _ in server.requests] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    head = server.requests[0][2]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and b"Content-Length: 13\r\n" in head


async def test_a_request_a_pooled_connection_lost_unanswered_is_sent_once_more_on_a_fresh_one():
    async def answer(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        if conn == 1 and n == 2:
            return False  # the server had given up on this idle connection: closed, nothing answered
        w.write(ok(b"conn %d" % conn))
        return True

    async with Scripted(answer) as server:
        pool = Http1Pool(proxies={})
        first = await post(pool, server.url)
        second = await post(pool, server.url)
        pool.close()
    assert (first[0], first[2], second[0], second[2]) == (200, b"conn 1", 200, b"conn 2")
    assert [(c, n) for c, n, _ in server.requests] == [(1, 1), (1, 2), (2, 1)]


async def test_an_answer_cut_midway_is_an_error_and_never_sent_again():
    async def answer(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        if n == 1:
            w.write(ok())
            return True
        w.write(b"HTTP/1.1 200 OK\r\nContent-Le")  # the head, cut
        return False

    async with Scripted(answer) as server:
        pool = Http1Pool(proxies={})
        await post(pool, server.url)
        with pytest.raises(UpstreamClosed) as cut:
            await post(pool, server.url)
        pool.close()
    assert cut.value.answered
    assert len(server.requests) == 2  # the cut request was not resent

    async def body_cut(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        return False

    async with Scripted(body_cut) as server:
        pool = Http1Pool(proxies={})
        with pytest.raises(UpstreamClosed, match="closed"):
            await post(pool, server.url)
        pool.close()
    assert len(server.requests) == 1


async def test_a_malformed_answer_is_an_upstream_error():
    async def answer(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 two hundred\r\n\r\n")
        return True

    async with Scripted(answer) as server:
        pool = Http1Pool(proxies={})
        with pytest.raises(UpstreamClosed, match="malformed"):
            await post(pool, server.url)
        pool.close()


async def test_an_upstream_that_stops_sending_is_an_idle_timeout_before_and_after_the_head():
    async def silent(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async def stalls(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await w.drain()
        await asyncio.sleep(5)
        return False

    for answer in (silent, stalls):
        async with Scripted(answer) as server:
            pool = Http1Pool(proxies={})
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(UpstreamIdle, match=r"no answer from the upstream for 0\.3s"):
                await post(pool, server.url, timeout=0.3)
            assert loop.time() - start < 3
            pool.close()


async def test_a_connection_that_receives_bytes_while_idle_is_never_used_again():
    """An upstream (or a load balancer before it) that answers an idle keep-alive connection with a
    ``408`` and keeps it open: the next request goes out on a fresh connection and is answered.
    The client once parsed those bytes as the next answer's, and the request then waited forever."""
    idle_answer_sent = asyncio.Event()

    async def answer(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        if conn == 1:
            w.write(ok(b"first"))
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            await w.drain()
            idle_answer_sent.set()
            await asyncio.sleep(5)  # and answers nothing more on it
            return False
        w.write(ok(b"fresh"))
        return True

    async with Scripted(answer) as server:
        pool = Http1Pool(proxies={})
        assert (await post(pool, server.url))[2] == b"first"
        await asyncio.wait_for(idle_answer_sent.wait(), 5)
        await asyncio.sleep(0.05)
        status, _, body, _ = await post(pool, server.url)
        pool.close()
    assert (status, body) == (200, b"fresh")
    assert [(c, n) for c, n, _ in server.requests] == [(1, 1), (2, 1)]


async def test_interim_answers_are_skipped_for_the_final_one():
    async def answer(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await w.drain()
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(ok(b"final"))
        return True

    async with Scripted(answer) as server:
        pool = Http1Pool(proxies={})
        status, headers, body, _ = await post(pool, server.url)
        again = await post(pool, server.url)  # and the connection stays usable
        pool.close()
    assert (status, body, again[0], again[2]) == (200, b"final", 200, b"final")
    assert b"link" not in headers and headers[b"content-type"] == b"application/json"
    assert server.connections == 1


async def test_reading_from_the_upstream_pauses_while_the_client_lags_and_loses_nothing():
    pieces = [b"%04d" % i for i in range(400)]

    async def answer(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for p in pieces:
            w.write(b"4\r\n%s\r\n" % p)
            await w.drain()
            await asyncio.sleep(0)  # one segment each, as a streaming upstream sends them
        w.write(b"0\r\n\r\n")
        return True

    async with Scripted(answer) as server:
        pool = Http1Pool(proxies={})
        status, _, chunks, conn = await pool.post(server.url, b"{}", {}, 5.0, 2.0)
        for _ in range(100):  # nothing read downstream: the client stops reading the socket
            await asyncio.sleep(0.02)
            if not conn.transport.is_reading():
                break
        paused = not conn.transport.is_reading()
        body = b"".join([c async for c in chunks])
        pool.close()
    assert status == 200 and paused
    assert body == b"".join(pieces)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_the_host_of_an_ipv6_upstream_keeps_its_brackets():
    assert _target("http://[::1]:8080/v1/x")[2] == "[::1]:8080"
    assert _target("https://[2001:db8::1]/v1/x")[2] == "[2001:db8::1]"
    assert _target("http://127.0.0.1:8080/v1/x")[2] == "127.0.0.1:8080"
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine (the Host values are checked above)")

    async def answer(conn: int, n: int, head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(ok())
        return True

    async with Scripted(answer, host="::1") as server:
        port = server.url.split("]:", 1)[1].split("/", 1)[0]
        pool = Http1Pool(proxies={})
        status, _, _, _ = await post(pool, server.url)
        pool.close()
    assert status == 200 and f"\r\nHost: [::1]:{port}\r\n".encode() in server.requests[0][2]
