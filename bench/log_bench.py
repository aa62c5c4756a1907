"""make bench-log: the call log's write throughput, request-path cost and query speed.

Prints, from one run:

1. request-path cost of `LogWriter.append` per call (µs, median of batches), for
   realistic ~2 KB chat calls (half of them streamed, as raw SSE);
2. sustained rows/s written to Parquet by the background writer (from the first append
   to the last row fsynced in Parquet), with appends arriving as fast as one thread can;
3. a typical dashboard query (per-day, per-variant counts and error rates) over
   1,000,000 and 10,000,000 generated rows;
4. the typed record's cost (`CallRecord` built and `to_wal`, the log's boundary) per call;
5. ``store.wal_fsync_ms``: process CPU per call (all threads) and fsyncs, with appends paced
   at a steady rate, group-commit fsync off and on.

The big tables are generated with DuckDB straight into the log's folders
(``calls/date=…/*.parquet``, zstd) with short bodies, then registered into the Delta
table by the layout-1 migration (one commit): the dashboard query reads no body column,
so body size does not change its cost. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import duckdb

from gateway.protocol.record import CallRecord
from gateway.store import LogStore, LogWriter, layout
from gateway.store.ids import new_id

DASHBOARD = """
SELECT date_trunc('day', ts) AS day, variant,
       count(*) AS calls,
       avg(CASE WHEN status >= 400 THEN 1.0 ELSE 0.0 END) AS error_rate
FROM calls WHERE route = 'route-1' AND served GROUP BY ALL ORDER BY ALL
"""


def realistic_record(i: int) -> dict:
    user_text = ("Please extract the order number and the delivery date from this message: " * 8)[:420]
    answer = json.dumps({"order": f"A-{i:08d}", "date": "2024-03-14", "notes": "x" * 60})
    request = json.dumps(
        {
            "model": "support-bot",
            "messages": [
                {"role": "system", "content": "You are a precise extraction assistant. Answer in JSON."},
                {"role": "user", "content": user_text},
            ],
            "temperature": 0,
            "user": f"user-{i % 5000}",
        }
    )
    rec = {
        "call_id": new_id("call"),
        "ts": time.time_ns() // 1000,
        "endpoint": "chat.completions",
        "route": "support-bot",
        "variant": "baseline" if i % 10 else "candidate",
        "served": True,
        "mode": "shadow",
        "route_version": 3,
        "upstream": "gpt-4o",
        "upstream_model": "gpt-4o",
        "provider": "openai",
        "user": f"user-{i % 5000}",
        "request": request,
        "status": 200,
        "latency_ms": 812.5,
        "upstream_ms": 812.3,
        "overhead_ms": 0.2,
        "price_in": 2.5,
        "price_out": 10.0,
    }
    if i % 2:
        pieces = [answer[k : k + 12] for k in range(0, len(answer), 12)]
        head = 'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,'
        chunks = [head + '"delta":{"content":' + json.dumps(p) + "}}]}\n\n" for p in pieces]
        chunks.append(
            'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":250,"completion_tokens":120}}\n\n'
        )
        rec["stream"] = True
        rec["response_sse"] = "".join(chunks) + "data: [DONE]\n\n"
    else:
        rec["response"] = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-4o",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 250, "completion_tokens": 120},
            }
        )
    return rec


def bench_writes(n: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="st-logbench-")
    records = [realistic_record(i) for i in range(n)]
    size = statistics.mean(len(json.dumps(r)) for r in records[:1000])
    w = LogWriter(tmp, flush_interval=0.25, compact_interval=0)
    w.start()
    per_call = []
    t0 = time.perf_counter()
    batch = 1000
    for start in range(0, n, batch):
        b0 = time.perf_counter_ns()
        for rec in records[start : start + batch]:
            w.append("calls", rec)
        per_call.append((time.perf_counter_ns() - b0) / batch / 1000)
    t_appended = time.perf_counter() - t0
    while w.stats.flushed_rows < n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    w.close()
    store = LogStore.open(tmp)
    rows = store.count()
    shutil.rmtree(tmp)
    # the writer alone: a backlog already in the WAL, converted to Parquet by one thread on one core
    tmp = tempfile.mkdtemp(prefix="st-logbench-")
    w = LogWriter(tmp, flush_interval=3600, compact_interval=0)
    w.start()
    for rec in records:
        w.append("calls", rec)
    t0 = time.perf_counter()
    w.flush()
    writer_s = time.perf_counter() - t0
    w.close()
    shutil.rmtree(tmp)
    return {
        "writer_rows_s": round(n / writer_s),
        "rows": n,
        "record_bytes": round(size),
        "append_us_median": round(statistics.median(per_call), 2),
        "append_us_p99_batch": round(sorted(per_call)[int(len(per_call) * 0.99) - 1], 2),
        "append_only_rows_s": round(n / t_appended),
        "sustained_rows_s": round(n / elapsed),
        "rows_in_store": rows,
    }


def bench_record(n: int) -> dict:
    """µs per call to build the typed record and its WAL object (what the hot path adds to ``append``)."""
    records = [realistic_record(i) for i in range(n)]
    req = {"user": "user-1", "metadata": {"session_id": "s-1", "tags": "a,b"}}
    headers = {b"x-shadowtune-tags": b"web"}
    per_call = []
    built = []
    batch = 1000
    for start in range(0, n, batch):
        b0 = time.perf_counter_ns()
        for r in records[start : start + batch]:
            rec = CallRecord.begin(r["call_id"], r["ts"], "chat.completions")
            built.append(rec)
            rec.annotate(req, headers)
            rec.route, rec.variant, rec.mode, rec.route_version = r["route"], r["variant"], r["mode"], 3
            rec.upstream, rec.upstream_model, rec.provider = r["upstream"], r["upstream_model"], r["provider"]
            rec.request, rec.status, rec.stream = r["request"], 200, bool(r.get("stream"))
            rec.response, rec.response_sse = r.get("response"), r.get("response_sse")
            rec.latency_ms, rec.upstream_ms, rec.overhead_ms = 812.5, 812.3, 0.2
            rec.to_wal()
        per_call.append((time.perf_counter_ns() - b0) / batch / 1000)
    to_wal = []  # ``to_wal`` alone, on the records built above (thread CPU: load changes it less)
    for start in range(0, n, batch):
        c0 = time.thread_time_ns()
        for rec in built[start : start + batch]:
            rec.to_wal()
        to_wal.append((time.thread_time_ns() - c0) / batch / 1000)
    return {
        "record_us_median": round(statistics.median(per_call), 2),
        "to_wal_us_median": round(statistics.median(to_wal), 2),
        "to_wal_us_best": round(min(to_wal), 2),
    }


def bench_fsync(rate: int, seconds: float, fsync_ms: float) -> dict:
    """Appends paced at ``rate``/s for ``seconds``; process CPU per call (every thread) and fsyncs."""
    tmp = tempfile.mkdtemp(prefix="st-fsyncbench-", dir=os.environ.get("BENCH_DIR"))
    records = [realistic_record(i) for i in range(int(rate * seconds))]
    w = LogWriter(tmp, flush_interval=1.0, compact_interval=0, wal_fsync_ms=fsync_ms)
    w.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, rec in enumerate(records):
        due = t0 + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        w.append("calls", rec)
    w.close()
    cpu = time.process_time() - cpu0
    s = w.stats
    shutil.rmtree(tmp)
    return {
        "fsync_ms": fsync_ms,
        "rate": rate,
        "calls": len(records),
        "cpu_us_per_call": round(cpu / len(records) * 1e6, 1),
        "fsyncs": s.wal_fsyncs,
        "fsync_avg_ms": round(s.wal_fsync_s / s.wal_fsyncs * 1000, 3) if s.wal_fsyncs else None,
    }


def generate(log_dir: str, n: int) -> None:
    """n rows over 30 days, straight into the log layout (short bodies)."""
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "store.json"), "w") as f:
        json.dump({"schema_version": 1}, f)
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    con.execute(
        f"""
        COPY (
          SELECT 1::SMALLINT AS schema_version,
                 'call_' || lpad(i::VARCHAR, 26, '0') AS call_id,
                 NULL::VARCHAR AS parent_call_id,
                 (TIMESTAMPTZ '2026-10-01 00:00:00+00' + to_microseconds((i::HUGEINT * 2592000000000 // {n})::BIGINT)) AS ts,
                 'chat.completions' AS endpoint,
                 'route-' || (i % 5)::VARCHAR AS route,
                 CASE WHEN i % 10 = 0 THEN 'candidate' ELSE 'baseline' END AS variant,
                 i % 20 != 1 AS served,
                 'canary' AS mode, 3::BIGINT AS route_version,
                 'gpt-4o' AS upstream, 'gpt-4o' AS upstream_model, 'openai' AS provider,
                 NULL::VARCHAR AS client_key, 'user-' || (i % 50000)::VARCHAR AS "user",
                 NULL::VARCHAR AS session_id, NULL::VARCHAR[] AS tags, i % 2 = 0 AS stream,
                 '{{"model":"m","messages":[{{"role":"user","content":"hi ' || i::VARCHAR || '"}}]}}' AS request,
                 '{{"id":"x"}}' AS response, 'chatcmpl-' || i::VARCHAR AS response_id,
                 'answer ' || i::VARCHAR AS output_text, 'stop' AS finish_reason,
                 CASE WHEN i % 97 = 0 THEN 500 ELSE 200 END::INTEGER AS status,
                 NULL::VARCHAR AS error_type, NULL::VARCHAR AS error_message,
                 (200 + (i * 7919) % 1800)::DOUBLE AS latency_ms, 120.0 AS ttft_ms, 0.0 AS upstream_ms, 0.2 AS overhead_ms,
                 250::BIGINT AS input_tokens, 120::BIGINT AS output_tokens, 0.0018 AS cost_usd,
                 NULL::VARCHAR AS regenerate_of,
                 strftime(ts, '%Y-%m-%d') AS date
          FROM range({n}) t(i)
        ) TO '{log_dir}/calls' (FORMAT parquet, PARTITION_BY (date), COMPRESSION zstd, ROW_GROUP_SIZE 122880)
        """
    )
    con.close()
    layout.ensure_store(log_dir)  # a layout-1 store: its files are registered into the table


def bench_query(n: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="st-querybench-")
    t0 = time.perf_counter()
    generate(tmp, n)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = LogStore.open(tmp)
    open_s = time.perf_counter() - t0
    times, cpus = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        rows = store.sql(DASHBOARD)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)  # every DuckDB thread: the figure load does not inflate as much
    count = store.count()
    store.close()
    shutil.rmtree(tmp)
    return {
        "rows": count,
        "result_rows": len(rows),
        "generate_s": round(gen_s, 1),
        "open_s": round(open_s, 3),
        "query_s_first": round(times[0], 3),
        "query_s_best": round(min(times), 3),
        "query_cpu_s_best": round(min(cpus), 3),
        "loadavg": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-rows", type=int, default=200_000)
    ap.add_argument("--query-rows", default="1000000,10000000")
    ap.add_argument("--fsync-ms", default="0,10,2", help="wal_fsync_ms values to compare (0: off)")
    ap.add_argument("--fsync-rate", type=int, default=1000, help="paced appends per second for --fsync-ms")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    out: dict[str, Any] = {"write": bench_writes(args.write_rows), "query": []}
    out["record"] = bench_record(min(args.write_rows, 100_000))
    print(
        f"typed record (CallRecord built + to_wal), per call: median {out['record']['record_us_median']} µs; "
        f"to_wal alone: median {out['record']['to_wal_us_median']} µs CPU, best {out['record']['to_wal_us_best']} µs"
    )
    out["fsync"] = [bench_fsync(args.fsync_rate, 5.0, float(ms)) for ms in args.fsync_ms.split(",") if ms]
    for f in out["fsync"]:
        avg = f"{f['fsync_avg_ms']} ms each" if f["fsyncs"] else "none"
        print(
            f"wal_fsync_ms={f['fsync_ms']:g} at {f['rate']} calls/s: {f['cpu_us_per_call']} µs CPU/call "
            f"(all threads), {f['fsyncs']} fsyncs ({avg})"
        )
    w = out["write"]
    print(f"write path ({w['rows']} calls of ~{w['record_bytes']} B, half streamed):")
    print(f"  request-path cost of append:  median {w['append_us_median']} µs/call (target <= 50)")
    print(
        f"  sustained rows/s to Parquet:  {w['sustained_rows_s']:,} (target >= 20,000), appends and writer "
        f"in one process (appends alone {w['append_only_rows_s']:,}/s)"
    )
    print(f"  writer alone, WAL -> Parquet: {w['writer_rows_s']:,} rows/s on one thread")
    print(f"  rows in store after close:    {w['rows_in_store']:,}")
    for n in (int(x) for x in args.query_rows.split(",") if x):
        q = bench_query(n)
        out["query"].append(q)
        print(
            f"dashboard query over {q['rows']:,} rows: first {q['query_s_first']} s, best {q['query_s_best']} s, "
            f"CPU {q['query_cpu_s_best']} s (target < 1 s at 10M; store open {q['open_s']} s, generation "
            f"{q['generate_s']} s; load average {q['loadavg']})"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
