"""Hypothesis strategies for hostile input, and the checks every answer must pass.

The strategies stay inside what the fake upstream answers cleanly (it is a test double,
not a hardened server): model names never match its scripted prefixes (``error-``,
``slow-``...), and fields it interprets itself (``tools``, ``response_format``,
``stream_options``, ``logprobs``, ``n`` beyond 3) are left out, so a 5xx can only be the
gateway's own.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import strategies as st

PROVIDER_KEY = "sk-fuzz-provider-SECRET-5b2e0c1d9a"
CALLER_KEY = "sk-fuzz-caller-SECRET-77f1e3aa04"
SECRETS = (PROVIDER_KEY, CALLER_KEY)
UPSTREAM_FIELDS = frozenset({"tools", "tool_choice", "response_format", "stream_options", "logprobs", "n"})

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
model_names = st.sampled_from(["R", "echo", "fz-model", ""]) | st.text(max_size=20).map(lambda t: "fz-" + t)
roles = st.sampled_from(["user", "system", "assistant", "developer", "tool"]) | st.text(max_size=8)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles | json_values},
        optional={"content": st.text(max_size=60) | json_values, "name": json_values},
    )
    | json_values,
    max_size=3,
)


def _no_upstream_fields(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k not in UPSTREAM_FIELDS}


chat_bodies = st.fixed_dictionaries(
    {"model": model_names | json_values, "messages": messages | json_values},
    optional={
        "stream": st.booleans() | json_values,
        "n": st.integers(min_value=-3, max_value=3) | st.text(max_size=3) | st.booleans() | st.none(),
        "user": json_values,
        "metadata": json_objects | json_values,
        "temperature": json_values,
        "seed": json_values,
    },
).flatmap(lambda body: json_objects.map(lambda extra: {**_no_upstream_fields(extra), **body}))
embedding_bodies = st.fixed_dictionaries(
    {"model": model_names | json_values},
    optional={"input": st.text(max_size=40) | st.lists(st.text(max_size=20), max_size=3) | json_values},
).flatmap(lambda body: json_objects.map(lambda extra: {**extra, **body}))
feedback_bodies = st.fixed_dictionaries(
    {},
    optional={
        "call_id": st.text(max_size=40) | json_values,
        "kind": st.sampled_from(["thumbs", "rating", "choice", "flag", "relabel", ""]) | json_values,
        "value": st.sampled_from(["up", "down", "a", "b", 3, 5.5, True]) | json_values,
        "comment": st.text(max_size=80) | json_values,
        "user": json_values,
        "data": json_objects | json_values,
    },
).flatmap(lambda body: (json_objects | st.just({})).map(lambda extra: {**extra, **body}))
route_changes = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["off", "shadow", "canary", "primary", "OFF", ""]) | json_values,
        "share": st.floats(allow_nan=True) | json_values,
        "shadow_rate": json_values,
        "candidate": st.sampled_from(["base", "cand", "nope"]) | json_values,
        "baseline": st.sampled_from(["base", "cand", "nope"]) | json_values,
        "sticky_key": st.sampled_from(["user", "session", "header:x", "header:"]) | json_values,
        "salt": json_values,
        "store_bodies": json_values,
        "reason": json_values,
        "actor": json_values,
    },
).flatmap(lambda body: (json_objects | st.just({})).map(lambda extra: {**extra, **body}))


def encoded(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON text of ``values``, or it mangled: cut short, a lone surrogate escape, deep nesting,
    not UTF-8, or raw bytes."""
    as_json = values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return st.one_of(
        as_json,
        as_json,
        as_json.flatmap(lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda i: b[:i])),
        as_json.map(lambda b: b.replace(b'"', b'"\\ud800', 1)),
        st.integers(1000, 20_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1000, 5000).map(lambda n: b'{"model": "R", "messages": ' + b"[" * n + b"]" * n + b"}"),
        as_json.map(lambda b: b"\xff\xfe" + b),
        st.binary(max_size=200),
    )


header_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
).map(lambda t: t.encode("latin-1"))
content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"",
    ]
)


@st.composite
def request_headers(draw: Any) -> dict[str, bytes]:
    """Headers a hostile client may send: the gateway's own, random ones, and secrets."""
    headers: dict[str, bytes] = {}
    if draw(st.booleans()):
        headers["content-type"] = draw(content_types | header_values)
    if draw(st.booleans()):
        headers["authorization"] = draw(
            st.sampled_from([b"Bearer " + CALLER_KEY.encode(), b"Bearer sk-st-nope", b"Basic eDp5"])
            | header_values
        )
    for name in ("x-shadowtune-session", "x-shadowtune-tags", "x-shadowtune-regenerate-of", "traceparent"):
        if draw(st.integers(0, 3)) == 0:
            headers[name] = draw(header_values)
    for i in range(draw(st.integers(0, 3))):
        headers[f"x-fz-{i}"] = draw(header_values)
    return headers


# -- the checks ----------------------------------------------------------------------------
def openai_error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, r.text[:300]
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] is None or isinstance(err["code"], str)
    return err


def check_answer(r: httpx.Response) -> None:
    """No 5xx, an OpenAI-shaped body for every 4xx, and no secret anywhere in the answer."""
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:500])
    if r.status_code >= 400 and r.request.method != "HEAD":
        err = openai_error(r)
        assert err["type"] != "server_error", err
    seen = r.content + repr(list(r.headers.raw)).encode()
    for secret in SECRETS:
        assert secret.encode() not in seen, f"secret in the answer to {r.request.url}"


def no_secret_in(rows: list[dict[str, Any]]) -> None:
    text = repr(rows)
    for secret in SECRETS:
        assert secret not in text, "a secret reached the log"
