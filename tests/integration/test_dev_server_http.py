"""The trainer's dev server (`trainer.serve`) speaks the gateway's protocol.

A tiny untrained model is served on loopback; its requests are read by `gateway.protocol`
(the same 400s as the gateway), its errors are the gateway's OpenAI body, and its streams are
framed so that `gateway.protocol.sse` assembles them into the answer a plain call gets. Hostile
bodies get a 4xx, never a 5xx.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol.sse import assemble_chat, payloads
from tests.support.tiny_model import SYSTEM, ThreadServer, shared_tiny_model

NAME = "tiny-dev"
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Order from Bob: 2 mug to Lima."},
]


@pytest.fixture(scope="module")
def served():
    from trainer.serve import ChatModel, create_app

    model = ChatModel.load(shared_tiny_model(), name=NAME, device="cpu")
    server = ThreadServer(create_app(model))
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            yield http
    finally:
        server.stop()


def chat(http: httpx.Client, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post("/chat/completions", content=content, headers={"content-type": "application/json"})


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"", 400, None, None),
        (b"{not json", 400, None, None),
        (b"[1, 2]", 400, None, None),
        ({"messages": MESSAGES}, 400, "model", None),  # the gateway's rule: model is required
        ({"model": NAME, "messages": []}, 400, "messages", None),
        ({"model": NAME, "messages": [{"content": "no role"}]}, 400, "messages[0].role", None),
        ({"model": NAME, "messages": MESSAGES, "stream": "yes"}, 400, "stream", None),
        ({"model": "gpt-4o", "messages": MESSAGES}, 404, "model", "model_not_found"),
        ({"model": NAME, "messages": MESSAGES, "n": 2}, 400, "n", None),
        ({"model": NAME, "messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens", None),
        ({"model": NAME, "messages": MESSAGES, "max_tokens": True}, 400, "max_tokens", None),
        ({"model": NAME, "messages": MESSAGES, "temperature": 3}, 400, "temperature", None),
        ({"model": NAME, "messages": MESSAGES, "top_p": "high"}, 400, "top_p", None),
        ({"model": NAME, "messages": MESSAGES, "stop": [1]}, 400, "stop", None),
        ({"model": NAME, "messages": MESSAGES, "seed": "x"}, 400, "seed", None),
    ],
)
def test_a_bad_request_gets_the_gateways_error(served, body, status, param, code):
    resp = chat(served, body)
    assert resp.status_code == status, resp.text
    err = error_of(resp)
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    if code is not None:
        assert err["code"] == code


def test_a_stream_assembles_into_the_plain_answer(served):
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    plain = chat(served, body)
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")

    streamed = chat(served, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    text = streamed.text
    assert text.endswith("data: [DONE]\n\n")
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assembled = assemble_chat(text)
    assert assembled["choices"][0]["message"]["content"] == answer["choices"][0]["message"]["content"]
    assert assembled["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]
    assert assembled["usage"] == answer["usage"]
    assert all(p["model"] == NAME for p in payloads(text))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just(NAME) | _json,
        "messages": st.just(MESSAGES) | _json,
        "n": _json,
        "max_tokens": st.integers(-2, 3) | _json,
        "temperature": _json,
        "top_p": _json,
        "stop": _json,
        "seed": _json,
        "stream": _json,
        "stream_options": _json,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_fields | _json)
def test_hostile_bodies_get_a_4xx_never_a_5xx(served, body):
    resp = chat(served, body)
    if resp.status_code == 200:
        return  # a valid request, answered (max_tokens at most 3: quick)
    assert 400 <= resp.status_code < 500, (body, resp.status_code, resp.text)
    error_of(resp)


def test_a_dev_server_that_cannot_start_says_so(tmp_path):
    from trainer.errors import ServeError
    from trainer.serve import start_dev_server

    out = tmp_path / "server.log"
    with pytest.raises(ServeError, match=r"the dev server for nope-v1 exited with [1-9]"):
        start_dev_server(str(tmp_path / "log"), "nope-v1", timeout=120, output=str(out))
    assert "nope-v1" in out.read_text()  # its own message, in the file it was given
