"""CallRecord, the typed record at the log's boundary: whatever a caller puts in ``user``,
``metadata``, session or tags, the record's WAL line becomes a row of the calls table's
types; non-string values are kept as their JSON text, never dropped or mangled."""

from __future__ import annotations

import json

import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.record import WAL_FIELDS, CallRecord
from gateway.store.rows import convert, to_table
from gateway.store.schema import CALLS_SCHEMA

NOW_US = 1_764_000_000_000_000

# any JSON value orjson can parse back: what a caller can send in a request body
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


def built(req: dict, headers: dict[bytes, bytes] | None = None) -> CallRecord:
    rec = CallRecord.begin("call_1", NOW_US, "chat.completions")
    rec.annotate(req, headers or {})
    return rec


def as_row(rec: CallRecord) -> dict:
    """The record through JSON (the WAL) and into an Arrow table of the calls schema."""
    line = orjson.loads(orjson.dumps({**rec.to_wal(), "_t": "calls"}))
    table = to_table("calls", [line])
    assert table.schema == CALLS_SCHEMA
    return table.to_pylist()[0]


class TestNormalisation:
    def test_an_object_as_session_id_is_kept_as_its_json_text(self):
        row = as_row(built({"metadata": {"session_id": {"x": 1}}}))
        assert row["session_id"] == '{"x":1}'
        assert json.loads(row["metadata"]) == {"session_id": '{"x":1}'}

    def test_string_metadata_is_kept_as_is(self):
        meta = {f"k{i}": f"v{i}" for i in range(16)}
        row = as_row(built({"metadata": meta, "user": "u-1"}))
        assert json.loads(row["metadata"]) == meta
        assert row["user"] == "u-1"

    def test_non_string_user_and_metadata_values_become_json_text(self):
        row = as_row(built({"user": 42, "metadata": {"a": [1, 2], "b": None, "c": True, "d": "s"}}))
        assert row["user"] == "42"
        assert json.loads(row["metadata"]) == {"a": "[1,2]", "b": "null", "c": "true", "d": "s"}

    def test_metadata_that_is_not_an_object_is_kept_as_its_json_text(self):
        assert as_row(built({"metadata": [1, "a"]}))["metadata"] == '[1,"a"]'
        assert as_row(built({"metadata": "plain"}))["metadata"] == '"plain"'

    def test_tags_come_from_the_header_then_metadata_and_are_strings(self):
        rec = built({"metadata": {"tags": ["a", 1, {"b": 2}]}}, {b"x-shadowtune-tags": b"h1, h2"})
        assert as_row(rec)["tags"] == ["h1", "h2", "a", "1", '{"b":2}']
        assert as_row(built({"metadata": {"tags": "x,y"}}))["tags"] == ["x", "y"]
        assert as_row(built({"metadata": {"tags": 7}}))["tags"] == ["7"]

    def test_the_session_header_wins_over_metadata(self):
        rec = built({"metadata": {"session_id": "m"}}, {b"x-shadowtune-session": b"h\xe9"})
        assert as_row(rec)["session_id"] == "hé"

    def test_wrongly_typed_internal_values_become_null_instead_of_breaking_the_row(self):
        rec = built({})
        rec.status = "200"  # type: ignore[assignment]
        rec.route_version = 2**70
        rec.latency_ms = "slow"  # type: ignore[assignment]
        rec.stream = 1  # type: ignore[assignment]
        rec.route = 5  # type: ignore[assignment]
        row = as_row(rec)
        assert (row["status"], row["route_version"], row["latency_ms"], row["stream"]) == (
            None,
            None,
            None,
            None,
        )
        assert row["route"] == "5"

    def test_null_fields_are_left_out_of_the_line(self):
        assert built({}).to_wal() == {
            "call_id": "call_1",
            "ts": NOW_US,
            "endpoint": "chat.completions",
            "served": True,
        }

    def test_to_wal_writes_every_field_and_checks_the_type_of_each(self):
        from gateway.protocol import record

        good = {**{n: "t" for n in record._TEXT}, **{n: 1 for n in record._INT}}
        good |= {**{n: 1.5 for n in record._FLOAT}, **{n: True for n in record._BOOL}, "tags": ["a"]}
        good["redact"] = {"emails": True, "cards": False, "patterns": []}
        assert set(good) == set(WAL_FIELDS)
        rec = built({})
        for name, value in good.items():
            setattr(rec, name, value)
        assert rec.to_wal() == good
        for name in WAL_FIELDS:  # a value of the wrong type in any one field
            setattr(rec, name, {"wrong": [1]})
            out = rec.to_wal()
            if name in record._TEXT:
                assert out[name] == '{"wrong":[1]}'
            elif name == "tags":
                assert out[name] == ['{"wrong":[1]}']
            elif name == "redact":  # the gateway's own, never the caller's: an object is kept
                assert out[name] == {"wrong": [1]}
            else:
                assert name not in out
            setattr(rec, name, good[name])

    def test_every_wal_key_is_a_column_or_one_of_the_documented_extra_keys(self):
        extra = {"response_sse", "price_in", "price_out", "traceparent", "attempt", "redact"}
        assert set(WAL_FIELDS) - set(CALLS_SCHEMA.names) == extra

    def test_copies_for_fallback_and_shadow_keep_the_callers_fields(self):
        rec = built({"user": "u", "metadata": {"session_id": "s"}}, {b"traceparent": b"00-ab-cd-01"})
        rec.route, rec.variant, rec.status = "bot", "candidate", 502
        failed = rec.attempt_of("call_2", "fallback")
        assert (failed.parent_call_id, failed.served, failed.attempt, failed.status) == (
            "call_1",
            False,
            "fallback",
            502,
        )
        shadow = rec.shadow_of("call_3", NOW_US + 1, "baseline", True)
        assert (shadow.user, shadow.session_id, shadow.traceparent, shadow.route) == (
            "u",
            "s",
            "00-ab-cd-01",
            "bot",
        )
        assert (shadow.status, shadow.variant, shadow.attempt, shadow.stream) == (
            None,
            "baseline",
            "shadow",
            True,
        )


@settings(max_examples=300, deadline=None)
@given(
    user=json_values,
    metadata=json_values,
    session=st.none() | header_text,
    tags=st.none() | header_text,
    regen=st.none() | header_text,
)
def test_any_caller_value_becomes_a_row_of_the_calls_schema(user, metadata, session, tags, regen):
    req = {
        "model": "bot",
        "messages": [{"role": "user", "content": "hi"}],
        "user": user,
        "metadata": metadata,
    }
    headers = {}
    for name, value in (
        (b"x-shadowtune-session", session),
        (b"x-shadowtune-tags", tags),
        (b"x-shadowtune-regenerate-of", regen),
    ):
        if value is not None:
            headers[name] = value.encode("latin-1")
    rec = built(req, headers)
    row = as_row(rec)
    if isinstance(user, str):
        assert row["user"] == user  # a string is never altered
    elif user is not None:
        assert json.loads(row["user"]) == json.loads(orjson.dumps(user))  # the value, as JSON text
    if isinstance(metadata, dict):  # every key kept, every value a string
        logged = json.loads(row["metadata"])
        assert set(logged) == set(metadata) and all(isinstance(v, str) for v in logged.values())
    elif metadata is not None:
        assert json.loads(row["metadata"]) == json.loads(orjson.dumps(metadata))
    rejected: list = []
    table, _ = convert("calls", [{**rec.to_wal(), "_t": "calls"}], rejected)
    assert rejected == [] and isinstance(table, pa.Table) and table.num_rows == 1
