"""gateway.protocol.sse: the one-pass fast path of chat stream assembly gives what the general
merge gives, for any stream of the shapes upstreams send."""

from __future__ import annotations

import orjson
from hypothesis import given
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
