"""make bench-review: every review page's median time over a 10M-call log, local disk and S3.

1. generates ``--calls`` (default 10,000,000) compact calls over 7 days through the store's
   writer path (`bench.review_gen`), unless ``--log-dir`` names a log made before;
2. starts a real ``shadowtune serve`` on that log (one worker, as a reviewer would reach it),
   with no dashboard kept (a new deployment), and waits for its warm-up (`gateway.web._warm`:
   the stores, facets, sample pool and the 24h and 7d dashboards, computed in the background;
   pages timed while it runs would time the contention with it);
3. fetches each page ``--repeat`` times over HTTP and prints the first and the median time
   (``first`` for a dashboard: until its numbers are computed, see `gateway.web._store`): the
   dashboard (24h and 7d), the calls list (first page, page 20, filtered by route and errors, a
   text search), one call's page (with its shadow sibling), the queues, the operations page;
   then the dashboards and the sample queue on a restarted server, and the first pages once a
   restarted server has warmed up;
4. with ``--s3``, the same against a log on a real S3-compatible server (moto, as the tests
   use), generated there by the same writer path (``--s3-calls``, default the same count).

Prints ``uptime`` first: this machine's 2 cores are shared with other work. A benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.review_gen import generate
from gateway.store import LogStore


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(log_dir: str, env: dict[str, str] | None = None) -> Iterator[str]:
    port = _port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--upstream", "http://127.0.0.1:9/v1"]
    cmd += ["--port", str(port), "--log-dir", log_dir, "--log-level", "warning"]
    wal = tempfile.mkdtemp(prefix="st-rb-wal-")
    full_env = {**os.environ, **(env or {}), "SHADOWTUNE_STORE__WAL_DIR": wal}
    if "://" in log_dir:  # a log in object storage keeps its state in ./shadowtune-state otherwise
        full_env["SHADOWTUNE_STORE__STATE_DIR"] = os.path.join(wal, "state")
    proc = subprocess.Popen(cmd, env=full_env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code < 500:
                    break
            time.sleep(0.3)
        else:
            raise SystemExit("the gateway did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(wal, ignore_errors=True)


def wait_warm(url: str, timeout: float = 300, field: str = "review_warm_s") -> float | None:
    """Wait until the server's review pages have warmed up (`gateway.web._warm`); their seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            took = httpx.get(url + "/admin/status", timeout=5).json().get(field)
            if took is not None:
                return float(took)
        time.sleep(0.3)
    return None


def warmed(only: str) -> dict[str, str]:
    """The first pages a reviewer opens after a restart, once the process has warmed up."""
    first = {
        "calls, first page": "/review/calls",
        "queue: random sample": "/review/queues/sample",
        "dashboard 24h": "/review",
    }
    return {k + ", after a restart and its warm-up": v for k, v in first.items() if _picked(only, k)}


def restarted_warm(url: str, only: str, repeat: int) -> None:
    took = wait_warm(url)
    print(f"  warm-up took {took} s" if took is not None else "  no warm-up reported")
    time_pages(url, warmed(only), repeat)


def pages(log_dir: str) -> dict[str, str]:
    """The pages to time, with real ids from the log."""
    with LogStore.open(log_dir) as s:
        shadow = s.sql(
            "SELECT parent_call_id AS id FROM calls WHERE parent_call_id IS NOT NULL "
            "AND epoch_us(ts) > (SELECT epoch_us(max(ts)) - 3 * 86400000000 FROM calls) LIMIT 1"
        )
    call = shadow[0]["id"]
    return {
        "dashboard 24h": "/review",
        "dashboard 7d": "/review?period=7d",
        "calls, first page": "/review/calls",
        "calls, page 20": "/review/calls?page=20",
        "calls, route + errors": "/review/calls?route=support&status=error",
        "calls, text search (24h)": "/review/calls?q=order+4242",
        "one call (with shadow sibling)": f"/review/calls/{call}",
        "queue: thumbs-down": "/review/queues/thumbs_down",
        "queue: random sample": "/review/queues/sample",
        "operations": "/review/ops",
    }


def _picked(only: str, name: str) -> bool:
    return any(part in name for part in only.split(","))


def restarted(only: str) -> dict[str, str]:
    """The dashboards and the sample queue again, on a new server process (after the first one
    kept its numbers and its sample pool)."""
    kept = {
        "dashboard 24h": "/review",
        "dashboard 7d": "/review?period=7d",
        "queue: random sample": "/review/queues/sample",
    }
    return {k + ", after a restart": v for k, v in kept.items() if _picked(only, k)}


def time_pages(url: str, targets: dict[str, str], repeat: int) -> list[dict[str, object]]:
    out = []
    print("  uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    with httpx.Client(base_url=url, timeout=300) as client:
        for name, path in targets.items():
            times = []
            status = 0
            t0 = time.perf_counter()
            while True:  # a cold dashboard answers "being computed" until its numbers are ready
                r = client.get(path)
                if 'id="computing"' not in r.text:
                    break
                time.sleep(0.5)
            times.append(time.perf_counter() - t0)
            for _ in range(repeat - 1):
                t0 = time.perf_counter()
                r = client.get(path)
                times.append(time.perf_counter() - t0)
                status = r.status_code
            out.append(
                {
                    "page": name,
                    "status": status,
                    "first_ms": round(times[0] * 1000),
                    "median_ms": round(statistics.median(times) * 1000),
                }
            )
            print(
                f"  {name:34s} {status}  first {out[-1]['first_ms']:>6} ms  median {out[-1]['median_ms']:>6} ms"
            )
    return out


def disk_use(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--log-dir", help="a log made by a previous run (kept); default: a new temporary one")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--s3", action="store_true", help="also on an S3-compatible server (moto)")
    ap.add_argument("--s3-calls", type=int, default=None)
    ap.add_argument(
        "--only",
        default="",
        help="time only the pages whose name contains this (or one of these, comma-separated)",
    )
    ap.add_argument("--s3-only", action="store_true", help="skip the local log (implies --s3)")
    ap.add_argument(
        "--s3-uri",
        help="an S3 log made before (s3://bucket/log; AWS_* from the environment): not generated, kept",
    )
    a = ap.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    tmp = None
    log_dir = a.log_dir
    if a.s3_only or a.s3_uri:
        a.s3 = True
    else:
        if log_dir is None or not os.path.exists(os.path.join(log_dir, "store.json")):
            log_dir = log_dir or (tmp := tempfile.mkdtemp(prefix="st-reviewbench-"))
            g = generate(log_dir, a.calls)
            print(f"generated {g['calls']:,} calls and {g['events']:,} events in {g['generate_s']} s")
        with LogStore.open(log_dir) as s:
            n = s.count()
        size = disk_use(log_dir)
        print(f"local log: {n:,} calls, {size / 1e6:,.0f} MB on disk ({size / n:.0f} B/call)")
        shutil.rmtree(os.path.join(log_dir, "review"), ignore_errors=True)  # cold: no kept numbers
        with serve(log_dir) as url:  # a new deployment: nothing kept; its warm-up computes the dashboards
            took = wait_warm(url, timeout=1800, field="review_dashboards_s")
            print(
                f"  a new deployment: its warm-up (stores, facets, sample pool, 24h and 7d dashboards) took {took} s"
            )
            time_pages(url, {k: v for k, v in pages(log_dir).items() if _picked(a.only, k)}, a.repeat)
        with serve(log_dir) as url:
            time_pages(url, restarted(a.only), a.repeat)
        with serve(log_dir) as url:
            restarted_warm(url, a.only, a.repeat)
    if a.s3_uri:
        s3_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        with serve(a.s3_uri, s3_env) as url:
            wait_warm(url, timeout=1800, field="review_dashboards_s")
            time_pages(url, {k: v for k, v in pages(a.s3_uri).items() if _picked(a.only, k)}, a.repeat)
        with serve(a.s3_uri, s3_env) as url:
            time_pages(url, restarted(a.only), a.repeat)
        with serve(a.s3_uri, s3_env) as url:
            restarted_warm(url, a.only, a.repeat)
    elif a.s3:
        from tests.support.s3 import MotoServer

        moto = MotoServer().start()
        try:
            os.environ.update(moto.env)
            uri = f"s3://{moto.create_bucket('review-bench')}/log"
            g = generate(uri, a.s3_calls or a.calls)
            print(f"s3 log: generated {g['calls']:,} calls in {g['generate_s']} s")
            with serve(uri, moto.env) as url:
                wait_warm(url, timeout=1800, field="review_dashboards_s")
                time_pages(url, {k: v for k, v in pages(uri).items() if _picked(a.only, k)}, a.repeat)
            with serve(uri, moto.env) as url:
                time_pages(url, restarted(a.only), a.repeat)
            with serve(uri, moto.env) as url:
                restarted_warm(url, a.only, a.repeat)
        finally:
            moto.stop()
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
