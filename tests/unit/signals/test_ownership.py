"""FeedbackIndex: call owners and stored feedback from the live WAL tail, then the Parquet log."""

from __future__ import annotations

import json
import time

from gateway.signals.feedback import poster_id
from gateway.signals.ownership import FeedbackIndex
from gateway.store import LogWriter


def call(call_id: str, key: str | None, response_id: str) -> dict:
    return {
        "call_id": call_id,
        "ts": int(time.time() * 1e6),
        "route": "bot",
        "variant": "baseline",
        "served": True,
        "client_key": key,
        "response": json.dumps({"id": response_id, "choices": [{"message": {"content": "hi"}}]}),
        "status": 200,
    }


def test_recent_calls_and_events_come_from_the_wal_tail_older_ones_from_parquet(log_dir):
    index = FeedbackIndex(log_dir, wait_s=0.0)
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        w.append("calls", call("call_a", "alice", "chatcmpl-a"))
        found = index.owner("chatcmpl-a")
        assert found is not None and (found.call_id, found.client_key, found.recent) == (
            "call_a",
            "alice",
            True,
        )
        event = {"event_id": "evt_1", "call_id": "chatcmpl-a", "ts": int(time.time() * 1e6), "kind": "thumbs",
                 "value": "up", "value_num": 1.0, "key_id": "k1", "source": "api"}  # fmt: skip
        w.append("events", event)
        got = index.existing("call_a", "call_a", "thumbs", poster_id(event))
        assert got is not None and got["event_id"] == "evt_1"  # posted by response id, found by call id
        assert index.existing("call_a", "call_a", "thumbs", "key:other") is None
        assert index.owner("call_missing", wait=False) is None
        w.flush()
    # a fresh process (nothing in its tail) finds the flushed call and event in the Parquet log
    later = FeedbackIndex(log_dir, wait_s=0.0)
    found = later.owner("call_a")
    assert found is not None and (found.client_key, found.recent) == ("alice", False)
    assert later.existing("call_a", "chatcmpl-a", "thumbs", "key:k1")["event_id"] == "evt_1"
    later.close()
    index.close()


def test_an_index_fed_by_the_agents_tail_finds_what_was_appended_a_moment_ago(log_dir):
    from gateway.agent.tail import WalTailer

    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        tailer = WalTailer(w.wal_dir)
        index = FeedbackIndex(log_dir, w.wal_dir, wait_s=0.0, poll=tailer.poll)
        tailer.listeners.append(index.on_records)
        w.append("calls", call("call_b", "bob", "chatcmpl-b"))  # not polled yet: the lookup reads it
        found = index.owner("chatcmpl-b", wait=False)
        assert found is not None and (found.call_id, found.client_key, found.recent) == (
            "call_b",
            "bob",
            True,
        )
        event = {"event_id": "evt_2", "call_id": "call_b", "ts": int(time.time() * 1e6), "kind": "thumbs",
                 "value": "down", "key_id": "k2", "source": "api"}  # fmt: skip
        w.append("events", event)
        assert index.existing("call_b", "call_b", "thumbs", poster_id(event))["event_id"] == "evt_2"
        assert index._tail.offsets == {}  # the index never read the WAL itself: one parse, the tail's
        index.close()


def test_a_worker_asking_an_unreachable_agent_gets_a_503_when_keyed_and_goes_on_in_open_mode(tmp_path):
    import asyncio

    import pytest

    from gateway.agent import feedback as agent_feedback
    from gateway.agent.proxy import AgentLink
    from gateway.errors import Overloaded

    async def run() -> None:
        link = AgentLink(str(tmp_path / "no-agent.sock"), ctx=None)
        try:
            with pytest.raises(Overloaded) as err:
                await agent_feedback.ask(link, "call_x", "thumbs", "key:k", wait=True)
            assert err.value.status == 503 and err.value.code == "log_agent_unavailable"
            assert await agent_feedback.ask(link, "call_x", "thumbs", "addr:1", wait=False) == (None, None)
        finally:
            await link.close()

    asyncio.run(run())


def test_a_batch_of_calls_from_the_tail_indexes_them_as_one_by_one_adds_would(tmp_path):
    """`_WalTail.add_calls` (the agent's tail, a batch at a time) leaves the same owners, in the same
    order, as `add` row by row, whatever the ids repeat, and no more than ``max_entries`` of them."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gateway.signals.ownership import _WalTail

    ids = st.sampled_from(["c1", "c2", "c3", "r1", "r2", "", None])
    rows = st.lists(
        st.fixed_dictionaries(
            {
                "_t": st.just("calls"),
                "call_id": ids,
                "client_key": st.sampled_from([None, "alice", "bob"]),
                "response_id": ids,
                "served": st.sampled_from([True, False, None]),
            }
        ),
        max_size=20,
    )

    @settings(max_examples=300, deadline=None)
    @given(batches=st.lists(rows, max_size=4), max_entries=st.integers(1, 6))
    def check(batches: list[list[dict[str, object]]], max_entries: int) -> None:
        one, many = _WalTail(str(tmp_path), max_entries), _WalTail(str(tmp_path), max_entries)
        for batch in batches:
            for row in batch:
                one.add(row, derived=True)
            many.add_calls(batch)
        assert list(many.owners.items()) == list(one.owners.items())
        assert len(many.owners) <= max_entries

    check()
