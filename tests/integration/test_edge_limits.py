"""Slow and oversized requests over real sockets on loopback (`gateway.server`, `gateway.edge`).

Slowloris (headers that never end), slow bodies, a ``Content-Length`` of 10 GB, headers
over the limit, malformed HTTP framing and a client that leaves mid-body: each gets an
answer in OpenAI's shape (or a silent close for a connection that never said anything),
within its deadline, while the gateway keeps serving everyone else.
"""

from __future__ import annotations

import logging
import socket
import time

import httpx
import pytest

from tests.support.calllog import wait_for_rows
from tests.support.rawhttp import Answer, connect, exchange, read_answer

CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
BODY = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]}'
SLACK = 6.0  # seconds of grace on top of a deadline: the machine may be busy


def error_of(answer: Answer) -> dict:
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert answer.headers["content-type"] == "application/json"
    return body["error"]


def alive(gw) -> None:
    r = httpx.post(gw.base_url + "/chat/completions", content=BODY, timeout=10)
    assert r.status_code == 200


def collect(socks: list[socket.socket], deadline: float) -> list[tuple[float, Answer]]:
    """Each socket's answer and when its connection closed (before ``deadline``)."""
    out = []
    for sock in socks:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        answer = read_answer(sock)
        assert sock.recv(1) == b""  # then closed
        out.append((time.monotonic(), answer))
        sock.close()
    return out


@pytest.fixture
def limited(make_settings, start_gateway):
    def start(**server):
        # feedback's per-client rate limit (tested in test_feedback_api) would answer 429 first
        signals = {"feedback_rate_per_min": 100_000, "feedback_burst": 100_000}
        return start_gateway(make_settings(server=server, signals=signals))

    return start


def test_two_hundred_slowloris_connections_get_408_and_are_closed(limited):
    gw = limited(header_timeout_s=2)
    socks = [connect(gw.port) for _ in range(200)]
    start = time.monotonic()
    for sock in socks:
        sock.sendall(CHAT + b"X-Slow: ")  # the headers never end
    alive(gw)  # everyone else is served meanwhile
    answers = collect(socks, start + 2 + SLACK)
    for at, answer in answers:
        assert answer.status == 408
        assert error_of(answer)["code"] == "request_timeout"
        assert answer.closes
        assert at - start >= 2 - 0.5  # not before the deadline
    alive(gw)


def test_trickling_header_bytes_does_not_extend_the_deadline(limited):
    gw = limited(header_timeout_s=1.5)
    with connect(gw.port) as sock:
        sock.sendall(CHAT)
        start = time.monotonic()
        sock.setblocking(False)
        got = b""
        while time.monotonic() - start < 1.5 * 4:  # far past the deadline if each byte reset it
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                break
            if chunk:
                got += chunk
                continue
            sock.send(b"X")  # one more byte of a header name, every 100 ms
            time.sleep(0.1)
        closed_after = time.monotonic() - start
    assert got.startswith(b"HTTP/1.1 408 ")
    assert closed_after < 1.5 + SLACK / 2


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(limited):
    gw = limited(keep_alive_timeout_s=1, header_timeout_s=30)
    socks = [connect(gw.port) for _ in range(50)]
    start = time.monotonic()
    for sock in socks:
        sock.settimeout(1 + SLACK)
        assert sock.recv(100) == b""  # closed without a word: it never started a request
        sock.close()
    assert time.monotonic() - start < 1 + SLACK


def test_bytes_that_begin_no_request_do_not_hold_a_connection(limited):
    """Blank lines are skipped by the parser before a request line; uvicorn cancels its keep-alive
    timer on any byte, so such a connection was never closed."""
    gw = limited(header_timeout_s=1.5, keep_alive_timeout_s=60)
    with connect(gw.port) as sock:
        sock.sendall(CHAT + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
        first = read_answer(sock)
        assert first.status == 200 and not first.closes
        start = time.monotonic()
        sock.sendall(b"\r\n\r\n")  # kept alive, then blank lines only
        sock.settimeout(1.5 + SLACK)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        assert time.monotonic() - start < 1.5 + SLACK
    assert rest.startswith(b"HTTP/1.1 408 ")


def test_the_rest_of_an_answered_body_cannot_trickle_forever(limited):
    gw = limited(header_timeout_s=1.5, keep_alive_timeout_s=60)
    with connect(gw.port) as sock:  # refused on its Host before its body is read
        sock.sendall(
            b"POST /review/calls/c/exclude HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 100000\r\n\r\n"
        )
        answer = read_answer(sock)
        assert answer.status == 400 and error_of(answer)["code"] == "host_not_allowed"
        start = time.monotonic()
        sock.setblocking(False)
        closed = False
        while not closed and time.monotonic() - start < 1.5 * 4:
            try:
                sock.send(b"x" * 10)  # the body, slowly: each byte used to cancel every timer
                closed = sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            time.sleep(0.1)
    assert closed
    assert time.monotonic() - start < 1.5 + SLACK


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback", "/admin/routes/R"])
def test_one_hundred_slow_bodies_get_408_and_are_closed(limited, log_dir, path):
    gw = limited(body_timeout_s=1.5)
    method = b"PATCH" if path.startswith("/admin") else b"POST"
    head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" % (method, path.encode())
    socks = [connect(gw.port) for _ in range(100)]
    start = time.monotonic()
    for sock in socks:
        sock.sendall(head + b'{"model": ')  # 10 of the 1000 bytes announced
    alive(gw)
    for _, answer in collect(socks, start + 1.5 + SLACK):
        assert answer.status == 408
        assert error_of(answer)["code"] == "request_timeout"
        assert answer.closes
    if path == "/v1/chat/completions":  # the hot path logs each one
        rows = wait_for_rows(gw, log_dir, "status = 408", 100)
        assert len(rows) == 100
        assert {r["error_type"] for r in rows} == {"invalid_request_error"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/feedback"),
        ("PATCH", "/admin/routes/R"),
        ("POST", "/review/calls/call_X/relabel"),
    ],
)
def test_a_ten_gigabyte_content_length_is_refused_before_the_body(limited, log_dir, method, path):
    gw = limited()
    with connect(gw.port) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000000\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        answer = read_answer(sock)  # no byte of the body was sent
        assert sock.recv(1) == b""
    assert answer.status == 413
    err = error_of(answer)
    assert (err["type"], err["code"]) == ("invalid_request_error", "payload_too_large")
    assert answer.closes
    if path.startswith("/v1/chat") or path.startswith("/v1/emb"):
        call_id = answer.headers["x-request-id"]
        assert wait_for_rows(gw, log_dir, f"call_id = '{call_id}'", 1)[0]["status"] == 413


def test_headers_over_the_limit_are_431(limited):
    gw = limited(max_header_bytes=8192)
    answer = exchange(gw.port, CHAT + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert answer.status == 431
    assert error_of(answer)["code"] == "headers_too_large"
    assert answer.closes
    ok = exchange(
        gw.port, CHAT + b"X-Fine: " + b"a" * 4000 + b"\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
    )
    assert ok.status == 200


@pytest.mark.parametrize(
    "data",
    [
        CHAT + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        CHAT + b"Content-Length: abc\r\n\r\n{}",
        CHAT + b"Content-Length: -1\r\n\r\n{}",
        CHAT + b"Content-Length: 99999999999999999999999999\r\n\r\n{}",
        CHAT + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
        CHAT + b"X-Bad\xff: 1\r\n\r\n",
        CHAT + b"X-Ctl: a\x01b\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=[
        "double-cl",
        "cl-not-a-number",
        "cl-negative",
        "cl-overflow",
        "te-and-cl",
        "header-name-byte",
        "control-char",
        "no-request-line",
        "bad-version",
    ],
)
def test_malformed_http_gets_an_openai_shaped_400(limited, data):
    gw = limited()
    answer = exchange(gw.port, data)
    assert answer.status == 400
    err = error_of(answer)
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_http_request")
    assert answer.closes
    alive(gw)


def test_a_header_value_with_bytes_over_0x7f_is_read_as_latin1(limited, log_dir):
    gw = limited()
    answer = exchange(
        gw.port,
        CHAT + b"X-Shadowtune-Tags: caf\xe9,\xff\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
    )
    assert answer.status == 200
    row = wait_for_rows(gw, log_dir, f"call_id = '{answer.headers['x-request-id']}'", 1)[0]
    assert list(row["tags"]) == ["café", "ÿ"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
def test_a_client_that_leaves_mid_body_is_a_499_not_a_400(limited, log_dir, path, caplog):
    caplog.set_level(logging.INFO, logger="shadowtune")
    gw = limited()
    with connect(gw.port) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{" % path.encode())
        time.sleep(0.3)
    if path == "/v1/chat/completions":
        rows = wait_for_rows(gw, log_dir, "TRUE", 1)
        assert [(r["status"], r["error_type"]) for r in rows] == [(499, "client_disconnected")]
    else:
        deadline = time.monotonic() + 5
        while "499" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "client disconnected while sending POST /v1/feedback (499)" in caplog.text
        assert "unexpected error" not in caplog.text
    alive(gw)
