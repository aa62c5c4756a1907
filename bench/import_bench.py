"""``shadowtune logs import`` throughput: N lines of ~1.1 KB chat calls over 28 days, imported once.

Prints rows/s (wall and per CPU-second of this process), the load average, and checks that a rerun
imports nothing. Run: ``python bench/import_bench.py [--lines 100000]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import tempfile
import time

from gateway.store import LogStore
from gateway.store.imports import import_file


def write_lines(path: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    filler = "lorem ipsum dolor sit amet " * 20
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            ts = start + dt.timedelta(seconds=i * 28 * 86400 / n)
            question = f"order {i}: {rng.randint(1, 9)} lamps to Oslo. {filler[: rng.randint(200, 500)]}"
            line = {
                "ts": ts.isoformat(),
                "user": f"u{rng.randint(1, 5000)}",
                "request": {"model": "support", "messages": [{"role": "user", "content": question}]},
                "response": {
                    "id": f"chatcmpl-{i}",
                    "object": "chat.completion",
                    "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": filler[: rng.randint(100, 300)]}}],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 60, "total_tokens": 180},
                },
            }  # fmt: skip
            f.write(json.dumps(line) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, log_dir = os.path.join(tmp, "calls.jsonl"), os.path.join(tmp, "log")
        write_lines(src, args.lines)
        size = os.path.getsize(src)
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        result = import_file(log_dir, src)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        again = import_file(log_dir, src)
        with LogStore.open(log_dir) as store:
            rows = store.count("calls")
        print(
            json.dumps(
                {
                    "lines": args.lines,
                    "mb": round(size / 1e6, 1),
                    "rows": rows,
                    "wall_s": round(wall, 2),
                    "rows_per_s_wall": round(rows / wall),
                    "cpu_s": round(cpu, 2),
                    "rows_per_cpu_s": round(rows / cpu) if cpu else None,
                    "rerun_already_imported": again.already,
                    "load_average": os.getloadavg(),
                    "files": result.files,
                    "bad_lines": len(result.bad),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
