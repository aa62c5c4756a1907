"""make bench-log ARGS=--agent: the log agent's sustained rows/s and RSS, with ~2 KB call records.

Request workers (separate processes, ``--writers`` of them) append realistic ~2 KB calls
(half streamed as raw SSE, `log_bench.realistic_record`) to the WAL as fast as they can,
rotating every ``--segment-rows`` records, while the host's log agent (`gateway.agent.app.
build_agent`: WAL tail → telemetry (Prometheus) and the feedback index, conversion →
Parquet → Delta commits) runs in this process. Reported: rows/s from the agent's start (once
every appender has built its records and can append) to the last row committed (the
appenders finish well before: the figure is the agent's), the
agent's peak RSS (``ru_maxrss``) and its CPU seconds. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# the rest is imported where used: with ``--convert-process`` the agent's child process (spawned)
# imports this module again, and must not pay for what only the bench needs
from gateway.agent.process import without_pandas


def append_worker(
    wal_dir: str, n: int, segment_rows: int, offset: int, ready: Any, start: mp.synchronize.Event, done: Any
) -> None:
    from log_bench import realistic_record

    from gateway.store.wal import WalAppender

    records = [realistic_record(offset + i) for i in range(n)]
    ready.release()
    start.wait()
    wal = WalAppender(wal_dir, rotate_interval=3600)
    wal.start()
    for i, rec in enumerate(records):
        wal.append("calls", rec)
        if i % segment_rows == segment_rows - 1:
            wal.rotate()
    wal.close()
    done.value = time.time()  # appended (the process may take a while to exit)


def run(
    rows: int,
    writers: int,
    segment_rows: int,
    flush_interval: float,
    telemetry: bool = True,
    convert_process: bool = False,
) -> dict[str, float | int]:
    from log_bench import realistic_record

    from gateway.agent.app import build_agent
    from gateway.config import Settings
    from gateway.store import LogStore

    tmp = tempfile.mkdtemp(prefix="st-agentbench-", dir=os.environ.get("BENCH_DIR"))
    store_settings = {
        "log_dir": tmp,
        "flush_interval": flush_interval,
        "compact_interval": 0,
    }
    if convert_process:
        store_settings["convert_process"] = True
    settings = Settings.model_validate(
        {
            "store": store_settings,
            "server": {"auth": "open"},
            "routes": {},
        }
    )
    ctx = build_agent(settings)
    agent = ctx.agent
    if not telemetry:  # what the metrics and spans cost: the tail without their listener
        agent.tailer.listeners.remove(ctx.telemetry.on_records)
    start, ready = mp.Event(), mp.Semaphore(0)
    per = rows // writers
    done = [mp.Value("d", 0.0) for _ in range(writers)]
    procs = [
        mp.Process(
            target=append_worker, args=(agent.wal_dir, per, segment_rows, k * per, ready, start, done[k])
        )
        for k in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # the workers build their records first: the clock starts once they can append
        ready.acquire()
    size = statistics.mean(len(json.dumps(realistic_record(i))) for i in range(200))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, wall0 = time.perf_counter(), time.time()
    start.set()
    agent.start(first_round_in_background=True)  # as the agent process starts it (its lifespan)
    while agent.converter.stats.flushed_rows < per * writers:
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    child = getattr(agent, "child", None)
    child_cpu, child_peak = child_usage(child.pid if child is not None else None)
    agent.stop()
    for p in procs:
        p.join()
    appended_at = max(d.value for d in done) - wall0
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime) + child_cpu
    with LogStore.open(tmp) as store:
        stored = store.count()
    ctx.feedback_index.close()
    shutil.rmtree(tmp)
    return {
        "rows": per * writers,
        "record_bytes": round(size),
        "writers": writers,
        "appended_s": round(appended_at, 2),
        "agent_s": round(elapsed, 2),
        "rows_s": round(per * writers / elapsed),
        "telemetry": telemetry,
        "convert_process": convert_process,
        "agent_cpu_s": round(cpu, 2),
        "agent_cpu_us_per_row": round(cpu / (per * writers) * 1e6, 1),
        "agent_peak_rss_mib": round(cpu1.ru_maxrss / 1024),
        "child_cpu_s": round(child_cpu, 2),
        "child_peak_rss_mib": round(child_peak),
        "rows_in_store": stored,
        "tailed": agent.tailer.records,
        "segments": agent.stats.converted_segments,
        "reparsed": agent.stats.reparsed_segments,
    }


def child_usage(pid: int | None) -> tuple[float, float]:
    """CPU seconds and peak RSS (MiB, ``VmHWM``) of the agent's conversion process, if any (it
    starts with the agent's first conversion: all of its CPU is the run's)."""
    if pid is None:
        return 0.0, 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return cpu, peak / 1024


AGENT_ENV = {"MALLOC_ARENA_MAX": "2", "ARROW_DEFAULT_MEMORY_POOL": "system"}  # what `serve` gives the agent


def main() -> None:
    if any(os.environ.get(k) != v for k, v in AGENT_ENV.items()):  # the agent's allocators: from the start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AGENT_ENV})
    without_pandas()  # as the agent process does (gateway.agent.process.main), before pyarrow is used
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--segment-rows", type=int, default=20_000)
    ap.add_argument("--flush-interval", type=float, default=1.0)
    ap.add_argument("--no-telemetry", action="store_true", help="the tail without the metrics listener")
    ap.add_argument(
        "--convert-process", action="store_true", help="store.convert_process: conversion in a child process"
    )
    ap.add_argument("--json-out")
    args = ap.parse_args()
    out = run(
        args.rows,
        args.writers,
        args.segment_rows,
        args.flush_interval,
        not args.no_telemetry,
        args.convert_process,
    )
    print(
        f"log agent: {out['rows']:,} calls of ~{out['record_bytes']} B from {out['writers']} writers: "
        f"{out['rows_s']:,} rows/s sustained (target >= 50,000; WAL appends done at {out['appended_s']} s, "
        f"last row committed at {out['agent_s']} s), agent CPU {out['agent_cpu_s']} s "
        f"({out['agent_cpu_us_per_row']} µs/row: {1e6 / out['agent_cpu_us_per_row']:,.0f} rows per CPU-second), "
        f"peak RSS {out['agent_peak_rss_mib']} MiB (target <= 300), rows in store {out['rows_in_store']:,}, "
        f"tailed {out['tailed']:,}, segments parsed twice {out['reparsed']} of {out['segments']}"
    )
    if args.convert_process:
        print(
            f"  conversion process (counted in the CPU above): {out['child_cpu_s']} s CPU, peak RSS "
            f"{out['child_peak_rss_mib']} MiB; agent + child peaks {out['agent_peak_rss_mib'] + out['child_peak_rss_mib']} MiB"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
