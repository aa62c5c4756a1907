"""Raw HTTP/1.1 over a socket, for requests no client library will send (malformed framing,
slow bytes, a body that never comes), and a reader for what the server answers."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_answer(sock: socket.socket) -> Answer:
    """Parse one HTTP response from ``sock`` (content-length or chunked)."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Answer:
    """Send ``data`` as is and read the answer."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def closed(sock: socket.socket) -> bool:
    """True once the peer has closed (EOF), after reading whatever it still sent."""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
