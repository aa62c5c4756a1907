"""Hypothesis drives the upstream: any status, content type, content encoding and body bytes.

Whatever the upstream sends, the gateway answers with a body the caller's client can parse (a
JSON object, or an SSE stream when one was asked for and came), in OpenAI's error shape when
it is an error, 5xx only when the upstream failed or answered something unusable, logs the
call with the status the caller got, and stays alive."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.calllog import row

DECODABLE = (None, "identity")
try:
    import brotli  # noqa: F401

    REFUSED = {"zstd", "gzip, br"}  # refused before a byte is relayed
except ImportError:
    REFUSED = {"zstd", "gzip, br", "br"}
VALID = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }
).encode()

bodies = st.one_of(
    st.binary(max_size=600),
    st.just(VALID),
    st.just(VALID[: len(VALID) // 2]),
    st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.integers() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=8,
        ),
    ),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.text(max_size=40), max_size=5).map(
        lambda xs: "".join(f"data: {x}\n\n" for x in xs).encode("utf-8", "surrogatepass")
    ),
)


@pytest.fixture
def fuzz_gateway(make_settings, start_gateway):
    settings = make_settings(
        upstreams={"up": {"model": "scripted", "retries": 0}}, routes={"r": {"baseline": "up"}}
    )
    return start_gateway(settings)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.sampled_from([200, 201, 400, 401, 404, 422, 429, 500, 502, 503]),
    content_type=st.sampled_from(
        ["application/json", "text/event-stream", "text/html", "application/octet-stream"]
    ),
    encoding=st.sampled_from([None, "identity", "gzip", "deflate", "br", "zstd", "gzip, br"]),
    body=bodies,
    stream=st.booleans(),
)
def test_whatever_the_upstream_answers_the_caller_gets_a_parseable_answer(
    fuzz_gateway, fake_upstream, log_dir, status, content_type, encoding, body, stream
):
    headers = {"Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    fake_upstream.scripted["scripted"] = (status, headers, body)
    resp = httpx.post(
        fuzz_gateway.base_url + "/chat/completions",
        json={"model": "r", "messages": [{"role": "user", "content": "x"}], "stream": stream},
        timeout=20,
    )
    bad_answer = encoding not in DECODABLE
    if stream and content_type == "text/event-stream" and status < 400 and encoding not in REFUSED:
        assert resp.status_code == 200  # relayed as a stream; a bad encoding ends it with an error event
        assert resp.headers["content-type"].startswith("text/event-stream")
        if encoding == "gzip" and body and body[:2] != b"\x1f\x8b":  # surely not gzip: ends in an error event
            last = [line for line in resp.text.splitlines() if line.startswith("data: ")][-1]
            assert json.loads(last[6:])["error"]["code"] == "upstream_bad_encoding"
    else:
        parsed = resp.json()  # never a body the caller's client cannot decode
        assert isinstance(parsed, dict)
        if resp.status_code >= 400:
            assert set(parsed["error"]) == {"message", "type", "param", "code"}
            code = parsed["error"]["code"]
            assert code is None or isinstance(code, str)
        else:
            assert resp.status_code == status and not bad_answer
        if resp.status_code >= 500:  # 5xx only when the upstream failed or answered something unusable
            assert status >= 500 or bad_answer or status < 300
        assert resp.status_code in (status, 502)
    r = row(fuzz_gateway, log_dir, resp.headers["x-request-id"])
    if resp.headers["content-type"].startswith("application/json"):
        assert r["status"] == resp.status_code
    else:
        assert r["status"] in (200, 502)
    assert httpx.get(fuzz_gateway.url + "/healthz", timeout=10).status_code == 200
