"""The WAL segment protocol between request workers (`WalAppender`) and the host's log agent
(`LogAgent`): only closed segments are converted while their writer lives, a dead writer's
segments are adopted, every record reaches Parquet and the telemetry tail exactly once, and a
request worker's imports stay free of pyarrow, DuckDB and the OpenTelemetry SDK."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from gateway import tracectx
from gateway.agent.core import LogAgent
from gateway.config import Settings
from gateway.store import LogStore
from gateway.store.wal import WalAppender


def settings(log_dir: str) -> Settings:
    return Settings.model_validate(
        {
            "store": {"log_dir": log_dir, "flush_interval": 60, "compact_interval": 0},
            "server": {"auth": "open"},
        }
    )


def record(i: int, **extra: Any) -> dict[str, Any]:
    return {"call_id": f"call-{i}", "ts": 1_700_000_000_000_000 + i, "endpoint": "chat.completions", **extra}


def logged(log_dir: str) -> list[str]:
    with LogStore.open(log_dir) as store:
        return sorted(r["call_id"] for r in store.sql("SELECT call_id FROM calls"))


def tailed(agent: LogAgent) -> list[str]:
    seen: list[str] = []
    agent.tailer.listeners.append(lambda table, rows: seen.extend(r["call_id"] for r in rows))
    return seen


def test_only_closed_segments_are_converted_while_their_writer_lives(log_dir):
    agent = LogAgent(settings(log_dir))
    seen = tailed(agent)
    agent.start()
    wal = WalAppender(agent.wal_dir, rotate_interval=60)
    wal.start()
    try:
        for i in range(3):
            wal.append("calls", record(i))
        wal.rotate()
        for i in range(3, 5):
            wal.append("calls", record(i))
        agent.tailer.poll()
        assert agent.convert() == 3  # the closed segment only
        segments = sorted(Path(agent.wal_dir).glob("*.wal.ndjson"))
        assert [p.name.split(".")[1] for p in segments] == ["00000002"]  # the open one stays
        assert logged(log_dir) == [f"call-{i}" for i in range(5)]  # readers see Parquet + the open tail
        assert sorted(seen) == [f"call-{i}" for i in range(5)]  # telemetry saw all, before any flush
    finally:
        wal.close()
    assert agent.convert() == 2  # a writer that closed: all of its segments
    assert not list(Path(agent.wal_dir).glob("*.wal.ndjson"))
    assert [p.name for p in Path(agent.wal_dir).glob("*.lock")] == ["agent.lock"]  # no writer's lock left
    agent.stop()
    assert sorted(seen) == [f"call-{i}" for i in range(5)]  # each record once
    assert logged(log_dir) == [f"call-{i}" for i in range(5)]


def test_a_round_that_converts_a_backlog_gives_freed_memory_back_as_it_goes(log_dir, monkeypatch):
    """A round over many closed segments trims the heap every `TRIM_ROWS` rows and once at its end,
    not only after the last segment (the peak RSS of a backlog's catch-up); an idle round never."""
    from gateway.agent import core

    trims: list[int] = []
    agent = LogAgent(settings(log_dir))
    monkeypatch.setattr(core, "TRIM_ROWS", 7)
    monkeypatch.setattr(core, "release_freed_memory", lambda: trims.append(agent.stats.converted_segments))
    agent.start()
    wal = WalAppender(agent.wal_dir, rotate_interval=60)
    wal.start()
    try:
        for seg in range(4):  # four closed segments of 3 calls each, then the open one
            for i in range(3):
                wal.append("calls", record(seg * 3 + i))
            wal.rotate()
        agent.tailer.poll()
        assert agent.convert() == 12
        assert trims == [2, 4]  # past 7 rows (at 9: after the third segment), then at the end (12)
        trims.clear()
        assert agent.convert() == 0
        assert trims == []
    finally:
        wal.close()
        agent.stop()
    assert len(logged(log_dir)) == 12


def test_a_killed_writers_segments_are_adopted_exactly_once(log_dir):
    agent = LogAgent(settings(log_dir))
    agent.start()
    script = textwrap.dedent(
        f"""
        import sys, time
        from gateway.store.wal import WalAppender
        w = WalAppender({agent.wal_dir!r}, rotate_interval=60)
        w.start()
        for i in range(40):
            w.append("calls", {{"call_id": f"call-{{i}}", "ts": 1_700_000_000_000_000 + i}})
            if i % 10 == 9 and i < 39:
                w.rotate()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=os.environ.copy())
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        assert agent.convert() == 30  # alive: its open segment waits
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert agent.convert() == 10  # dead: the rest is adopted
        assert agent.convert() == 0
    finally:
        if child.poll() is None:
            child.kill()
        agent.stop()
    assert logged(log_dir) == sorted(f"call-{i}" for i in range(40))
    assert agent.stats.adopted_writers == 1


def test_a_segment_converted_twice_lands_once(log_dir, tmp_path):
    """The agent killed between writing Parquet and deleting the segment converts it again."""
    agent = LogAgent(settings(log_dir))
    agent.start()
    with WalAppender(agent.wal_dir, rotate_interval=60) as wal:
        for i in range(7):
            wal.append("calls", record(i))
    [seg] = Path(agent.wal_dir).glob("*.wal.ndjson")
    kept = tmp_path / "kept"
    shutil.copy(seg, kept)
    assert agent.convert() == 7
    shutil.copy(kept, seg)  # as if the delete never happened
    assert agent.convert() == 7
    agent.stop()
    assert logged(log_dir) == sorted(f"call-{i}" for i in range(7))


def test_two_agents_on_one_wal_never_convert_at_the_same_time(log_dir):
    import fcntl

    agent = LogAgent(settings(log_dir))
    agent.start()
    with WalAppender(agent.wal_dir, rotate_interval=60) as wal:
        wal.append("calls", record(1))
    fd = os.open(os.path.join(agent.wal_dir, "agent.lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another agent's round is running
    try:
        assert agent.convert() == 0
        assert len(list(Path(agent.wal_dir).glob("*.wal.ndjson"))) == 1
    finally:
        os.close(fd)
    assert agent.convert() == 1
    agent.stop()


def test_a_flush_does_not_fail_on_a_segment_deleted_while_it_lists_the_wal(log_dir):
    """`LogAgent.flush` (``POST /flush``) lists the WAL while the convert loop deletes what it
    converted: a segment gone by the time it is looked at (here a name whose file is gone) is not
    waited for, and the flush converts the rest."""
    agent = LogAgent(settings(log_dir))
    agent.start()
    wal = WalAppender(agent.wal_dir, rotate_interval=60)
    wal.start()
    try:
        wal.append("calls", record(1))
        wal.rotate()
        wal.append("calls", record(2))
        ghost = Path(agent.wal_dir) / "1700000000000-1-dead.00000001.wal.ndjson"
        ghost.symlink_to(Path(agent.wal_dir) / "converted-meanwhile")
        assert agent.flush(timeout=0.2) == 1  # the closed segment; the open one waits for its writer
        assert logged(log_dir) == ["call-1", "call-2"]
    finally:
        wal.close()
        agent.stop()
    assert logged(log_dir) == ["call-1", "call-2"]


def test_the_tail_takes_only_complete_lines(log_dir):
    agent = LogAgent(settings(log_dir))
    seen = tailed(agent)
    os.makedirs(agent.wal_dir)
    seg = Path(agent.wal_dir, "1-1-x.00000001.wal.ndjson")
    seg.write_bytes(b'{"_t":"calls","call_id":"call-a","ts":1}\n{"_t":"calls","call_id":"ca')
    agent.tailer.poll()
    assert seen == ["call-a"]
    with seg.open("ab") as f:
        f.write(b'll-b","ts":2}\n')
    agent.tailer.poll()
    agent.tailer.poll()
    assert seen == ["call-a", "call-b"]


def test_the_store_refusing_writes_keeps_the_segments_and_counts_failures(log_dir):
    agent = LogAgent(settings(log_dir))
    agent.start()
    seen = tailed(agent)
    table = Path(log_dir, "calls")
    aside = table.rename(Path(log_dir, "calls.aside"))  # the Delta table exists from the start
    table.write_text("not a directory")
    with WalAppender(agent.wal_dir, rotate_interval=60) as wal:
        wal.append("calls", record(1))
    agent.tailer.poll()
    assert agent.convert() == 0
    assert agent.stats.flush_errors == 1 and not agent.healthy
    assert "Not a directory" in (agent.stats.last_error or "")
    assert len(list(Path(agent.wal_dir).glob("*.wal.ndjson"))) == 1
    assert seen == ["call-1"]
    table.unlink()
    aside.rename(table)
    assert agent.convert() == 1
    assert agent.healthy
    agent.stop()
    assert seen == ["call-1"]


WORKER_IMPORTS = """
import sys
from gateway.app import create_app
from gateway.config import Settings
settings = Settings.model_validate({"store": {"log_dir": sys.argv[1]}, "server": {"auth": "open"},
                                    "routes": {}, "telemetry": {"otlp_endpoint": "http://127.0.0.1:9"}})
app = create_app(settings, agent_socket=sys.argv[1] + "/agent.sock")
heavy = ("pyarrow", "duckdb", "opentelemetry.sdk", "jinja2", "prometheus_client")
print(",".join(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy)))))
"""


def test_a_request_workers_app_imports_no_pyarrow_duckdb_or_otel_sdk(log_dir):
    out = subprocess.run(
        [sys.executable, "-c", WORKER_IMPORTS, log_dir], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"a worker imported: {out.stdout.strip()}"


def test_traceparent_for_the_upstream_keeps_the_callers_trace():
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert tracectx.child_traceparent(caller, None) == caller
    child = tracectx.child_traceparent(caller, "call-1")
    assert child == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{tracectx.span_id_of('call-1'):016x}-01"
    for bad in ("", "00-nothex-bad-01", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-" + caller[3:]):
        assert tracectx.child_traceparent(bad, None) is None


def _sse(chunks: list[dict[str, Any]]) -> str:
    import orjson

    return "".join(f"data: {orjson.dumps(c).decode()}\n\n" for c in chunks) + "data: [DONE]\n\n"


def _chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m-1",
        "choices": choices,
        **extra,
    }


STREAMS = {
    "usage last": [_chunk(""), *[_chunk(w) for w in ["a", "b", "c", "d", "e"]], _chunk(finish="stop"),
                   {"id": "chatcmpl-1", "model": "m-1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}}],
    "no usage": [_chunk("x"), _chunk("y"), _chunk(finish="length")],
    "one chunk": [_chunk("all", finish="stop", usage={"prompt_tokens": 1, "completion_tokens": 1})],
}  # fmt: skip


def test_the_tails_light_derivation_gives_telemetry_the_same_fields_as_the_full_one():
    import pytest

    from gateway.agent.tail import TELEMETRY_FIELDS, derive_for_telemetry
    from gateway.store.rows import derive

    for name, chunks in STREAMS.items():
        for sse in (_sse(chunks), _sse(chunks)[: -len("data: [DONE]\n\n")], "event: x\n" + _sse(chunks)):
            rec = {
                "_t": "calls",
                "call_id": "c",
                "ts": 1,
                "response_sse": sse,
                "price_in": 2.0,
                "price_out": 3.0,
            }
            full, light = derive("calls", dict(rec)), derive_for_telemetry(dict(rec))
            for key in TELEMETRY_FIELDS:
                assert light.get(key) == pytest.approx(full.get(key)), (name, key)
            assert "response_sse" not in light


def quarantined(wal_dir: str) -> list[dict[str, Any]]:
    import json

    from gateway.store import quarantine

    out = []
    for path in sorted(Path(quarantine.directory(wal_dir)).glob("*.ndjson")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def test_each_record_is_parsed_once_and_what_cannot_be_a_row_is_quarantined_by_line(tmp_path, monkeypatch):
    """The conversion takes the tail's Arrow tables (no second parse); quarantine entries keep their
    line numbers and raw lines, whether the tail kept the segment or it had to be read again."""
    import json

    import pytest

    from gateway.agent import tail
    from gateway.store import conversion

    for mode in ("kept", "dropped", "held"):
        kept = mode != "dropped"
        log_dir = str(tmp_path / f"log-{mode}")
        agent = LogAgent(settings(log_dir))
        agent.start()
        seen = tailed(agent)
        if mode != "kept":
            agent.tailer.max_kept_bytes = -1  # the budget is spent before the segment is read
        if mode == "dropped":
            agent.tailer.hold = None  # read ahead anyway (the store failing): the conversion reads it again
        dead = WalAppender(agent.wal_dir, rotate_interval=60)
        dead.start()
        dead.append("calls", record(0, status=200))
        dead.append("calls", record(1, status="not a number"))  # does not fit its column
        dead.append("calls", record(2, status=200))
        dead.close()
        seg = next(Path(agent.wal_dir).glob("*.wal.ndjson"))
        with seg.open("ab") as f:
            f.write(b"{not json\n")
        parses: list[int] = []
        real = tail.parse_lines
        with monkeypatch.context() as m:
            m.setattr(
                tail, "parse_lines", lambda data, _p=parses, _r=real, **kw: _p.append(1) or _r(data, **kw)
            )
            m.setattr(conversion, "parse_lines", lambda *a, **kw: pytest.fail("the conversion parsed again"))
            agent.tailer.poll()
            polls = len(parses)
            assert polls == (0 if mode == "held" else 1)  # held: the tail waits for the conversion
            assert (agent.tailer.parsed(str(seg)) is not None) is kept
            assert agent.convert() == 2
            assert len(parses) == polls + (0 if mode == "kept" else 1)  # dropped: read twice; held: once
            assert agent.status()["reparsed_segments"] == (0 if kept else 1)
        agent.stop()
        entries = sorted(quarantined(agent.wal_dir), key=lambda e: e["line"])
        assert [(e["line"], e["segment"]) for e in entries] == [
            (1, seg.name[: -len(".wal.ndjson")]),
            (3, seg.name[: -len(".wal.ndjson")]),
        ]
        assert json.loads(entries[0]["raw"])["call_id"] == "call-1" and entries[1]["raw"] == "{not json"
        assert agent.status()["quarantined"] == 2
        assert seen == ["call-0", "call-1", "call-2"]  # telemetry saw each parsed record once
        assert logged(log_dir) == ["call-0", "call-2"]


def test_a_bounded_reader_parses_only_the_newest_unflushed_segments(log_dir):
    """A backlog the agent has not converted yet is not parsed whole by its own readers: the newest
    segments within ``max_tail_bytes``, the older ones once converted."""
    agent = LogAgent(settings(log_dir))
    agent.start()
    wal = WalAppender(agent.wal_dir, rotate_interval=60)
    wal.start()
    try:
        for seg in range(3):
            for i in range(seg * 10, seg * 10 + 10):
                wal.append("calls", record(i, request="x" * 1000))
            wal.rotate()
            t = 1_700_000_000 + seg  # segment times in order, whatever the clock's resolution
            os.utime(sorted(Path(agent.wal_dir).glob("*.wal.ndjson"))[seg], (t, t))
        sizes = [p.stat().st_size for p in sorted(Path(agent.wal_dir).glob("*.wal.ndjson"))[:3]]
        with LogStore.open(log_dir, max_tail_bytes=sizes[1] + sizes[2]) as store:
            ids = sorted(int(r["call_id"][5:]) for r in store.sql("SELECT call_id FROM calls"))
            assert ids == list(range(10, 30))  # the two newest segments
            assert store.tail_skipped_bytes == sizes[0]
        with LogStore.open(log_dir, max_tail_bytes=sizes[2] - 1) as store:
            assert store.count() == 0 and store.tail_skipped_bytes == sum(sizes)
        assert len(logged(log_dir)) == 30  # unbounded: everything
        agent.tailer.poll()
        agent.convert()
        with LogStore.open(log_dir, max_tail_bytes=1) as store:
            assert store.count() == 30  # converted: in Parquet, whatever the bound
    finally:
        wal.close()
        agent.stop()


def test_the_agents_own_stores_read_the_tail_it_parsed_and_only_what_was_written_since(log_dir, monkeypatch):
    """A store opened in the agent's process (the regeneration detector, the review pages) takes
    the rows the tailer holds for each unflushed segment and parses only the lines appended after
    its last poll: the same rows, derived columns included, as a store that parses it all."""
    from gateway.store import reader

    registry = reader._shared_tails
    agent = LogAgent(settings(log_dir))
    agent.start()
    assert os.path.realpath(agent.wal_dir) in registry
    wal = WalAppender(agent.wal_dir, rotate_interval=60)
    wal.start()
    streamed = {"response_sse": _sse(STREAMS[next(iter(STREAMS))]), "stream": True}
    try:
        for i in range(6):
            wal.append("calls", record(i, status=200, **(streamed if i % 2 else {})))
        wal.append("calls", record(6, status="not a number"))  # cannot become a row: left out by both
        wal.append(
            "events", {"event_id": "e1", "call_id": "call-1", "ts": 1_700_000_000_000_100, "kind": "thumb"}
        )
        agent.tailer.poll()
        for i in range(7, 9):  # after the poll: the store reads these from the segment itself
            wal.append("calls", record(i, status=200, **streamed))
        parsed: list[int] = []
        real = reader.parse_lines
        monkeypatch.setattr(
            reader, "parse_lines", lambda data, **kw: parsed.append(data.count(b"\n")) or real(data, **kw)
        )
        query = "SELECT * EXCLUDE (schema_version) FROM calls ORDER BY call_id"
        with LogStore.open(log_dir) as store:
            shared, events = store.sql(query), store.sql("SELECT event_id FROM events")
        assert parsed == [2]  # the two lines after the poll, not the eight before it
        source = registry.pop(os.path.realpath(agent.wal_dir))  # a store that parses it all
        try:
            with LogStore.open(log_dir) as store:
                whole = store.sql(query)
        finally:
            registry[os.path.realpath(agent.wal_dir)] = source
        assert parsed == [2, 10]
        assert [r["call_id"] for r in shared] == [f"call-{i}" for i in (0, 1, 2, 3, 4, 5, 7, 8)]
        assert shared == whole and events == [{"event_id": "e1"}]
        assert shared[1]["output_text"] and shared[1]["output_text"] == shared[7]["output_text"]
    finally:
        wal.close()
        agent.stop()
    assert os.path.realpath(agent.wal_dir) not in registry  # stopped: nothing shared any more


def test_a_store_opened_while_the_tail_hands_on_rows_does_not_wait_for_the_tail(log_dir):
    """The feedback index opens a store under its own lock, which the tail's listener call takes
    while the tail holds its lock: reading what the tail shares must not need the tail's lock
    (it deadlocked once: a feedback post hung until the client gave up)."""
    import threading

    agent = LogAgent(settings(log_dir))
    agent.start()
    counts: list[int] = []

    def listener(table: str, rows: list[dict[str, Any]]) -> None:
        with LogStore.open(log_dir) as store:  # as the feedback index does, from inside a poll
            counts.append(store.count())

    agent.tailer.listeners.append(listener)
    wal = WalAppender(agent.wal_dir, rotate_interval=60)
    wal.start()
    stuck = False

    def poll() -> None:
        nonlocal stuck
        t = threading.Thread(target=agent.tailer.poll, daemon=True)
        t.start()
        t.join(timeout=20)
        stuck = t.is_alive()
        assert not stuck, "the tail's poll waited on itself"

    try:
        for i in range(3):
            wal.append("calls", record(i, status=200))
        poll()  # the first read: the store parses the segment (nothing shared yet)
        wal.append("calls", record(3, status=200))
        poll()
        assert counts == [3, 4]  # the shared rows of the first read, plus the line after them
    finally:
        wal.close()
        if not stuck:  # (a stuck tail holds its lock for good: the agent could not stop)
            agent.stop()


def test_a_segment_drained_while_a_poll_lists_the_wal_is_handed_on_once(log_dir, monkeypatch):
    """The convert thread drains a segment created after the tail thread's poll listed the WAL: the
    poll must not take it for gone (forgetting its offset), or the next drain hands it on again."""
    import threading

    from gateway.agent import tail as tail_module

    agent = LogAgent(settings(log_dir))
    seen = tailed(agent)
    os.makedirs(agent.wal_dir)
    seg = Path(agent.wal_dir, "1-1-x.00000001.wal.ndjson")
    real_listdir = os.listdir
    drainer: list[threading.Thread] = []

    def listdir_then_a_segment_appears(path: str) -> list[str]:
        names = real_listdir(path)
        if not drainer:  # the first listing: the segment appears and is drained right after it
            seg.write_bytes(b'{"_t":"calls","call_id":"call-a","ts":1}\n')
            drainer.append(threading.Thread(target=agent.tailer.drain, args=(str(seg),)))
            drainer[0].start()
            if not agent.tailer._lock.locked():  # nothing makes the drain wait for the poll: the worst
                drainer[0].join(10)  # interleaving has it done before the listing is used
        return names

    monkeypatch.setattr(tail_module.os, "listdir", listdir_then_a_segment_appears)
    agent.tailer.poll()
    drainer[0].join(10)
    monkeypatch.setattr(tail_module.os, "listdir", real_listdir)
    agent.tailer.drain(str(seg))  # the conversion's drain, before it converts the segment
    assert seen == ["call-a"]


def test_under_a_backlog_the_tail_waits_for_a_conversion_that_makes_progress(log_dir, monkeypatch):
    """Past its budget of kept rows, the tail holds off reading ahead while the conversion frees
    segments: a round converting a backlog for longer than ``max_hold_s`` in all must not make the
    tail read the later segments ahead, drop their rows and have them parsed a second time."""
    from gateway.agent import tail
    from gateway.agent.tail import WalTailer

    wal_dir = os.path.join(log_dir, "wal")
    appender = WalAppender(wal_dir, rotate_interval=60)
    appender.start()
    for k in range(3):
        for i in range(5):
            appender.append("calls", record(10 * k + i, status=200))
        appender.rotate()
    appender.close()
    a, b, c = sorted(str(p) for p in Path(wal_dir).glob("*.wal.ndjson") if p.stat().st_size)
    now = [0.0]
    monkeypatch.setattr(tail.time, "monotonic", lambda: now[0])
    tailer = WalTailer(wal_dir, keep_rows=True, max_kept_bytes=1, hold=lambda: True, max_hold_s=2.0)
    seen: list[str] = []
    tailer.listeners.append(lambda table, rows: seen.extend(r["call_id"] for r in rows))
    tailer.drain(a)  # the conversion round takes A: kept past the budget
    tailer.poll()  # B and C wait (from t=0)
    assert len(seen) == 5
    now[0] = 1.5
    os.unlink(a)  # A converted (and deleted): progress
    tailer.forget(a)
    tailer.drain(b)
    now[0] = 3.0  # 3 s since the tail began to wait, 1.5 s since the conversion last freed a segment
    tailer.poll()
    assert len(seen) == 10  # C still waits for the conversion
    os.unlink(b)
    tailer.forget(b)
    tailer.drain(c)
    assert tailer.parsed(c) is not None  # kept whole: its conversion does not read it again
    assert sorted(seen) == sorted(f"call-{10 * k + i}" for k in range(3) for i in range(5))
    now[0] = 10.0  # no progress for longer than max_hold_s: the tail reads ahead (telemetry goes on)
    appender = WalAppender(wal_dir, rotate_interval=60)
    appender.start()
    appender.append("calls", record(99, status=200))
    appender.close()
    tailer.poll()
    now[0] = 12.5
    tailer.poll()
    assert "call-99" in seen
