"""LogStore: read-only DuckDB views over Parquet plus the unflushed WAL tail."""

from __future__ import annotations

import json
import time

import pytest

from gateway.store import LogStore, LogStoreError, LogWriter
from gateway.store.reader import check_read_only

NOW_US = time.time_ns() // 1000


@pytest.fixture(autouse=True)
def _one_instant_per_test() -> None:
    """Every timestamp of a test derives from one instant, taken when the test starts (not at import)."""
    global NOW_US
    NOW_US = time.time_ns() // 1000


@pytest.fixture
def store(log_dir):
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        w.append(
            "calls",
            {
                "call_id": "call_1",
                "ts": NOW_US,
                "route": "bot",
                "variant": "baseline",
                "served": True,
                "status": 200,
                "response": json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                    }
                ),
            },
        )
        w.append(
            "calls",
            {
                "call_id": "call_2",
                "ts": NOW_US + 1,
                "route": "bot",
                "variant": "candidate",
                "served": False,
                "status": 500,
                "error_type": "server_error",
            },
        )
        w.flush()
        w.append(
            "events",
            {
                "event_id": "e1",
                "call_id": "call_1",
                "ts": NOW_US + 2,
                "kind": "thumbs",
                "value": "up",
                "value_num": 1,
            },
        )
        w.append(
            "events",
            {"event_id": "e2", "call_id": "call_1", "ts": NOW_US + 3, "kind": "rating", "value_num": 4},
        )
        w.append(
            "events",
            {
                "event_id": "e3",
                "call_id": "chatcmpl-1",
                "ts": NOW_US + 4,
                "kind": "thumbs",
                "value": "up",
                "value_num": 1,
            },
        )
    with LogStore.open(log_dir) as s:
        yield s


def test_the_calls_view_has_derived_columns(store):
    rows = store.sql(
        "SELECT call_id, output_text, finish_reason, response_id, input_tokens, output_tokens"
        " FROM calls ORDER BY call_id"
    )
    assert rows[0] == {
        "call_id": "call_1",
        "output_text": "hi",
        "finish_reason": "stop",
        "response_id": "chatcmpl-1",
        "input_tokens": 3,
        "output_tokens": 1,
    }
    assert rows[1]["output_text"] is None


def test_outcomes_are_joined_to_calls(store):
    row = store.sql("SELECT thumbs_up, rating, n_events FROM calls_with_outcomes WHERE call_id = 'call_1'")[0]
    # the two thumbs up (by call id, then by response id) come from the same poster: counted once
    assert row == {"thumbs_up": 1, "rating": 4.0, "n_events": 3}
    assert store.sql("SELECT n_events FROM calls_with_outcomes WHERE call_id = 'call_2'") == [
        {"n_events": None}
    ]


def test_arrow_and_parameters(store):
    table = store.arrow("SELECT call_id FROM calls WHERE status = ?", [500])
    assert table.column("call_id").to_pylist() == ["call_2"]


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO calls (call_id) VALUES ('x')",
        "DELETE FROM calls",
        "UPDATE calls SET status = 1",
        "DROP VIEW calls",
        "CREATE TABLE t AS SELECT 1",
        "COPY calls TO '/tmp/out.csv'",
        "ATTACH '/tmp/other.db'",
        "SELECT 1; DROP VIEW calls",
        "INSTALL httpfs",
    ],
)
def test_writes_are_refused(store, query):
    with pytest.raises(LogStoreError, match="read-only"):
        store.sql(query)
    assert store.count() == 2


def test_reads_are_allowed():
    for query in ("SELECT 1", "EXPLAIN SELECT 1", "DESCRIBE SELECT 1", "SELECT 1; SELECT 2"):
        check_read_only(query)


def test_a_bad_query_is_a_log_store_error(store):
    with pytest.raises(LogStoreError):
        store.sql("SELECT no_such_column FROM calls")
    with pytest.raises(LogStoreError):
        store.sql("SELEC oops")


def test_refresh_sees_new_rows(log_dir, store):
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        w.append("calls", {"call_id": "call_3", "ts": NOW_US, "status": 200})
    assert store.count() == 2
    store.refresh()
    assert store.count() == 3
