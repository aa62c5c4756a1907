"""One redactor (gateway.protocol.redact) for the call log and for datasets: one card pattern,
applied to the log where WAL lines become rows (the agent), a stream once assembled."""

from __future__ import annotations

import os
import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.redact import CARD, for_spec, log_spec, redact_pii
from gateway.store import quarantine
from gateway.store.conversion import convert_segment
from gateway.store.rows import derive
from trainer._redact import resolve_redactor

SPEC = log_spec(emails=True, cards=True, patterns=[r"ACCT-\d{6}"])
CARD_RX = re.compile(CARD)


def sse_of(*pieces: str) -> str:
    chunks = [{"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    chunks += [{"id": "c1", "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    chunks.append({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return "".join(f"data: {orjson.dumps(c).decode()}\n\n" for c in chunks) + "data: [DONE]\n\n"


class TestCardPattern:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
            ("card 4111-1111-1111-1111 ok", "card [CARD] ok"),
            ("card 4111111111111111.", "card [CARD]."),
            ("amex 3782 822463 10005!", "amex [CARD]!"),
            # the separator after the number is not part of it (the datasets' old pattern took it)
            ("4111 1111 1111 1111 x", "[CARD] x"),
            ("4111-1111-1111-1111-x", "[CARD]-x"),
            # 12 digits, or 20, are not card numbers; a double separator breaks a number
            ("order 123456789012 ok", "order 123456789012 ok"),
            ("id 12345678901234567890 ok", "id 12345678901234567890 ok"),
            ("4111  1111  1111  1111", "4111  1111  1111  1111"),
        ],
    )
    def test_cards_and_what_is_not_one(self, text, expected):
        assert for_spec(SPEC)(text) == expected

    @given(
        st.lists(st.sampled_from("0123456789"), min_size=13, max_size=19),
        st.lists(st.sampled_from(["", " ", "-"]), min_size=19, max_size=19),
    )
    def test_every_13_to_19_digit_number_with_single_separators_is_redacted_whole(self, digits, seps):
        number = "".join(d + (seps[i] if i < len(digits) - 1 else "") for i, d in enumerate(digits))
        assert for_spec(SPEC)(f"pay {number} now") == "pay [CARD] now"

    @given(st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=80))
    def test_text_without_digits_is_untouched_by_the_card_rule(self, text):
        assert CARD_RX.sub("[CARD]", text) == text

    def test_datasets_use_the_same_pattern(self):
        assert redact_pii("4111-1111-1111-1111-x") == "[CARD]-x"
        assert resolve_redactor("pii")("mail jane@example.com") == "mail [EMAIL]"


class TestLogSpec:
    def test_no_redaction_configured_means_no_spec(self):
        assert log_spec(False, False, []) is None

    def test_a_pattern_that_does_not_compile_fails_at_startup(self):
        with pytest.raises(ValueError, match="does not compile"):
            log_spec(False, False, ["(unclosed"])

    @pytest.mark.parametrize("spec", ["emails", {"patterns": "x"}, {"patterns": [1]}])
    def test_a_spec_of_the_wrong_shape_is_refused(self, spec):
        with pytest.raises(ValueError):
            for_spec(spec)


SECRET = "mail jane.doe@example.com card 4111 1111 1111 1111 account ACCT-123456 ok"
REDACTED = "mail [EMAIL] card [CARD] account [REDACTED] ok"


def wal_record(**fields):
    return {
        "_t": "calls",
        "call_id": "call_1",
        "ts": 1_764_000_000_000_000,
        "endpoint": "chat.completions",
        **fields,
    }


class TestAppliedWhereLinesBecomeRows:
    def test_request_response_metadata_and_output_text_are_redacted(self):
        request = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": SECRET}]}).decode()
        response = orjson.dumps(
            {"id": "r1", "choices": [{"index": 0, "message": {"content": SECRET}}]}
        ).decode()
        meta = orjson.dumps({"note": "jane.doe@example.com"}).decode()
        row = derive("calls", wal_record(request=request, response=response, metadata=meta, redact=SPEC))
        assert orjson.loads(row["request"])["messages"][0]["content"] == REDACTED
        assert orjson.loads(row["response"])["choices"][0]["message"]["content"] == REDACTED
        assert row["output_text"] == REDACTED
        assert orjson.loads(row["metadata"]) == {"note": "[EMAIL]"}
        assert "redact" not in row

    def test_a_stream_is_assembled_first_so_a_pattern_may_span_chunks(self):
        sse = sse_of(
            "mail jane.d", "oe@exam", "ple.com card 4111 11", "11 1111 1111 account ACCT-12", "3456 ok"
        )
        row = derive("calls", wal_record(response_sse=sse, redact=SPEC))
        assert row["output_text"] == REDACTED
        assert "jane" not in row["response"] and "4111" not in row["response"]

    def test_without_a_spec_nothing_is_redacted(self):
        row = derive("calls", wal_record(response_sse=sse_of(SECRET)))
        assert row["output_text"] == SECRET

    def test_a_quarantined_record_is_redacted_too_and_the_files_are_private(self, tmp_path):
        log_dir, wal_dir = str(tmp_path / "log"), str(tmp_path / "wal")
        os.makedirs(wal_dir)
        bad = wal_record(request=SECRET, latency_ms="not a number", redact=SPEC)
        good = wal_record(call_id="call_2", request=SECRET, redact=SPEC)
        seg = os.path.join(wal_dir, "w1.00000001.wal")
        with open(seg, "wb") as f:
            f.write(orjson.dumps(good) + b"\n" + orjson.dumps(bad) + b"\n")
        done = convert_segment(log_dir, wal_dir, "w1", seg)
        assert (done.rows, done.quarantined) == (1, 1)
        (path,) = [
            os.path.join(quarantine.directory(wal_dir), n) for n in os.listdir(quarantine.directory(wal_dir))
        ]
        with open(path, "rb") as f:
            data = f.read()
        assert b"jane.doe" not in data and b"[EMAIL]" in data
        assert os.stat(path).st_mode & 0o777 == 0o600
