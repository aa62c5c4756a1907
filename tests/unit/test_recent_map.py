"""`gateway.recent.RecentMap` against a model: every key of the last ``max_entries // 2`` puts is
found with the value put last, nothing stale or never put is ever returned, and it never holds
more than ``max_entries`` entries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.recent import RecentMap


@settings(max_examples=500, deadline=None)
@given(
    max_entries=st.integers(1, 12),
    puts=st.lists(st.tuples(st.integers(0, 15), st.integers()), max_size=80),
)
def test_recent_keys_are_found_with_their_latest_value_and_the_bound_holds(
    max_entries: int, puts: list[tuple[int, int]]
) -> None:
    recent: RecentMap[int, int] = RecentMap(max_entries)
    latest: dict[int, int] = {}
    for n, (key, value) in enumerate(puts):
        recent[key] = value
        latest[key] = value
        assert len(recent) <= max_entries
        window = {k for k, _ in puts[max(0, n + 1 - max(1, max_entries // 2)) : n + 1]}
        for k in range(16):
            got = recent.get(k)
            if k in window:
                assert got == latest[k]
            if got is not None:
                assert got == latest[k]  # never a value that was put over since
            assert (k in recent) == (got is not None)
        held = list(recent.items())
        assert len({k for k, _ in held}) == len(held)  # each key once, with its latest value
        assert all(latest[k] == v for k, v in held)


def test_a_generation_is_dropped_whole_once_the_new_one_is_half_full() -> None:
    recent: RecentMap[str, int] = RecentMap(4)
    for i in range(5):
        recent[f"k{i}"] = i
    # puts 0-1 filled a generation, 2-3 the next (0-1 became the old, then were dropped), 4 the new one
    assert [k for k, _ in recent.items()] == ["k2", "k3", "k4"]
    assert recent.get("k1") is None and recent.get("k2") == 2
