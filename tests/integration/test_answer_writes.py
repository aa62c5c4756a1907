"""An answer's head and its first body bytes leave the gateway in one write (`gateway.coalesce`):
the client's first read holds both. ``100 Continue`` is not held back, and answers are whole."""

from __future__ import annotations

import asyncio
import json
import os

from gateway.coalesce import HeadWithBody
from tests.support.rawhttp import connect, read_answer
from tests.support.require import require

BODY = json.dumps({"model": "echo-w", "messages": [{"role": "user", "content": "hi"}]}).encode()


def request(body: bytes, extra: str = "") -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def writes_by(thread_id: int) -> int:
    """Write system calls made so far by one thread of this process (Linux task I/O accounting)."""
    with open(f"/proc/self/task/{thread_id}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscw"))


def test_an_answer_is_one_write_head_and_body_together(make_settings, start_gateway):
    """The event loop's thread writes three times per JSON call: the upstream request, the WAL
    line, and the answer — head and body in one write (uvicorn alone makes it two)."""
    gw = start_gateway(make_settings(store={"flush_interval": 30}))  # no WAL rotation meanwhile
    thread = gw.thread.native_id
    require(
        thread is not None and os.path.exists(f"/proc/self/task/{thread}/io"),
        "no per-thread I/O accounting (/proc/self/task/<tid>/io)",
        "a kernel with CONFIG_TASK_IO_ACCOUNTING",
    )
    with connect(gw.port) as sock:

        def call() -> bytes:
            sock.sendall(request(BODY))
            data = sock.recv(1 << 20)
            while not data.endswith(b"0\r\n\r\n"):  # up to the chunked end
                data += sock.recv(1 << 20)
            return data

        for _ in range(3):
            call()
        before = writes_by(thread)
        answers = [call() for _ in range(20)]
        per_call = (writes_by(thread) - before) / 20
    assert all(a.startswith(b"HTTP/1.1 200 ") and b'"chat.completion"' in a for a in answers)
    assert per_call == 3.0


def test_a_100_continue_is_sent_at_once(make_settings, start_gateway):
    gw = start_gateway(make_settings())
    with connect(gw.port, timeout=5) as sock:
        head = request(BODY, "Expect: 100-continue\r\n")[: -len(BODY)]
        sock.sendall(head)
        assert sock.recv(1 << 16).startswith(b"HTTP/1.1 100 Continue\r\n")  # before the body is sent
        sock.sendall(BODY)
        answer = read_answer(sock)
        assert answer.status == 200 and answer.json()["choices"][0]["message"]["content"] == "echo-w: hi"


def test_a_head_alone_goes_out_at_the_end_of_the_loop_iteration():
    """A stream whose first event is slow to come still has its headers at once."""

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                if not got.done():
                    got.set_result(data)

        server_side: list[asyncio.Transport] = []

        class Writer(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                server_side.append(transport)  # type: ignore[arg-type]

        server = await loop.create_server(Writer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client, _ = await loop.create_connection(Reader, "127.0.0.1", port)
        while not server_side:
            await asyncio.sleep(0.01)
        wrapped = HeadWithBody(server_side[0], loop)
        wrapped.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")  # no body follows
        data = await asyncio.wait_for(got, 5)
        wrapped.close()
        client.close()
        server.close()
        return data

    assert asyncio.run(main()) == b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
