"""Request-worker and log-agent RSS over a long run: ``shadowtune serve`` (call log on) under wrk.

``python bench/log_rss_bench.py --calls 1000000``: the shared bench's fake upstream (nginx,
constant bodies: ../shared/bench/upstream), ``shadowtune serve --workers N`` with the call
log on, then wrk rounds (``--round-s`` seconds at ``--conns`` connections, JSON and SSE
alternating) until ``--calls`` calls were answered. After each round the RSS of every
request worker and of the log agent (``/proc/<pid>/status`` VmRSS) is printed; the summary
gives first / last / max per process, the calls in the log at the end, and the load average.
Every process is started here and stopped by its own pid (process group). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
SHARED = (
    Path(
        os.environ.get("SHADOWTUNE_SHARED")
        or next((p for p in (HERE.parent.parent / "shared", Path("/work/shared")) if p.is_dir()), "shared")
    )
    / "bench"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--round-s", type=int, default=20)
    ap.add_argument(
        "--max-s", type=float, default=0, help="stop after this long even short of --calls (0: never)"
    )
    ap.add_argument(
        "--compact-interval",
        type=float,
        default=600.0,
        help="store.compact_interval (s): compaction within a short run",
    )
    ap.add_argument(
        "--detect-interval",
        type=float,
        default=30.0,
        help="signals.detect_interval_s (0: regeneration detection off)",
    )
    ap.add_argument("--json-out")
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="st-rssbench-", dir=os.environ.get("BENCH_DIR")))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port = free_port()
        sys.path.insert(0, str(SHARED / "upstream"))
        import gen_nginx_conf

        gen_nginx_conf.main(["--port", str(up_port), "--prefix", str(run / "nginx")])
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = str(run / "nginx" / "nginx.conf")
        procs.append(
            subprocess.Popen(
                [nginx, "-p", str(run / "nginx"), "-c", conf, "-e", str(run / "nginx" / "error.log")],
                start_new_session=True,
            )
        )
        wait(f"http://127.0.0.1:{up_port}/health")
        port = free_port()
        cfg = run / "shadowtune.yaml"
        cfg.write_text(
            f"""server: {{host: 127.0.0.1, port: {port}, auth: open, workers: {args.workers}}}
store: {{log_dir: "{run}/log", compact_interval: {args.compact_interval}}}
telemetry: {{prometheus: true}}
signals: {{detect_interval_s: {args.detect_interval}}}
upstreams:
  bench-model: {{base_url: "http://127.0.0.1:{up_port}/v1", retries: 0}}
  bench-model-stream: {{base_url: "http://127.0.0.1:{up_port}/stream/v1", retries: 0}}
routes:
  bench-model: {{baseline: bench-model}}
  bench-model-stream: {{baseline: bench-model-stream}}
"""
        )
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--log-level", "warning"],
            start_new_session=True,
        )
        procs.append(gw)
        url = f"http://127.0.0.1:{port}"
        wait(url + "/healthz")
        deadline = time.monotonic() + 60
        while (r := httpx.get(url + "/admin/status", timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, "no log agent"
            time.sleep(0.2)
        agent = int(r.json()["store"]["agent_pid"])
        workers = [p for p in children(gw.pid) if p != agent]
        print(f"gateway pid {gw.pid}: workers {workers}, agent {agent}; run dir {run}", flush=True)
        time.sleep(2)
        samples: list[dict[str, float]] = [{"calls": 0, "agent_mib": rss_mib(agent)}]  # at start, idle
        for i, w in enumerate(workers):
            samples[0][f"worker{i}_mib"] = rss_mib(w)
        print(
            "at start: " + ", ".join(f"{k} {v:.0f}" for k, v in samples[0].items() if k != "calls"),
            flush=True,
        )
        cpu0 = {p: cpu_s(p) for p in (*workers, agent)}
        total = 0
        mode = 0
        t_start = time.monotonic()
        while total < args.calls and not (args.max_s and time.monotonic() - t_start > args.max_s):
            model = ("bench-model", "bench-model-stream")[mode % 2]
            env = dict(os.environ, BENCH_MODEL=model, BENCH_STREAM=str(mode % 2))
            out = subprocess.run(
                ["wrk", "-t1", f"-c{args.conns}", f"-d{args.round_s}s", "-s", str(SHARED / "wrk" / "chat.lua"),
                 url + "/v1/chat/completions"],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            result = json.loads(out.stdout.split("BENCH_RESULT", 1)[1].strip().splitlines()[0])
            total += int(result["requests"])
            mode += 1
            sample = {"calls": total, "agent_mib": rss_mib(agent)}
            for i, w in enumerate(workers):
                sample[f"worker{i}_mib"] = rss_mib(w)
            samples.append(sample)
            print(
                f"{total:>9,} calls ({model}, {result['rps']:.0f} req/s): "
                + ", ".join(f"{k} {v:.0f}" for k, v in sample.items() if k != "calls"),
                flush=True,
            )
        elapsed = time.monotonic() - t_start
        cpu_ms = {
            ("agent" if p == agent else f"worker{workers.index(p)}"): round((cpu_s(p) - c) / total * 1000, 3)
            for p, c in cpu0.items()
        }
        time.sleep(3)
        with httpx.Client(timeout=60) as c:
            c.post(url + "/admin/flush")
            logged = c.get(url + "/admin/status").json()["store"]["flushed_rows"]
        load = os.getloadavg()
        summary = {
            "calls": total,
            "seconds": round(elapsed),
            "logged_rows": logged,
            "loadavg": [round(x, 2) for x in load],
            "cpu_ms_per_call": cpu_ms,
            "samples": samples,
        }
        for key in samples[0]:
            if key == "calls":
                continue
            vals = [s[key] for s in samples]
            summary[key] = {"first": round(vals[0]), "last": round(vals[-1]), "max": round(max(vals))}
            print(f"{key}: first {vals[0]:.0f} MiB, last {vals[-1]:.0f} MiB, max {max(vals):.0f} MiB")
        print(f"CPU ms per call: {cpu_ms}")
        print(f"{total:,} calls in {elapsed:.0f} s; agent flushed {logged:,} rows; load average {load}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(summary, indent=1))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
