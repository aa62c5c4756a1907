"""LogWriter on real files: the WAL, Parquet flushes, exactly-once replay of dead writers'
segments, corrupt records, and what happens when the disk will not take the log."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.store import LogStore, LogStoreError, LogWriter, layout
from gateway.store.schema import SCHEMA_VERSION

NOW_US = time.time_ns() // 1000


@pytest.fixture(autouse=True)
def _one_instant_per_test() -> None:
    """Every timestamp of a test derives from one instant, taken when the test starts (not at import)."""
    global NOW_US
    NOW_US = time.time_ns() // 1000


def call(i: int, **kw) -> dict:
    return {"call_id": f"call_{i:04d}", "ts": NOW_US + i, "route": "r", "status": 200, "served": True, **kw}


def ids(log_dir: str) -> list[str]:
    with LogStore.open(log_dir) as store:
        return [r["call_id"] for r in store.sql("SELECT call_id FROM calls ORDER BY call_id")]


def segments(log_dir: str) -> list[Path]:
    return sorted(Path(log_dir, "wal").glob("*" + layout.WAL_SUFFIX))


def dead_segment(log_dir: str, owner: str, seq: int, data: bytes) -> Path:
    """A WAL segment left behind by a writer that is gone (nobody holds its lock)."""
    wal = Path(log_dir, "wal")
    wal.mkdir(parents=True, exist_ok=True)
    path = wal / f"{owner}.{seq:08d}{layout.WAL_SUFFIX}"
    path.write_bytes(data)
    return path


def lines(*records: dict) -> bytes:
    import orjson

    return b"".join(orjson.dumps({**r, "_t": "calls"}) + b"\n" for r in records)


@pytest.fixture
def writer(log_dir):
    w = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
    w.start()
    yield w
    w.close()


class TestWritePath:
    def test_appended_records_become_parquet_rows_and_the_segment_is_retired(self, writer, log_dir):
        for i in range(5):
            writer.append("calls", call(i))
        assert writer.flush() == 5
        assert ids(log_dir) == [f"call_{i:04d}" for i in range(5)]
        day = time.strftime("%Y-%m-%d", time.gmtime(NOW_US / 1e6))
        assert len(list(Path(log_dir, "calls", f"date={day}").glob("*.parquet"))) == 1
        assert all(p.stat().st_size == 0 for p in segments(log_dir))  # only the fresh, empty segment
        status = writer.status()
        assert (status["appended"], status["flushed_rows"], status["healthy"]) == (5, 5, True)
        marker = json.loads(Path(log_dir, "store.json").read_text())
        assert marker == {"schema_version": SCHEMA_VERSION, "layout_version": 2, "table_format": "delta"}

    def test_appended_records_are_readable_before_any_flush(self, writer, log_dir):
        writer.append("calls", call(1, output_text="tail"))
        assert not list(Path(log_dir).rglob("*.parquet"))
        with LogStore.open(log_dir) as store:
            assert store.sql("SELECT call_id, output_text FROM calls") == [
                {"call_id": "call_0001", "output_text": "tail"}
            ]

    def test_close_flushes_everything_and_releases_the_lock(self, log_dir):
        w = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
        w.start()
        w.append("calls", call(1))
        w.append(
            "events",
            {"event_id": "ev_1", "call_id": "call_0001", "ts": NOW_US, "kind": "thumbs", "value": "up"},
        )
        w.close()
        assert segments(log_dir) == []
        assert not list(Path(log_dir, "wal").glob("*.lock"))
        with LogStore.open(log_dir) as store:
            assert store.count("calls") == 1
            assert store.sql("SELECT call_id, kind, value FROM events") == [
                {"call_id": "call_0001", "kind": "thumbs", "value": "up"}
            ]

    def test_the_background_thread_flushes_on_its_own(self, log_dir):
        with LogWriter(log_dir, flush_interval=0.05, compact_interval=0) as w:
            w.append("calls", call(1))
            deadline = time.monotonic() + 10
            while w.stats.flushed_rows < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert w.stats.flushed_rows == 1
            assert list(Path(log_dir, "calls").rglob("*.parquet"))


class TestReplay:
    def test_a_dead_writers_segments_are_replayed_exactly_once(self, log_dir):
        dead_segment(log_dir, "1-deadbeef", 1, lines(call(1), call(2)))
        dead_segment(log_dir, "1-deadbeef", 2, lines(call(3)))
        w = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
        w.start()
        assert w.stats.replayed_segments == 2
        w.close()
        assert ids(log_dir) == ["call_0001", "call_0002", "call_0003"]
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as again:
            assert again.stats.replayed_segments == 0
        assert ids(log_dir) == ["call_0001", "call_0002", "call_0003"]

    def test_a_crash_between_parquet_rename_and_segment_delete_does_not_duplicate_rows(self, log_dir):
        from gateway.store.rows import derive, to_table

        records = [call(1), call(2)]
        seg = dead_segment(log_dir, "2-crashed", 1, lines(*records))
        layout.ensure_store(log_dir)
        day = time.strftime("%Y-%m-%d", time.gmtime(NOW_US / 1e6))
        stem = seg.name[: -len(layout.WAL_SUFFIX)]
        # the Parquet file was written and renamed, but the process died before deleting the segment
        layout.write_parquet(
            log_dir,
            "calls",
            day,
            stem,
            to_table("calls", [derive("calls", {**r, "_t": "calls"}) for r in records], derived=True),
        )
        assert ids(log_dir) == ["call_0001", "call_0002"]  # readers see the segment, not both
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0):
            pass
        assert ids(log_dir) == ["call_0001", "call_0002"]
        assert not seg.exists()

    def test_a_corrupt_trailing_record_is_skipped_with_a_warning_and_counted(self, log_dir, caplog):
        torn = lines(call(1), call(2)) + b'{"call_id": "call_0003", "ts": 1, "_t": "ca'
        dead_segment(log_dir, "3-torn", 1, torn)
        with caplog.at_level(logging.WARNING, logger="shadowtune.store"):
            w = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
            w.start()
        assert w.stats.corrupt_records == 1
        assert w.status()["corrupt_records"] == 1
        assert any("corrupt" in rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING)
        w.close()
        assert ids(log_dir) == ["call_0001", "call_0002"]

    def test_corrupt_records_in_the_middle_are_skipped_and_the_rest_kept(self, log_dir):
        data = lines(call(1)) + b"\x00\x00garbage\n" + b"[1, 2]\n" + lines(call(2))
        dead_segment(log_dir, "4-garbled", 1, data)
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            assert w.stats.corrupt_records == 2
        assert ids(log_dir) == ["call_0001", "call_0002"]

    def test_a_live_writers_segments_are_not_adopted_by_another_writer(self, log_dir):
        a = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
        a.start()
        a.append("calls", call(1))
        a.flush()
        a.append("calls", call(2))  # still in a's open segment
        b = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
        b.start()
        assert b.stats.replayed_segments == 0
        b.append("calls", call(3))
        b.close()
        a.close()
        assert ids(log_dir) == ["call_0001", "call_0002", "call_0003"]

    def test_a_killed_writer_process_loses_nothing_it_appended(self, log_dir):
        script = (
            "import os, signal, sys, time\n"
            "from gateway.store import LogWriter\n"
            "w = LogWriter(sys.argv[1], flush_interval=3600, compact_interval=0)\n"
            "w.start()\n"
            "now = time.time_ns() // 1000\n"
            "for i in range(50):\n"
            "    w.append('calls', {'call_id': f'call_{i:04d}', 'ts': now + i, 'status': 200})\n"
            "    if i == 20: w.flush()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, log_dir], cwd=os.getcwd(), timeout=60, check=False
        )
        assert proc.returncode == -9
        assert segments(log_dir)  # the unflushed tail is still in the WAL
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            assert w.stats.replayed_segments >= 1
        assert ids(log_dir) == [f"call_{i:04d}" for i in range(50)]


class TestSchemaVersion:
    def test_a_store_of_a_newer_schema_version_refuses_to_open(self, log_dir):
        os.makedirs(log_dir)
        Path(log_dir, "store.json").write_text(f'{{"schema_version": {SCHEMA_VERSION + 1}}}')
        with pytest.raises(LogStoreError, match="newer"):
            LogStore.open(log_dir)
        with pytest.raises(LogStoreError, match="newer"):
            LogWriter(log_dir, compact_interval=0).start()
        assert not list(Path(log_dir).rglob("*.parquet"))

    def test_the_current_and_older_versions_open(self, log_dir):
        os.makedirs(log_dir)
        Path(log_dir, "store.json").write_text('{"schema_version": 1}')
        with LogStore.open(log_dir) as store:
            assert store.count() == 0

    def test_a_damaged_store_marker_is_a_clear_error(self, log_dir):
        os.makedirs(log_dir)
        Path(log_dir, "store.json").write_text("not json")
        with pytest.raises(LogStoreError, match="store marker"):
            LogStore.open(log_dir)

    def test_a_missing_store_is_a_clear_error(self, tmp_path):
        with pytest.raises(LogStoreError, match="no call log"):
            LogStore.open(str(tmp_path / "nowhere"))


class TestDiskTrouble:
    def test_an_unwritable_directory_is_reported_held_in_memory_and_flushed_when_it_comes_back(
        self, tmp_path, caplog
    ):
        blocker = tmp_path / "blocked"
        blocker.write_text("a file where the log's parent directory should be")
        log_dir = str(blocker / "log")
        w = LogWriter(log_dir, flush_interval=0.05, compact_interval=0)
        with caplog.at_level(logging.ERROR, logger="shadowtune.store"):
            w.start()  # no exception: the gateway keeps serving
        try:
            assert w.healthy is False
            assert "cannot open the call log" in w.status()["last_error"]
            assert any("cannot open the call log" in r.getMessage() for r in caplog.records)
            for i in range(3):
                w.append("calls", call(i))
            assert w.status()["pending_in_memory"] == 3
            assert w.status()["dropped"] == {}

            blocker.unlink()  # the disk comes back
            deadline = time.monotonic() + 10
            while w.stats.flushed_rows < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert w.stats.flushed_rows == 3
            assert w.status()["pending_in_memory"] == 0
            assert w.healthy is True
        finally:
            w.close()
        assert ids(log_dir) == ["call_0000", "call_0001", "call_0002"]

    @pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
    def test_a_full_disk_holds_records_in_memory_then_drops_them_counted_and_logged(self, log_dir, caplog):
        wal = Path(log_dir, "wal")
        wal.mkdir(parents=True)
        (wal / f"full.{1:08d}{layout.WAL_SUFFIX}").symlink_to("/dev/full")  # every write: ENOSPC
        w = LogWriter(log_dir, flush_interval=3600, compact_interval=0, max_pending=3, writer_id="full")
        w.start()
        try:
            with caplog.at_level(logging.ERROR, logger="shadowtune.store"):
                for i in range(5):
                    w.append("calls", call(i))  # never raises on the request path
            status = w.status()
            assert status["healthy"] is False
            assert status["wal_errors"] == 1
            assert "No space left" in status["last_error"]
            assert status["pending_in_memory"] == 3
            assert status["dropped"] == {"queue_full": 2}
            assert any("dropped" in r.getMessage() for r in caplog.records)
            w.flush()  # still full: nothing lost beyond what was counted, no crash
            assert w.status()["pending_in_memory"] == 3
        finally:
            w.close()

    def test_a_backlog_over_the_limit_reports_degraded_until_flushed(self, log_dir):
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0, max_backlog_bytes=200) as w:
            w.append("calls", call(1, output_text="x" * 500))
            assert w.healthy is False
            assert w.status()["backlog_bytes"] > 200
            w.flush()
            assert w.healthy is True


def test_a_log_directory_deleted_while_running_is_counted_and_the_writer_carries_on(tmp_path):
    import shutil

    from gateway.store import LogStore, LogWriter

    log_dir = str(tmp_path / "log")
    w = LogWriter(log_dir, flush_interval=3600)
    w.start()
    try:
        for i in range(3):
            w.append("calls", {"call_id": f"call_a{i}", "ts": 1_700_000_000_000_000, "status": 200})
        shutil.rmtree(log_dir)
        w.flush()  # notices the deleted segment
        assert w.stats.dropped.get("wal_deleted") == 3
        w.append("calls", {"call_id": "call_b", "ts": 1_700_000_000_000_000, "status": 200})
        w.flush()  # the directory is recreated and new records land in Parquet again
        w.flush()
    finally:
        w.close()
    assert [r["call_id"] for r in LogStore.open(log_dir).sql("SELECT call_id FROM calls")] == ["call_b"]
