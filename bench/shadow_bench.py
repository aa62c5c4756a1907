"""Shadow benchmark: what does mirroring every request to the candidate cost the user?

Starts a fake OpenAI-compatible upstream (its own process, fixed delay per answer) and
``shadowtune serve`` (one worker) in front of it, on loopback only, then drives the same
closed-loop load through the gateway with the route in ``off`` mode and in ``shadow``
mode at a 100 % sample rate, alternating the two in rounds. It prints the user-path
p50/p99 of each and their ratio (target: shadow p99 within 10 % of off), then runs the
load once more with a candidate slower than the baseline and prints how many shadow
calls were skipped, by reason.

    python bench/shadow_bench.py                    # about 40 s
    python bench/shadow_bench.py --duration 3 --rounds 1 --concurrency 32

A benchmark, not a test: it measures and prints, it asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_upstream() -> None:
    """Child-process entry: the fake upstream on 127.0.0.1; prints its port, runs until killed."""
    from tests.support.fake_upstream import FakeUpstream

    up = FakeUpstream().start()
    print(up.port, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    up.stop()


def _wait_for(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {timeout:.0f}s")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="shadow-bench-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway = ""

    # -- processes ----------------------------------------------------------------------
    def start(self) -> None:
        import yaml

        up = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_upstream"],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.procs.append(up)
        assert up.stdout is not None
        port = int(up.stdout.readline())
        base_url = f"http://127.0.0.1:{port}/v1"
        a = self.args
        config = {
            "server": {"auth": "open", "workers": 1},
            "upstreams": {
                "base": {"base_url": base_url, "model": f"slow-{a.delay}", "retries": 0},
                "cand": {"base_url": base_url, "model": f"slow-{a.delay}", "retries": 0},
                "cand_slow": {"base_url": base_url, "model": f"slow-{a.slow_delay}", "retries": 0},
            },
            "routes": {"bot": {"baseline": "base", "candidate": "cand", "mode": "off"}},
            "store": {"log_dir": os.path.join(self.tmp, "log")},
            "shadow": {"max_in_flight": a.max_in_flight, "queue_size": a.queue_size},
        }
        path = os.path.join(self.tmp, "shadowtune.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        gw_port = _free_port()
        self.gateway = f"http://127.0.0.1:{gw_port}"
        gw = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                path,
                "--port",
                str(gw_port),
                "--workers",
                "1",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(gw)
        _wait_for(self.gateway + "/healthz")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- admin --------------------------------------------------------------------------
    def route(self, **changes: Any) -> None:
        import httpx

        r = httpx.patch(
            self.gateway + "/admin/routes/bot", json={**changes, "reason": "shadow bench"}, timeout=10
        )
        r.raise_for_status()

    def shadow_status(self) -> dict[str, Any]:
        import httpx

        status: dict[str, Any] = httpx.get(self.gateway + "/admin/status", timeout=10).json()["shadow"]
        return status

    def wait_shadow_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.shadow_status()
            if s["in_flight"] == 0 and s["queued"] == 0:
                return
            time.sleep(0.1)

    # -- load ---------------------------------------------------------------------------
    async def _load(self, duration: float) -> tuple[list[float], int]:
        import aiohttp

        latencies: list[float] = []
        failures = 0
        url = self.gateway + "/v1/chat/completions"
        stop_at = time.perf_counter() + duration

        async def user(session: aiohttp.ClientSession, n: int) -> None:
            nonlocal failures
            i = 0
            while time.perf_counter() < stop_at:
                body = {
                    "model": "bot",
                    "messages": [{"role": "user", "content": f"question {n}-{i}"}],
                    "user": f"u{n}",
                }
                t0 = time.perf_counter()
                async with session.post(url, json=body) as resp:
                    await resp.read()
                    if resp.status == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        failures += 1
                i += 1

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(user(session, n) for n in range(self.args.concurrency)))
        return latencies, failures

    def load(self, duration: float) -> tuple[list[float], int]:
        return asyncio.run(self._load(duration))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _skipped(status: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in status["skipped"]:
        out[s["reason"]] = out.get(s["reason"], 0) + s["count"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per phase and round")
    p.add_argument("--rounds", type=int, default=2, help="off/shadow rounds, alternated")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent closed-loop users")
    p.add_argument(
        "--delay", type=float, default=0.05, help="upstream answer delay (s), baseline and candidate"
    )
    p.add_argument(
        "--slow-delay", type=float, default=0.25, help="slow candidate's delay (s), for the skip phase"
    )
    p.add_argument("--max-in-flight", type=int, default=16, help="shadow.max_in_flight")
    p.add_argument("--queue-size", type=int, default=32, help="shadow.queue_size")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    args = p.parse_args()

    bench = Bench(args)
    try:
        bench.start()
        bench.load(args.warmup)
        results: dict[str, list[float]] = {"off": [], "shadow": []}
        counts = {"off": 0, "shadow": 0}
        failures = {"off": 0, "shadow": 0}
        for _ in range(args.rounds):
            for mode in ("off", "shadow"):
                bench.wait_shadow_idle()
                bench.route(mode=mode, candidate="cand", shadow_rate=1.0)
                lat, failed = bench.load(args.duration)
                results[mode] += lat
                counts[mode] += len(lat)
                failures[mode] += failed
        shadow_started = bench.shadow_status()["started"]

        bench.wait_shadow_idle()
        before = _skipped(bench.shadow_status())
        bench.route(mode="shadow", candidate="cand_slow", shadow_rate=1.0)
        slow_lat, slow_failed = bench.load(args.duration)
        after_status = bench.shadow_status()
        after = _skipped(after_status)
        skipped = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
    finally:
        bench.stop()

    total = args.duration * args.rounds
    print(
        f"\nshadow bench: {args.concurrency} users, upstream delay {args.delay * 1000:.0f} ms, "
        f"{args.rounds} round(s) x {args.duration:g} s per mode, one worker, loopback"
    )
    print(f"{'mode':<22}{'requests':>10}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'failed':>8}")
    rows = [
        ("off", results["off"], failures["off"], total),
        ("shadow 100%", results["shadow"], failures["shadow"], total),
    ]
    rows.append(("shadow, slow candidate", slow_lat, slow_failed, args.duration))
    for name, lat, failed, secs in rows:
        print(
            f"{name:<22}{len(lat):>10}{len(lat) / secs:>9.0f}"
            f"{_pct(lat, 0.5):>10.2f}{_pct(lat, 0.99):>10.2f}{failed:>8}"
        )
    p50 = _pct(results["shadow"], 0.5) / _pct(results["off"], 0.5)
    p99 = _pct(results["shadow"], 0.99) / _pct(results["off"], 0.99)
    print(f"\nshadow / off:  p50 x{p50:.3f}   p99 x{p99:.3f}   (target: p99 within 10 %, x1.100)")
    print(f"shadow calls started in the 100 % phase: {shadow_started} (of {counts['shadow']} served)")
    print(
        f"slow candidate ({args.slow_delay * 1000:.0f} ms vs {args.delay * 1000:.0f} ms, max_in_flight "
        f"{args.max_in_flight}, queue {args.queue_size}): shadow calls skipped "
        + (", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none")
        + f" of {len(slow_lat)} requests"
    )
    if statistics.mean(results["off"] or [0]) == 0:
        print("warning: no successful requests in the off phase", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_upstream"]:
        _serve_upstream()
    else:
        main()
