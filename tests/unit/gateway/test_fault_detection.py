"""The pure parts of upstream fault handling: redaction, error events, decoders, stream assembly."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest

from gateway.errors import UpstreamError
from gateway.protocol.sse import assemble_completions, assemble_responses
from gateway.upstream import encoding, faults


class TestRedact:
    @pytest.mark.parametrize(
        ("text", "secret"),
        [
            ("cannot reach http://ops:hunter2pw@10.0.0.5:8000/v1/chat/completions", "hunter2pw"),
            ("header Authorization: Bearer sk-live-abcdefghijklmnop", "sk-live-abcdefghijklmnop"),
            ("Basic dXNlcjpwYXNzd29yZA== rejected", "dXNlcjpwYXNzd29yZA=="),
            ("key sk-proj-0123456789abcdef leaked", "0123456789abcdef"),
            ("GET https://example.com/v1?api_key=topsecret123&x=1", "topsecret123"),
            ("https://x.example/models?key=AIzaSyD-secret", "AIzaSyD-secret"),
        ],
    )
    def test_credentials_are_replaced(self, text, secret):
        out = faults.redact(text)
        assert secret not in out
        assert "***" in out

    def test_the_user_name_and_host_stay_for_the_operator(self):
        assert faults.redact("http://ops:pw@db.internal:5432/x") == "http://ops:***@db.internal:5432/x"

    def test_ordinary_text_is_left_alone(self):
        text = "connection to the upstream closed (basic auth disabled) after 10s"
        assert faults.redact(text) == text

    def test_the_callers_body_names_the_call_and_no_url(self):
        exc = UpstreamError("the upstream could not be reached", detail="cannot reach http://u:p4ss@h/v1")
        body = orjson.loads(faults.public_body(exc, "call_123"))["error"]
        assert "call_123" in body["message"] and "h/v1" not in body["message"]
        assert faults.log_message(exc) == "cannot reach http://u:***@h/v1"


class TestStreamError:
    def test_a_plain_stream_has_none(self):
        sse = b'data: {"choices":[{"delta":{"content":"the word \\"error\\" in text"}}]}\n\ndata: [DONE]\n\n'
        assert faults.stream_error(sse) is None

    def test_a_chat_error_event(self):
        sse = b'data: {"choices":[]}\n\ndata: {"error": {"message": "boom", "type": "server_error"}}\n\n'
        assert faults.stream_error(sse) == ("server_error", "boom")

    def test_a_responses_error_event_and_a_failed_response(self):
        err = b'event: error\ndata: {"type":"error","code":"rate_limit_exceeded","message":"slow down"}\n\n'
        assert faults.stream_error(err) == ("rate_limit_exceeded", "slow down")
        failed = b'event: response.failed\ndata: {"type":"response.failed","response":{"error":{"code":"server_error","message":"x"}}}\n\n'
        assert faults.stream_error(failed) == ("server_error", "x")

    def test_a_completed_response_with_a_null_error_field_is_fine(self):
        ok = b'event: response.completed\ndata: {"type":"response.completed","response":{"error":null,"status":"completed"}}\n\n'
        assert faults.stream_error(ok) is None

    @pytest.mark.parametrize("body", [b"{", b"<html>", b"[]", b'"text"', b""])
    def test_invalid_json_answers(self, body):
        assert faults.invalid_json(body)


class TestDecoders:
    TEXT = b'data: {"choices": [{"delta": {"content": "hello"}}]}\n\n' * 50

    @pytest.mark.parametrize(
        ("name", "compress"),
        [
            (b"gzip", gzip.compress),
            (b"x-gzip", gzip.compress),
            (b"deflate", zlib.compress),
            (b"deflate", lambda d: zlib.compress(d, wbits=-15)),
        ],
    )
    def test_decodes_in_chunks(self, name, compress):
        data = compress(self.TEXT)
        decode = encoding.decoder(name)
        assert decode is not None
        out = b"".join(decode(data[i : i + 7]) for i in range(0, len(data), 7))
        assert out == self.TEXT

    def test_identity_needs_no_decoder(self):
        assert encoding.decoder(b"identity") is None

    @pytest.mark.parametrize("name", [b"zstd", b"gzip, br", b"compress"])
    def test_unknown_encodings_are_refused(self, name):
        with pytest.raises(encoding.UnsupportedEncoding):
            encoding.decoder(name)


class TestSurfaces:
    def test_a_responses_stream_becomes_its_final_response(self):
        final = {"id": "resp_1", "status": "completed", "output": []}
        sse = (
            'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1"}}\n\n'
            'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"hi"}\n\n'
            f"event: response.completed\ndata: {orjson.dumps({'type': 'response.completed', 'response': final}).decode()}\n\n"
        )
        assert assemble_responses(sse) == final

    def test_a_responses_stream_cut_short_keeps_its_text_and_error(self):
        sse = (
            'data: {"type":"response.created","response":{"id":"resp_2"}}\n\n'
            'data: {"type":"response.output_text.delta","delta":"par"}\n\n'
            'data: {"type":"error","code":"server_error","message":"x"}\n\n'
        )
        out = assemble_responses(sse)
        assert out["id"] == "resp_2" and out["status"] == "failed"
        assert out["output"][0]["content"][0]["text"] == "par"
        assert out["error"]["code"] == "server_error"

    def test_a_completions_stream_is_joined_per_choice(self):
        sse = (
            'data: {"id":"cmpl-1","model":"m","choices":[{"index":0,"text":"a"},{"index":1,"text":"x"}]}\n\n'
            'data: {"id":"cmpl-1","choices":[{"index":0,"text":"b","finish_reason":"stop"}]}\n\n'
            'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
            "data: [DONE]\n\n"
        )
        out = assemble_completions(sse)
        assert [c["text"] for c in out["choices"]] == ["ab", "x"]
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["usage"]["completion_tokens"] == 2
