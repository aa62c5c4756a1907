"""Compaction comes forward when many small Parquet files pile up (`writer.COMPACT_AFTER_FILES`), not
only every ``compact_interval``: every read of the log opens each file, and the review pages of a
busy gateway flushing every second slowed 10-20x before the first compaction (docs/fuzz.md)."""

from __future__ import annotations

import time

from gateway.store import LogStore, LogWriter
from gateway.store import writer as writer_module
from gateway.store.table import DeltaLog


def live_files(log_dir: str) -> int:
    return len(DeltaLog.for_log(log_dir, "calls").files())


def fill(log_dir: str, flushes: int, compact_interval: float) -> int:
    w = LogWriter(log_dir, flush_interval=3600, compact_interval=compact_interval)
    w.start()
    try:
        now = time.time_ns() // 1000
        for i in range(flushes):
            w.append("calls", {"call_id": f"call_{i:04d}", "ts": now + i, "route": "r", "status": 200})
            w.flush()
            w.housekeeping()
    finally:
        w.close()
    return live_files(log_dir)


def test_many_small_files_bring_compaction_forward(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "COMPACT_AFTER_FILES", 10)
    log_dir = str(tmp_path / "log")
    assert fill(log_dir, 25, compact_interval=3600) <= 10  # without the trigger: 25 files
    with LogStore.open(log_dir) as store:
        assert store.sql("SELECT count(*) AS n FROM calls")[0]["n"] == 25


def test_compaction_off_stays_off(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "COMPACT_AFTER_FILES", 10)
    log_dir = str(tmp_path / "log")
    assert fill(log_dir, 15, compact_interval=0) == 15
