"""Records that cannot become rows are quarantined, never block their segment, and are
counted once; replay never fails a start; a full disk never tears a WAL line nor leaves a
temporary file; every appended record ends as a row or counted in ``dropped``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path

import orjson
from click.testing import CliRunner

from gateway.cli_ops import logs
from gateway.store import LogStore, LogWriter, layout, quarantine
from tests.support.fulldisk import fill, free, small_tmpfs

NOW_US = time.time_ns() // 1000


def call(i: int, **kw) -> dict:
    return {"call_id": f"call_{i:04d}", "ts": NOW_US + i, "route": "r", "status": 200, "served": True, **kw}


def ids(log_dir: str) -> list[str]:
    with LogStore.open(log_dir) as store:
        return [r["call_id"] for r in store.sql("SELECT call_id FROM calls ORDER BY call_id")]


def entries(wal_dir: str) -> list[dict]:
    out = []
    for path in sorted(Path(quarantine.directory(wal_dir)).glob("*.ndjson")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def dead_segment(log_dir: str, owner: str, data: bytes) -> Path:
    wal = Path(log_dir, "wal")
    wal.mkdir(parents=True, exist_ok=True)
    path = wal / f"{owner}.{1:08d}{layout.WAL_SUFFIX}"
    path.write_bytes(data)
    return path


def lines(*records: dict) -> bytes:
    return b"".join(orjson.dumps({"_t": "calls", **r}) + b"\n" for r in records)


POISON = [
    call(1, session_id={"x": 1}),  # main's bug: an object in a string column
    call(3, user=["a"]),
    call(5, tags=[1, 2]),
    call(6, status=2**64 - 1),  # over int64
    call(7, latency_ms="fast"),
    {"call_id": "call_0008", "ts": "yesterday", "_t": "calls"},  # a ts nobody can read
    {"call_id": "call_0009", "ts": NOW_US, "_t": "nope"},  # a table that does not exist
    call(10, response_sse=17),  # derivation fails
]


class TestQuarantine:
    def test_poisoned_records_are_quarantined_and_the_records_around_them_logged(self, log_dir):
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            for i in (0, 2, 4):
                w.append("calls", call(i))
            for poison in POISON:
                rec = dict(poison)
                w.append(rec.pop("_t", "calls"), rec)
            w.append("calls", call(11))
            w.flush()
            assert ids(log_dir) == ["call_0000", "call_0002", "call_0004", "call_0011"]
            status = w.status()
            assert status["quarantined"] == len(POISON) == status["dropped"]["quarantined"]
            assert status["flushed_rows"] == 4 and status["healthy"] is True
            # the writer goes on: the next records are written as usual
            w.append("calls", call(12))
            w.flush()
            assert ids(log_dir)[-1] == "call_0012"
            assert w.status()["quarantined"] == len(POISON)  # counted once, not at every flush
        got = entries(w.wal_dir)
        assert [json.loads(e["raw"])["call_id"] for e in got] == [r["call_id"] for r in POISON]
        reasons = {json.loads(e["raw"])["call_id"]: e["reason"] for e in got}
        assert "ArrowTypeError" in reasons["call_0001"]
        assert reasons["call_0008"].startswith("bad ts")
        assert reasons["call_0009"] == "unknown table 'nope'"
        assert all(e["segment"] and isinstance(e["line"], int) and e["writer_id"] == w.writer_id for e in got)

    def test_unparseable_lines_are_quarantined_raw_even_when_not_utf8(self, log_dir):
        garbage = b"\xff\xfe not json"
        dead_segment(
            log_dir, "1-dead", lines(call(1)) + garbage + b"\n" + b'{"no": "table"}\n' + lines(call(2))
        )
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            assert w.stats.corrupt_records == 2
            assert w.status()["quarantined"] == 2
        assert ids(log_dir) == ["call_0001", "call_0002"]
        got = entries(w.wal_dir)
        assert base64.b64decode(got[0]["raw_b64"]) == garbage and got[0]["line"] == 1
        assert got[1]["raw"] == '{"no": "table"}'

    def test_a_restart_with_a_poisoned_wal_starts_and_quarantines_it(self, log_dir):
        dead_segment(log_dir, "2-main", lines(call(0), POISON[0], call(2)))
        w = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
        w.start()  # on main this raised ArrowTypeError: "Application startup failed"
        try:
            assert w.stats.replayed_segments == 1
            assert ids(log_dir) == ["call_0000", "call_0002"]
            assert w.status()["quarantined"] == 1
            assert not list(Path(log_dir, "wal").glob("2-main.*"))  # nothing left to fail the next start
        finally:
            w.close()

    def test_a_segment_converted_twice_counts_its_quarantined_records_once(self, log_dir, tmp_path):
        seg = dead_segment(log_dir, "3-crashed", lines(call(0), POISON[0], POISON[1]))
        keep = tmp_path / "copy"
        shutil.copy(seg, keep)
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0):
            pass
        shutil.copy(keep, seg)  # as if the process died after the quarantine write, before the unlink
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0):
            pass
        assert ids(log_dir) == ["call_0000"]
        assert len(entries(os.path.join(log_dir, "wal"))) == 4
        assert quarantine.scan(os.path.join(log_dir, "wal"))["records"] == 2

    def test_logs_status_shows_the_quarantine(self, log_dir):
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            w.append("calls", call(0))
            w.append("calls", call(1, session_id={"x": 1}))
        res = CliRunner().invoke(logs, ["status", "--log-dir", log_dir, "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert out["calls"]["rows"] == 1
        assert out["quarantine"]["records"] == 1
        assert out["quarantine"]["by_reason"] == {"ArrowTypeError": 1}
        assert out["quarantine"]["latest"]["table"] == "calls"
        text = CliRunner().invoke(logs, ["status", "--log-dir", log_dir]).output
        assert "quarantine  1 record(s)" in text

    def test_a_record_orjson_cannot_write_is_scrubbed_not_lost(self, log_dir):
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            w.append("calls", call(0, user="bad \ud800 surrogate"))
            w.append("calls", call(1, route_version=2**70))  # written as text: its row is quarantined
        with LogStore.open(log_dir) as store:
            assert store.sql("SELECT call_id, user FROM calls") == [
                {"call_id": "call_0000", "user": "bad ? surrogate"}
            ]
        assert w.status()["dropped"] == {"quarantined": 1}
        assert [json.loads(e["raw"])["call_id"] for e in entries(w.wal_dir)] == ["call_0001"]

    def test_readers_skip_a_poisoned_record_of_the_unflushed_tail(self, log_dir):
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            w.append("calls", call(0))
            w.append("calls", call(1, session_id={"x": 1}))
            assert ids(log_dir) == ["call_0000"]  # `logs sql` and the review page keep working


class TestGroupCommit:
    def test_wal_fsync_ms_syncs_written_segments_and_nothing_when_idle(self, log_dir):
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0, wal_fsync_ms=5) as w:
            w.append("calls", call(0))
            deadline = time.monotonic() + 10
            while w.stats.wal_fsyncs < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert w.stats.wal_fsyncs >= 1
            idle = w.stats.wal_fsyncs
            time.sleep(0.1)
            assert w.stats.wal_fsyncs == idle  # nothing written since: no sync
            assert w.status()["wal_fsync_ms"] == 5 and w.status()["wal_fsync_avg_ms"] is not None
        assert ids(log_dir) == ["call_0000"]

    def test_off_by_default(self, log_dir):
        with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
            w.append("calls", call(0))
            time.sleep(0.05)
            assert w.stats.wal_fsyncs == 0 and w._sync_thread is None


class TestFullDisk:
    def test_a_full_disk_never_tears_a_line_leaves_no_temporary_file_and_loses_nothing_uncounted(
        self, tmp_path
    ):
        with small_tmpfs(tmp_path / "disk", "2m") as disk:
            log_dir = str(disk / "log")
            w = LogWriter(log_dir, flush_interval=3600, compact_interval=0, max_pending=40)
            w.start()
            try:
                fill(disk, leave=48 * 1024)
                n = 400
                for i in range(n):
                    w.append("calls", call(i, output_text="x" * 1500 + str(i)))
                    if i % 50 == 49:
                        w.flush()  # Parquet and rotations fail on the full disk, and are retried
                status = w.status()
                assert status["wal_errors"] >= 1 and status["dropped"].get("queue_full", 0) > 0
                assert status["short_writes"] >= 1  # the disk filled mid-line at least once
                for seg in Path(w.wal_dir).glob("*" + layout.WAL_SUFFIX):  # only whole lines in the WAL
                    data = seg.read_bytes()
                    assert data == b"" or data.endswith(b"\n")
                    assert all(orjson.loads(line) for line in data.splitlines())
                assert not list(Path(log_dir).rglob("*.tmp-*"))
                free(disk)
                w.flush()
                w.flush()
            finally:
                w.close()
            status = w.status()
            logged = ids(log_dir)
            assert len(logged) == len(set(logged))
            assert len(logged) + sum(status["dropped"].values()) == n
            assert status["corrupt_records"] == 0 and status["quarantined"] == 0
            assert not list(Path(log_dir).rglob("*.tmp-*"))


FSIZE_SCRIPT = r"""
import json, os, resource, secrets, signal, sys, time
from pathlib import Path
from gateway.store import LogWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG instead
log_dir, n = sys.argv[1], int(sys.argv[2])
w = LogWriter(log_dir, flush_interval=3600, compact_interval=0, max_pending=25)
w.start()
resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, resource.RLIM_INFINITY))  # no file over 48 KiB
now = time.time_ns() // 1000
for i in range(n):
    w.append("calls", {"call_id": f"call_{i:04d}", "ts": now + i, "status": 200, "output_text": secrets.token_hex(700)})
    if i % 40 == 39:
        w.flush()  # rotations succeed; Parquet files over the limit fail and are retried
torn = [p.name for p in Path(w.wal_dir).glob("*.wal.ndjson") if p.read_bytes() and not p.read_bytes().endswith(b"\n")]
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # now no Parquet file fits
w.flush()
tmp = [p.name for p in Path(log_dir).rglob("*.tmp-*")]
during = dict(w.status(), torn=torn, tmp=tmp)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
w.flush()
w.close()
print(json.dumps({"during": during, "after": w.status()}, default=str))
"""


def test_writes_refused_mid_line_by_the_kernel_are_retried_whole_and_every_record_is_counted(log_dir):
    """No root needed: RLIMIT_FSIZE makes the kernel refuse writes past a size (short write, then EFBIG)."""
    import subprocess
    import sys

    n = 300
    proc = subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, log_dir, str(n)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    during, after = out["during"], out["after"]
    assert during["short_writes"] >= 1 and during["wal_errors"] >= 1  # lines were cut mid-way...
    assert during["torn"] == []  # ...and cut back: no segment ends in a partial line
    assert (
        during["flush_errors"] >= 1 and during["tmp"] == []
    )  # Parquet writes failed, no temporary file left
    logged = ids(log_dir)
    assert len(logged) == len(set(logged))
    assert len(logged) + sum(after["dropped"].values()) == n
    assert after["corrupt_records"] == 0 and after["quarantined"] == 0
    assert not list(Path(log_dir).rglob("*.tmp-*"))
