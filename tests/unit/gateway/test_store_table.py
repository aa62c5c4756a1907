"""The log's Delta tables: a segment is committed exactly once across crashes, compactions and
retention are conflict-checked commits (two racing compactors never double a row), a reused
writer id never loses a segment, and a layout-1 store is migrated by registering its files."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from gateway.store import LogStore, LogStoreError, LogWriter, layout
from gateway.store import table as tables
from gateway.store.rows import derive, to_table
from gateway.store.table import DeltaLog

NOW_US = time.time_ns() // 1000


@pytest.fixture(autouse=True)
def _one_instant_per_test() -> None:
    """Every timestamp of a test derives from one instant, taken when the test starts (not at import)."""
    global NOW_US
    NOW_US = time.time_ns() // 1000


def call(i: int) -> dict:
    return {"call_id": f"call_{i:04d}", "ts": NOW_US + i, "status": 200}


def ids(log_dir: str, wal_dir: str | None = None) -> list[str]:
    with LogStore.open(log_dir, wal_dir=wal_dir) as store:
        return [r["call_id"] for r in store.sql("SELECT call_id FROM calls ORDER BY call_id")]


def calls_table(records: list[dict]) -> object:
    return to_table("calls", [derive("calls", {**r, "_t": "calls"}) for r in records], derived=True)


def day() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(NOW_US / 1e6))


class TestExactlyOnce:
    def test_a_crash_after_the_commit_before_the_segment_delete_neither_reads_nor_commits_twice(
        self, log_dir
    ):
        layout.ensure_store(log_dir)
        wal = Path(log_dir, "wal")
        wal.mkdir(parents=True, exist_ok=True)
        seg = wal / f"9-crashed.00000001{layout.WAL_SUFFIX}"
        seg.write_bytes(b"".join(json.dumps({**call(i), "_t": "calls"}).encode() + b"\n" for i in (1, 2)))
        added = tables.commit_segment(
            log_dir, "9-crashed.00000001", {"calls": [(day(), calls_table([call(1), call(2)]))]}
        )
        assert added == 1
        assert ids(log_dir) == [
            "call_0001",
            "call_0002",
        ]  # the segment is committed: read from the table only
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            assert w.stats.replayed_segments == 1
        assert not seg.exists()
        assert ids(log_dir) == ["call_0001", "call_0002"]
        assert len(DeltaLog.for_log(log_dir, "calls").files()) == 1

    def test_a_reused_writer_id_continues_after_its_committed_segments(self, log_dir):
        for i in range(2):
            with LogWriter(log_dir, flush_interval=3600, compact_interval=0, writer_id="fixed") as w:
                w.append("calls", call(i))
        assert ids(log_dir) == ["call_0000", "call_0001"]
        assert DeltaLog.for_log(log_dir, "calls").committed_seq("fixed") == 2


class TestConflictCheckedCommits:
    def test_two_racing_compactors_never_double_a_row(self, log_dir):
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            for i in range(30):
                w.append("calls", call(i))
                w.flush()
        logs = [DeltaLog.for_log(log_dir, "calls") for _ in range(4)]
        barrier = threading.Barrier(len(logs))
        errors: list[BaseException] = []

        def run(log: DeltaLog) -> None:
            barrier.wait()
            try:
                log.compact(min_files=2)
            except BaseException as exc:  # collected: the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(log,)) for log in logs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert ids(log_dir) == [f"call_{i:04d}" for i in range(30)]
        assert len(DeltaLog.for_log(log_dir, "calls").files()) == 1

    def test_retention_is_one_commit_and_the_previous_version_still_has_the_rows(self, log_dir):
        old = NOW_US - 40 * 86_400 * 1_000_000
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            w.append("calls", {**call(1), "ts": old})
            w.append("calls", call(2))
        calls = DeltaLog.for_log(log_dir, "calls")
        before = calls.load().version()
        assert layout.prune(log_dir, _date_days_ago(30)) == 1
        dt_ = calls.load()
        assert dt_.version() == before + 1
        assert dt_.history(1)[0]["shadowtune.operation"] == "retention"
        assert ids(log_dir) == ["call_0002"]
        dt_.load_as_version(before)
        files = dt_.file_uris()
        assert len(files) == 2  # one file per day; the pruned one stays on disk until a vacuum
        assert all(Path(f).exists() for f in files)
        assert duckdb.sql(f"SELECT count(*) FROM read_parquet({files})").fetchall() == [(2,)]


def test_a_column_added_to_the_schema_is_added_to_the_table(log_dir, monkeypatch):
    import pyarrow as pa

    from gateway.store.schema import TABLES

    layout.ensure_store(log_dir)
    monkeypatch.setitem(TABLES, "events", TABLES["events"].append(pa.field("weight", pa.float64())))
    log = DeltaLog.for_log(log_dir, "events")
    log.create()
    assert "weight" in pa.schema(log.load().schema().to_arrow()).names


@pytest.mark.real_clock  # delta-rs (Rust) judges file ages by the real clock
def test_vacuum_deletes_old_orphans_and_keeps_what_recent_snapshots_need(log_dir):
    import os

    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        for i in range(3):
            w.append("calls", call(i))
            w.flush()
    log = DeltaLog.for_log(log_dir, "calls")
    before = [Path(f.uri) for f in log.files()]
    folder = before[0].parent
    orphan, tmp = folder / "compact-killed.parquet", folder / "x.parquet.tmp-1"
    for p in (orphan, tmp):
        p.write_bytes(b"never committed")
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    fresh = folder / "9-writer.00000001.parquet"  # written a moment ago, its commit still to come
    fresh.write_bytes(b"about to be committed")
    assert log.compact() == 3
    log.vacuum()
    assert not orphan.exists() and not tmp.exists()
    assert fresh.exists()
    assert all(p.exists() for p in before)  # compacted away a moment ago: older snapshots still read them
    assert ids(log_dir) == ["call_0000", "call_0001", "call_0002"]


def _date_days_ago(days: int):
    import datetime as dt

    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).date()


class TestMigration:
    def make_layout_1(self, log_dir: str) -> None:
        """A store as the loose-file layout left it: files by date, a marker without layout_version."""
        for stem, recs in (("1-old.00000001", [call(1), call(2)]), ("compact-1-ab", [call(3)])):
            layout.write_parquet(log_dir, "calls", day(), stem, calls_table(recs))
        Path(log_dir, "calls", f"date={day()}", "x.parquet.tmp-1234").write_bytes(b"torn")
        Path(log_dir, "store.json").write_text('{"schema_version": 1}')

    def test_readers_of_a_layout_1_store_get_a_clear_error(self, log_dir):
        self.make_layout_1(log_dir)
        with pytest.raises(LogStoreError, match=r"old layout.*shadowtune logs migrate"):
            LogStore.open(log_dir)

    def test_a_starting_writer_registers_the_files_once_and_bumps_the_layout(self, log_dir):
        self.make_layout_1(log_dir)
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            w.append("calls", call(4))
        assert ids(log_dir) == ["call_0001", "call_0002", "call_0003", "call_0004"]
        marker = json.loads(Path(log_dir, "store.json").read_text())
        assert marker["layout_version"] == layout.LAYOUT_VERSION
        assert not list(Path(log_dir).rglob("*.tmp-*"))
        assert tables.migrate_layout_1(log_dir, str(Path(log_dir, "wal"))) == {"calls": 0, "events": 0}
        assert len(ids(log_dir)) == 4

    def test_logs_migrate_registers_the_files(self, log_dir):
        from gateway.cli_ops import logs

        self.make_layout_1(log_dir)
        result = CliRunner().invoke(logs, ["migrate", "--log-dir", log_dir, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"registered_files": {"calls": 2, "events": 0}}
        assert ids(log_dir) == ["call_0001", "call_0002", "call_0003"]


def test_a_merge_writes_row_groups_within_the_memory_bound_and_keeps_every_row_in_order(
    tmp_path, monkeypatch
):
    """Compaction's memory is bounded by the Arrow bytes of one row group, not by the files' size."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from gateway.store.schema import TABLES

    monkeypatch.setattr(tables, "COMPACT_GROUP_BYTES", 256 * 1024)
    monkeypatch.setattr(tables, "COMPACT_READ_ROWS", 16)
    body = "word " * 400  # 2 KB a row, as the log's bodies
    sources = []
    for n in range(6):
        recs = [{**call(n * 100 + i), "request": body, "response": body} for i in range(100)]
        path = tmp_path / f"src{n}.parquet"
        pq.write_table(calls_table(recs), path, compression="zstd")
        sources.append(str(path))
    target = str(tmp_path / "merged" / "out.parquet")
    rows = tables._merge(pafs.LocalFileSystem(), sources, target, TABLES["calls"])
    assert rows == 600
    f = pq.ParquetFile(target)
    batch_bytes = f.read_row_group(0).slice(0, 16).nbytes
    groups = [f.read_row_group(i) for i in range(f.num_row_groups)]
    assert len(groups) >= 6  # 2.4 MB of bodies: about ten groups of 256 KiB, not one
    assert all(g.nbytes <= tables.COMPACT_GROUP_BYTES + batch_bytes for g in groups)
    assert [r for g in groups for r in g.column("call_id").to_pylist()] == [
        f"call_{n * 100 + i:04d}" for n in range(6) for i in range(100)
    ]
