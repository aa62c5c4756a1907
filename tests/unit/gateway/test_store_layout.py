"""Files of the call log: compaction keeps every row exactly once, retention prunes whole days.

"The files" are those of the table's current snapshot: a file compacted or pruned away
leaves the snapshot in the commit and leaves the disk at the next vacuum."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from gateway.store import LogStore, LogWriter, layout

NOW_US = time.time_ns() // 1000


@pytest.fixture(autouse=True)
def _one_instant_per_test() -> None:
    """Every timestamp of a test derives from one instant, taken when the test starts (not at import)."""
    global NOW_US
    NOW_US = time.time_ns() // 1000


DAY_US = 86_400 * 1_000_000


def call(i: int, ts: int | None = None) -> dict:
    ts = NOW_US if ts is None else ts
    return {"call_id": f"call_{i:04d}", "ts": ts + i, "status": 200}


def parquet(log_dir: str, table: str = "calls") -> list[Path]:
    return sorted(Path(p) for p, _day, _size in layout.parquet_files(log_dir, table))


def ids(log_dir: str) -> list[str]:
    with LogStore.open(log_dir) as store:
        return [r["call_id"] for r in store.sql("SELECT call_id FROM calls ORDER BY call_id")]


def test_compaction_merges_small_files_and_keeps_every_row_exactly_once(log_dir):
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        for batch in range(4):
            for i in range(batch * 5, batch * 5 + 5):
                w.append("calls", call(i))
            w.flush()
        w.append(
            "events",
            {"event_id": "e1", "call_id": "call_0001", "ts": NOW_US, "kind": "thumbs", "value": "up"},
        )
        w.flush()
        w.append(
            "events",
            {"event_id": "e2", "call_id": "call_0002", "ts": NOW_US, "kind": "thumbs", "value": "down"},
        )
        w.flush()
        assert len(parquet(log_dir)) == 4
        removed = layout.compact(log_dir, w.wal_dir)
    assert removed == 6
    files = parquet(log_dir)
    assert len(files) == 1
    assert files[0].name.startswith("compact-")
    assert len(parquet(log_dir, "events")) == 1
    assert ids(log_dir) == [f"call_{i:04d}" for i in range(20)]
    with LogStore.open(log_dir) as store:
        assert store.count("events") == 2
    assert layout.compact(log_dir, str(Path(log_dir, "wal"))) == 0  # nothing left to merge


def test_a_committed_segment_left_behind_is_read_once_before_and_after_compaction(log_dir):
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        w.append("calls", call(1))
        w.flush()
        w.append("calls", call(2))
        w.flush()
        _first, second = parquet(log_dir)
        # pretend the second file's segment was never retired (a crash after the commit, before the delete)
        seg = Path(w.wal_dir, second.stem + layout.WAL_SUFFIX)
        seg.write_bytes(b'{"call_id": "call_0002", "ts": %d, "status": 200, "_t": "calls"}\n' % (NOW_US + 2))
        assert ids(log_dir) == ["call_0001", "call_0002"]
        assert layout.compact(log_dir, w.wal_dir, min_files=1) == 2
        assert [p.name.startswith("compact-") for p in parquet(log_dir)] == [True]
        assert ids(log_dir) == ["call_0001", "call_0002"]
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as again:
        assert again.stats.flushed_rows == 0 or ids(log_dir) == ["call_0001", "call_0002"]
    assert not seg.exists()
    assert ids(log_dir) == ["call_0001", "call_0002"]


def test_a_reader_opened_before_compaction_still_answers(log_dir):
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        for i in range(3):
            w.append("calls", call(i))
            w.flush()
        store = LogStore.open(log_dir)
        layout.compact(log_dir, w.wal_dir)
        assert store.count() == 3  # its files are gone: it takes a new snapshot and retries once
        store.close()


def test_prune_deletes_whole_days_before_the_cutoff_only(log_dir):
    # Every timestamp and the cutoff derive from one instant: noon UTC, 40 days ago. The
    # cutoff is the date of the second day, so only the first day goes, at any time of day.
    noon = dt.datetime.combine(
        dt.datetime.now(dt.UTC).date() - dt.timedelta(days=40), dt.time(12), tzinfo=dt.UTC
    )
    old = int(noon.timestamp()) * 1_000_000
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        w.append("calls", call(1, ts=old))
        w.append("calls", call(2, ts=old + DAY_US))
        w.append("calls", call(3))
        w.append(
            "events", {"event_id": "e1", "call_id": "call_0001", "ts": old, "kind": "thumbs", "value": "up"}
        )
    cutoff = (noon + dt.timedelta(days=1)).date()
    deleted = layout.prune(log_dir, cutoff)
    assert deleted >= 2
    assert ids(log_dir) == ["call_0002", "call_0003"]
    with LogStore.open(log_dir) as store:
        assert store.count("events") == 0


def test_the_writer_applies_the_configured_retention(log_dir):
    old = NOW_US - 10 * DAY_US
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        w.append("calls", call(1, ts=old))
        w.append("calls", call(2))
    w = LogWriter(log_dir, flush_interval=0.05, compact_interval=0.05, retention_days=5)
    w.start()
    try:
        deadline = time.monotonic() + 10
        while len(ids(log_dir)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        w.close()
    assert ids(log_dir) == ["call_0002"]


def test_wal_segments_are_grouped_by_owner_in_write_order(tmp_path):
    wal = tmp_path / "wal"
    wal.mkdir()
    for name in ("b.00000002", "a.00000001", "b.00000001"):
        (wal / (name + layout.WAL_SUFFIX)).write_bytes(b"")
    (wal / "c.lock").write_bytes(b"")
    owners = layout.wal_segments_by_owner(str(wal))
    assert {k: [Path(p).name for p in v] for k, v in owners.items()} == {
        "a": ["a.00000001" + layout.WAL_SUFFIX],
        "b": ["b.00000001" + layout.WAL_SUFFIX, "b.00000002" + layout.WAL_SUFFIX],
        "c": [],
    }
