"""From WAL records to rows: parsing, stream assembly, derived columns."""

from __future__ import annotations

import json

import pytest

from gateway.protocol.sse import assemble_chat as assemble_stream
from gateway.store.rows import derive, parse_lines, to_table
from gateway.store.schema import CALLS_SCHEMA


def sse(*chunks) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def chunk(choices, **kw):
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": choices,
        **kw,
    }


def test_parse_lines_counts_corrupt_lines_and_handles_the_tail():
    data = b'{"_t": "calls", "a": 1}\nnot json\n{"no_table": 1}\n{"_t": "calls", "a": 2}\n{"_t": "cal'
    records, corrupt = parse_lines(data)
    assert [r["a"] for r in records] == [1, 2]
    assert corrupt == 2  # an unterminated last line may still be being written: not counted
    records, corrupt = parse_lines(data, strict_tail=True)
    assert corrupt == 3


def test_streamed_text_tool_calls_usage_and_logprobs_are_assembled():
    text = sse(
        chunk(
            [
                {"index": 0, "delta": {"role": "assistant", "content": ""}},
                {"index": 1, "delta": {"role": "assistant"}},
            ],
            system_fingerprint="fp",
        ),
        chunk(
            [
                {
                    "index": 0,
                    "delta": {"content": "Hel"},
                    "logprobs": {"content": [{"token": "Hel", "logprob": -1}]},
                }
            ]
        ),
        chunk(
            [
                {
                    "index": 0,
                    "delta": {"content": "lo"},
                    "logprobs": {"content": [{"token": "lo", "logprob": -2}]},
                }
            ]
        ),
        chunk(
            [
                {
                    "index": 1,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "f", "arguments": ""},
                            }
                        ]
                    },
                }
            ]
        ),
        chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]}}]),
        chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]),
        chunk(
            [
                {"index": 0, "delta": {}, "finish_reason": "stop"},
                {"index": 1, "delta": {}, "finish_reason": "tool_calls"},
            ]
        ),
        chunk([], usage={"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}),
    )
    out = assemble_stream(text)
    assert out["id"] == "chatcmpl-9"
    assert out["system_fingerprint"] == "fp"
    assert out["usage"]["total_tokens"] == 10
    first, second = out["choices"]
    assert first["message"] == {"role": "assistant", "content": "Hello"}
    assert first["finish_reason"] == "stop"
    assert [t["token"] for t in first["logprobs"]["content"]] == ["Hel", "lo"]
    assert second["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]
    assert second["finish_reason"] == "tool_calls"


def test_an_error_event_is_kept_in_the_assembled_response():
    text = sse(chunk([{"index": 0, "delta": {"content": "par"}}])).replace("data: [DONE]\n\n", "")
    text += 'data: {"error": {"message": "broke", "type": "upstream_error", "param": null, "code": null}}\n\n'
    out = assemble_stream(text)
    assert out["choices"][0]["message"]["content"] == "par"
    assert out["error"]["message"] == "broke"


def test_derived_columns_and_cost():
    rec = {
        "_t": "calls",
        "call_id": "c",
        "ts": 1_700_000_000_000_000,
        "response_sse": sse(
            chunk([{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]),
            chunk([], usage={"prompt_tokens": 1000, "completion_tokens": 500}),
        ),
        "price_in": 2.0,
        "price_out": 8.0,
    }
    row = derive("calls", rec)
    assert "response_sse" in rec  # the original record is left as it was
    assert (row["output_text"], row["finish_reason"], row["response_id"]) == ("ok", "stop", "chatcmpl-9")
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 500)
    assert row["cost_usd"] == pytest.approx((1000 * 2 + 500 * 8) / 1e6)
    table = to_table("calls", [row], derived=True)
    assert table.schema == CALLS_SCHEMA
    assert table.column("ts")[0].as_py().year == 2023


def test_a_response_that_is_not_json_leaves_derived_columns_empty():
    row = derive("calls", {"_t": "calls", "call_id": "c", "ts": 1, "response": "<html>"})
    assert row.get("output_text") is None and row.get("input_tokens") is None
    assert to_table("calls", [row], derived=True).column("output_text").to_pylist() == [None]
