"""gateway.protocol.sse: the one-pass fast path of chat stream assembly gives what the general
merge gives, for any stream of the shapes upstreams send."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.protocol import sse

text = st.text(max_size=6)
delta = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["assistant"]),
        "content": st.one_of(st.none(), text),
        "refusal": st.one_of(st.none(), text),
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {"index": st.integers(0, 1)},
                optional={
                    "id": text,
                    "function": st.fixed_dictionaries({}, optional={"name": text, "arguments": text}),
                },
            ),
            max_size=2,
        ),
    },
)
choice = st.fixed_dictionaries(
    {"index": st.integers(0, 1), "delta": delta},
    optional={"finish_reason": st.one_of(st.none(), st.sampled_from(["stop", "length"]))},
)
chunk = st.one_of(
    st.fixed_dictionaries(
        {"id": st.just("c1"), "model": st.just("m"), "choices": st.lists(choice, max_size=2)},
        optional={"usage": st.one_of(st.none(), st.just({"prompt_tokens": 3, "completion_tokens": 2}))},
    ),
    st.just({"error": {"message": "boom", "type": "server_error"}}),
)


def sse_text(chunks: list[dict]) -> str:
    return "".join(f"data: {orjson.dumps(c).decode()}\n\n" for c in chunks) + "data: [DONE]\n\n"


def general(chunks: list[dict]) -> dict:
    parts = sse._single_choice(chunks) or sse._merged_choices(chunks)
    return sse._completion(*parts)


@given(st.lists(chunk, max_size=8))
def test_the_fast_path_agrees_with_the_general_merge(chunks):
    said_something = any(
        d.get("role") or d.get("content") or ch.get("finish_reason")
        for c in chunks
        for ch in c.get("choices") or ()
        for d in [ch["delta"]]
    )
    fast = sse._text_stream(chunks)
    if fast is not None and said_something:
        assert fast == general(chunks)
    assert sse.assemble_chat(sse_text(chunks)) == (fast if fast is not None else general(chunks))


def test_a_plain_text_stream_takes_the_fast_path():
    chunks = [
        {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
    ]
    assert sse._text_stream(chunks) == {
        "id": "c1",
        "object": "chat.completion",
        "created": None,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    }
    assert sse.payloads(sse_text(chunks)) == chunks


def test_a_stream_with_an_error_event_or_tool_calls_is_merged_in_full():
    err = {"error": {"message": "boom"}}
    tool = {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1"}]}}]}
    assert sse._text_stream([tool]) is None and sse._text_stream([err]) is None
    assert sse.assemble_chat(sse_text([tool, err]))["error"] == {"message": "boom"}


class TestEventFraming:
    def test_an_event_carries_its_json_and_parses_back(self):
        from gateway.protocol.sse import DONE, event, payloads

        chunk = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "é\n"}}]}
        text = (event(chunk) + event(b'{"already": "encoded"}') + DONE).decode()
        assert text.startswith('data: {"id":"chatcmpl-1"') and text.endswith("data: [DONE]\n\n")
        assert payloads(text) == [chunk, {"already": "encoded"}]

    def test_a_named_event_has_its_event_line(self):
        from gateway.protocol.sse import event

        assert event({"type": "response.created"}, name="response.created") == (
            b'event: response.created\ndata: {"type":"response.created"}\n\n'
        )


# -- the typed reading (gateway.protocol.chunks) against the dict path -------------------------
json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),  # past int64 and past 64 bits (orjson: a float)
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=6,
)
odd_delta = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.just("assistant"), json_value),
        "content": st.one_of(text, json_value),
        "refusal": json_value,
        "tool_calls": json_value,
        "function_call": json_value,
    },
)
odd_choice = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.just(0), json_value),
        "delta": st.one_of(odd_delta, json_value),
        "finish_reason": st.one_of(st.just("stop"), json_value),
        "logprobs": json_value,
        "content_filter_results": json_value,
    },
)
usage = st.one_of(
    st.just({"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}}),
    st.dictionaries(
        st.sampled_from(["prompt_tokens", "completion_tokens", "details"]), json_value, max_size=3
    ),
)
odd_chunk = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.just("chatcmpl-1"), json_value),
        "object": st.one_of(st.just("chat.completion.chunk"), json_value),
        "created": st.one_of(st.just(1735689600), json_value),
        "model": st.one_of(st.just("m"), json_value),
        "system_fingerprint": st.one_of(st.just("fp"), json_value),
        "choices": st.one_of(st.lists(st.one_of(choice, odd_choice), max_size=2), json_value),
        "usage": st.one_of(st.none(), usage),
        "error": json_value,
        "obfuscation": text,
        "x_unknown": json_value,
    },
)
raw_event = st.sampled_from(
    ['{"x_unknown": 1e400}', '{"created": 1e400}', '{"usage": {"n": 1e999}}', "[1, 2]", "7"]
)


def dict_path(text_: str) -> dict:
    """`sse.assemble_chat` as it was before the typed reading: dicts, fast path or general merge."""
    chunks = sse._objects(text_)
    fast = sse._text_stream(chunks)
    return fast if fast is not None else general(chunks)


def stdlib_sse(events: list) -> str:
    import json

    return (
        "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
        + "data: [DONE]\n\n"
    )


def plain_stream(pieces: list[str]) -> list[Any]:
    events: list[Any] = [
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "system_fingerprint": "fp",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}]}
    ]  # fmt: skip
    events += [{"id": "c", "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    events.append({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    return events


FIELDS = {  # where in a chunk a perturbation lands
    "chunk": [
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
        "error",
        "x_unknown",
    ],
    "choice": ["index", "delta", "finish_reason", "logprobs", "x_unknown"],
    "delta": ["role", "content", "refusal", "tool_calls", "function_call", "x_unknown"],
}
tool_call = st.just([{"index": 0, "id": "t1", "function": {"name": "f", "arguments": "{}"}}])
at = st.one_of(st.just(0), st.integers(0, 20))  # the first chunk is the base of the answer
perturbation = st.one_of(
    st.tuples(st.just("insert"), at, st.one_of(raw_event, odd_chunk, chunk)),
    *(
        st.tuples(st.just(kind), at, st.tuples(st.sampled_from(fields), st.one_of(json_value, tool_call)))
        for kind, fields in FIELDS.items()
    ),
    st.tuples(  # a number orjson reads otherwise than a typed int, or refuses, in a chunk or a delta
        st.sampled_from(["raw chunk", "raw choice", "raw delta"]),
        at,
        st.tuples(
            st.sampled_from(["created", "index", "x_unknown"]),
            st.sampled_from(["1e400", str(2**64), str(2**63), "-0", "1.5"]),
        ),
    ),
)


def perturbed(events: list[Any], changes: list[tuple[str, int, Any]]) -> list[Any]:
    import copy

    out = copy.deepcopy(events)
    for where, at, what in changes:
        i = at % (len(out) + (where == "insert"))
        if where == "insert":
            out.insert(i, what)
            continue
        if not isinstance(out[i], dict):
            continue
        target: Any = out[i]
        if where in ("choice", "delta", "raw choice", "raw delta"):
            choices = target.get("choices")
            if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
                continue
            target = choices[0] if where.endswith("choice") else choices[0].get("delta")
            if not isinstance(target, dict):
                continue
        if where.startswith("raw"):  # written as text: json.dumps cannot write 1e400
            key, number = what
            target[key] = "@RAW@"
            out[i] = json.dumps(out[i]).replace('"@RAW@"', number)
        else:
            target[what[0]] = what[1]
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(max_size=4), max_size=4), st.lists(perturbation, max_size=2))
@example(["a"], [("raw chunk", 0, ("created", str(2**64)))])  # orjson: a float
@example(["a"], [("raw delta", 1, ("x_unknown", "1e400"))])  # orjson refuses the stream at once
@example(["a"], [("choice", 1, ("x_unknown", "y"))])
@example(["a"], [("choice", 1, ("index", 1))])
@example(["a"], [("chunk", 1, ("error", None))])  # present, even null: an error event
@example(["a"], [("delta", 1, ("tool_calls", None))])
@example(["a"], [("chunk", 3, ("usage", {"prompt_tokens": 1, "details": [1, 2]}))])  # the last usage
@example(["a"], [("chunk", 3, ("usage", {"prompt_tokens": 2**64}))])
@example(["a"], [("raw choice", 1, ("x_unknown", "1e400"))])
def test_the_typed_reading_gives_what_the_dict_path_gives_whatever_the_chunks_hold(pieces, changes):
    """Values of other types, integers past int64, floats, nested usage, unknown fields (one that
    orjson refuses, too), error events, non-object events, in any chunk of a plain stream: the
    typed reading either gives the dict path's answer or leaves the stream to it."""
    text_ = stdlib_sse(perturbed(plain_stream(pieces), changes))
    assert outcome(sse.assemble_chat, text_) == outcome(dict_path, text_)


def outcome(fn: Any, arg: str) -> tuple[str, Any]:
    """What ``fn(arg)`` gives, as its repr (an int and a float of one value are equal, but they
    are not the same JSON: orjson cannot write an int past 64 bits), or the type of what it raises
    (a chunk shape no stream has: the log then keeps the raw stream, `gateway.store.rows`)."""
    try:
        return "ok", repr(fn(arg))
    except Exception as exc:
        return "raised", type(exc)


@given(st.lists(st.text(max_size=8), max_size=12), st.booleans())
def test_a_plain_text_stream_is_read_typed(pieces, with_usage):
    from gateway.protocol.chunks import text_stream

    events = plain_stream(pieces)[: None if with_usage else -1]
    text_ = stdlib_sse(events)
    assert text_stream(sse._events_array(text_) or "") is not None  # not left to the dict path
    assert sse.assemble_chat(text_) == dict_path(text_)
    assert sse.assemble_chat(text_)["choices"][0]["message"]["content"] == ("".join(pieces) or None)
