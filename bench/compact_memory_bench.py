"""Compaction's memory against its row-group bound (`gateway.store.table.COMPACT_GROUP_BYTES`).

Writes ``--files`` Parquet files of ``--rows`` calls each (2 KB bodies of random words, which compress
poorly, as real traffic in many languages does), then merges them once per bound in a fresh process
(`table._merge`, what a compaction runs) and prints, per run: CPU seconds, the RSS peak and what stays
over the process's base (sampled every 5 ms), Arrow's pool peak, row groups and footer size.

    .venv/bin/python bench/compact_memory_bench.py --groups 32,16,8 --runs 2

Run with the agent's allocator settings (`MALLOC_ARENA_MAX=2 ARROW_DEFAULT_MEMORY_POOL=system`, as
`shadowtune serve` gives the agent); this script sets them for its children.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import threading
import time


def generate(out: str, files: int, rows: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gateway.store.schema import TABLES

    rnd = random.Random(1)
    words = ["".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(2, 9))) for _ in range(3000)]

    def text(n: int) -> str:
        return " ".join(rnd.choices(words, k=n))

    for f in range(files):
        recs = []
        for i in range(rows):
            q, a = text(120), text(90)
            recs.append(
                {
                    "schema_version": 1,
                    "call_id": f"call_{f}_{i}",
                    "ts": 1_790_000_000_000_000 + f * rows + i,
                    "endpoint": "chat",
                    "route": "bot",
                    "variant": "baseline",
                    "served": True,
                    "mode": "shadow",
                    "upstream": "openai",
                    "upstream_model": "gpt-4o-mini",
                    "client_key": f"k{i % 50}",
                    "user": f"u{rnd.randint(0, 999)}",
                    "session_id": f"s{rnd.randint(0, 9999)}",
                    "stream": False,
                    "request": json.dumps({"model": "bot", "messages": [{"role": "user", "content": q}]}),
                    "response": json.dumps({"choices": [{"message": {"role": "assistant", "content": a}}]}),
                    "output_text": a,
                    "finish_reason": "stop",
                    "status": 200,
                    "latency_ms": 12.0,
                    "input_tokens": 120,
                    "output_tokens": 90,
                }
            )
        table = pa.Table.from_pylist(recs, schema=TABLES["calls"])
        pq.write_table(table, os.path.join(out, f"f{f:04d}.parquet"), compression="zstd")
    return sum(os.path.getsize(os.path.join(out, p)) for p in os.listdir(out)) / 2**20


def child(src_dir: str, group_mib: float, target: str) -> None:
    import glob

    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from gateway.store import table
    from gateway.store.schema import TABLES

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    table.COMPACT_GROUP_BYTES = int(group_mib * 2**20)
    sources = sorted(glob.glob(os.path.join(src_dir, "*.parquet")))
    base = rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.process_time()
    rows = table._merge(pafs.LocalFileSystem(), sources, target, TABLES["calls"])
    cpu = time.process_time() - t0
    done.set()
    sampler.join()
    md = pq.ParquetFile(target).metadata
    print(
        f"| {group_mib:g} | {rows} | {cpu:.2f} | +{peak[0] - base:.0f} | +{rss() - base:.0f} "
        f"| {pa.default_memory_pool().max_memory() / 2**20:.0f} | {md.num_row_groups} "
        f"| {md.serialized_size / 1024:.0f} | {os.path.getsize(target) / 2**20:.0f} |",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=120)
    p.add_argument("--rows", type=int, default=2000, help="rows per file")
    p.add_argument("--groups", default="32,16,8", help="bounds to try, MiB of Arrow data, comma-separated")
    p.add_argument("--runs", type=int, default=2, help="runs per bound, alternated")
    p.add_argument("--child", nargs=3, metavar=("DIR", "MIB", "TARGET"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], float(args.child[1]), args.child[2])
        return
    with tempfile.TemporaryDirectory(prefix="compact-bench-") as tmp:
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        mib = generate(src, args.files, args.rows)
        print(f"{args.files} files x {args.rows} rows, {mib:.0f} MiB of Parquet\n")
        print(
            "| bound MiB | rows | CPU s | RSS peak over base MiB | after MiB | Arrow peak MiB "
            "| row groups | footer KiB | file MiB |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "ARROW_DEFAULT_MEMORY_POOL": "system"}
        target = os.path.join(tmp, "out.parquet")
        for _ in range(args.runs):
            for g in args.groups.split(","):
                subprocess.run([sys.executable, __file__, "--child", src, g, target], env=env, check=True)
                os.remove(target)


if __name__ == "__main__":
    main()
