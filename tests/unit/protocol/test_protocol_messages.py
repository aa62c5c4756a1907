"""gateway.protocol: message text, request views that keep unknown fields, and the one error body,
as the gateway, the trainer's server and the review page use them."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import GatewayError, InvalidRequest, error_dict
from gateway.hotpath import _parse
from gateway.protocol.errors import as_openai_error, error_body, error_object, upstream_error
from gateway.protocol.messages import map_text, message_text
from gateway.protocol.requests import ChatRequest, ResponsesRequest
from gateway.web import _conversation
from trainer.serve import template_messages

PARTS = [
    {"type": "text", "text": "look at"},
    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
    {"type": "text", "text": "this"},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=10,
)


class TestMessageText:
    def test_a_string_is_its_own_text(self):
        assert message_text("hi") == "hi"

    def test_the_text_parts_of_a_list_are_joined_by_the_separator(self):
        assert message_text(PARTS) == "look at this"
        assert message_text(PARTS, sep="") == "look atthis"

    def test_responses_api_parts_have_text_too(self):
        assert (
            message_text([{"type": "input_text", "text": "a"}, {"type": "output_text", "text": "b"}]) == "a b"
        )

    def test_placeholders_show_what_is_not_text(self):
        assert message_text(PARTS, sep="\n", placeholders=True) == "look at\n[image_url]\nthis"
        assert message_text([7, {"text": 3}], placeholders=True) == "7 [part]"
        assert message_text({"odd": 1}, placeholders=True) == '{"odd":1}'

    def test_null_and_other_shapes_are_empty_without_placeholders(self):
        assert message_text(None) == ""
        assert message_text(None, placeholders=True) == ""
        assert message_text({"odd": 1}) == ""
        assert message_text([{"type": "text", "text": 5}, "x"]) == ""

    @given(json_values)
    def test_any_logged_value_yields_text(self, value):
        for placeholders in (False, True):
            assert isinstance(message_text(value, placeholders=placeholders), str)

    def test_map_text_changes_only_text(self):
        assert map_text("a b", str.upper) == "A B"
        assert map_text(PARTS, str.upper) == [
            {"type": "text", "text": "LOOK AT"},
            PARTS[1],
            {"type": "text", "text": "THIS"},
        ]
        assert map_text(None, str.upper) is None

    def test_the_trainer_server_and_the_review_page_use_it(self):
        msgs = [{"role": "user", "content": PARTS}, {"role": "developer", "content": "be brief"}]
        assert template_messages(msgs) == [
            {"role": "user", "content": "look atthis"},
            {"role": "system", "content": "be brief"},
        ]
        shown = _conversation.messages(orjson.dumps({"messages": msgs}).decode())
        assert shown[0]["content"] == "look at\n[image_url]\nthis"


class TestRequestViews:
    def test_a_chat_view_reads_the_fields_and_keeps_unknown_ones(self):
        body = orjson.dumps(
            {
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "x_vendor": {"a": 1},
            }
        )
        req = _parse(body, "chat.completions")
        assert isinstance(req, ChatRequest)
        assert (req.model, req.stream, req.messages[0]["content"], req.get("x_vendor")) == (
            "m",
            True,
            "hi",
            {"a": 1},
        )
        swapped = orjson.loads(req.with_model("upstream-id"))
        assert swapped == {**orjson.loads(body), "model": "upstream-id"}

    def test_a_responses_view_knows_when_it_continues_server_side_state(self):
        req = _parse(
            b'{"model": "m", "input": "hi", "previous_response_id": "resp_1", "extra": 1}', "responses"
        )
        assert isinstance(req, ResponsesRequest)
        assert (req.input, req.previous_response_id, req.stateful, req.get("extra")) == (
            "hi",
            "resp_1",
            True,
            1,
        )
        assert not _parse(b'{"model": "m", "input": "hi"}', "responses").stateful

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            (b"", None),
            (b"[1]", None),
            (b'{"model": 3}', "model"),
            (b'{"model": "m", "messages": []}', "messages"),
            (b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
            (b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
            (b'{"model": "m", "messages": [{"role": "user"}], "n": 0}', "n"),
        ],
    )
    def test_bad_bodies_are_400s_naming_the_field(self, body, param):
        with pytest.raises(InvalidRequest) as err:
            _parse(body, "chat.completions")
        assert err.value.status == 400
        assert err.value.param == param


class TestErrorBody:
    def test_one_shape_for_bytes_dicts_and_exceptions(self):
        expected = {"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}
        assert error_object("m", "t", param="p", code="c") == expected
        assert orjson.loads(error_body("m", "t", param="p", code="c")) == expected
        exc = GatewayError("m", param="p", code="c")
        exc.type = "t"
        assert {"error": error_dict(exc)} == expected
        assert orjson.loads(exc.body()) == expected

    def test_an_upstream_error_is_read_and_passed_on_in_openai_shape(self):
        openai_shaped = b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'
        assert upstream_error(openai_shaped) == ("rate_limit_error", "slow down")
        assert as_openai_error(openai_shaped, 429) is openai_shaped
        assert upstream_error(b'{"error": "plain"}') == ("upstream_error", "plain")
        wrapped = orjson.loads(as_openai_error(b"<html>bad gateway</html>", 502))
        assert wrapped == {
            "error": {
                "message": "<html>bad gateway</html>",
                "type": "upstream_error",
                "param": None,
                "code": "502",
            }
        }
        assert orjson.loads(as_openai_error(b"", 503))["error"]["message"] == "upstream answered 503"


def test_the_protocol_layer_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys; import gateway.protocol.requests, gateway.protocol.messages, gateway.protocol.sse, "
        "gateway.protocol.errors, gateway.protocol.redact, gateway.protocol.record; "
        "print(','.join(sorted(m for m in ('pyarrow', 'duckdb', 'fastapi', 'uvicorn', 'opentelemetry') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
