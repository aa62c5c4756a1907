"""Fuzz run: 100k hostile requests against ``shadowtune serve``, counted by endpoint and status.

Starts the fake OpenAI-compatible upstream (``tests/support/fake_upstream.py``, its own
process) and ``shadowtune serve`` in front of it (a route in shadow mode, zero-config
passthrough, a provider key in the environment), on loopback only. Then N connections
send seeded random requests over raw HTTP/1.1: bodies that are valid, invalid, truncated,
nested 10k deep, not UTF-8, with lone surrogates; hostile headers (bad ``Host``, the
caller's secret key, latin-1 bytes); malformed framing (double or wrong ``Content-Length``,
broken chunks, garbage request lines); on the hot path, feedback, admin, review, models,
responses, the probes. It prints the count of answers by status for each endpoint, then
checks that no answer was a 5xx, that the gateway is still up, that every answered
hot-path call is in the log, and that no secret reached an answer or the log.

    python bench/fuzz.py                    # 100k requests, a few minutes
    python bench/fuzz.py --requests 5000 --connections 8

A benchmark-style run, not a test: exits 1 if any check above fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROVIDER_KEY = "sk-fuzz-provider-SECRET-5b2e0c1d9a"
CALLER_KEY = "sk-fuzz-caller-SECRET-77f1e3aa04"
SECRETS = (PROVIDER_KEY.encode(), CALLER_KEY.encode())
UPSTREAM = (
    "import sys, time; sys.path.insert(0, {root!r}); from tests.support.fake_upstream import FakeUpstream;"
    "up = FakeUpstream().start(); print(up.port, flush=True); time.sleep(1e9)"
)
# endpoint -> weight (share of the requests)
MIX = {  # the review pages query the log with DuckDB on each request: a small share
    "chat": 68,
    "embeddings": 20,
    "feedback": 28,
    "admin": 16,
    "review": 1,
    "review-post": 3,
    "models": 16,
    "responses": 12,
    "probes": 8,
    "raw-http": 24,
}


# -- random input ------------------------------------------------------------------------------
class Gen:
    """Seeded generator of hostile requests: (endpoint, raw request bytes, method)."""

    TEXTS = ("", "hi", "a" * 300, "\x00", "é", "😀" * 5, "\u202e", "<script>", "' OR 1=1 --", "\r\n", "%ff")

    def __init__(self, seed: int, port: int, call_id: str) -> None:
        self.rng = random.Random(seed)
        self.host = f"127.0.0.1:{port}".encode()
        self.call_id = call_id

    def text(self) -> str:
        r = self.rng
        if r.random() < 0.5:
            return r.choice(self.TEXTS)
        return "".join(
            chr(r.choice([r.randint(32, 126), r.randint(0, 0x10FFFF)])) for _ in range(r.randint(0, 20))
        )

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randint(0, 9 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.choice([0, -1, 1, 2**63, -(2**63) - 1, 2**70, r.randint(-1000, 1000)])
        if kind == 3:
            return r.choice([0.5, -1e308, 1e-320, r.uniform(-10, 10)])
        if kind in (4, 5):
            return self.text()
        if kind in (6, 7):
            return [self.value(depth + 1) for _ in range(r.randint(0, 3))]
        return {self.text()[:10]: self.value(depth + 1) for _ in range(r.randint(0, 3))}

    def encode(self, obj: Any) -> bytes:
        """JSON, or mangled JSON, or not JSON at all."""
        r = self.rng
        body = json.dumps(obj, ensure_ascii=r.random() < 0.5).encode("utf-8", "surrogatepass")
        roll = r.random()
        if roll < 0.70:
            return body
        if roll < 0.76:
            return body[: r.randint(0, len(body))]
        if roll < 0.82:
            return body.replace(b'"', b'"\\ud800', 1)
        if roll < 0.86:
            n = r.choice([1100, 10_000])
            return b'{"model": "R", "messages": ' + b"[" * n + b"]" * n + b"}"
        if roll < 0.90:
            return b"\xff\xfe" + body
        if roll < 0.94:
            return body.replace(b"}", b", NaN}", 1) if b"}" in body else b"NaN"
        return bytes(r.randint(0, 255) for _ in range(r.randint(0, 64)))

    def headers(self) -> list[bytes]:
        r = self.rng
        out = [
            b"Host: "
            + (self.host if r.random() < 0.93 else r.choice([b"evil.example", b"localhost", b"[::1]"]))
        ]
        if r.random() < 0.5:
            out.append(b"Content-Type: " + r.choice([b"application/json", b"text/plain", b"x/y", b""]))
        if r.random() < 0.2:
            out.append(
                b"Authorization: " + r.choice([b"Bearer " + CALLER_KEY.encode(), b"Bearer x", b"Basic Og=="])
            )
        if r.random() < 0.3:
            name = r.choice(
                [b"X-Shadowtune-Session", b"X-Shadowtune-Tags", b"Traceparent", b"Origin", b"X-Fz"]
            )
            out.append(
                name
                + b": "
                + bytes(r.choice([r.randint(0x21, 0x7E), r.randint(0xA0, 0xFF)]) for _ in range(8))
            )
        return out

    def request(
        self, method: bytes, path: bytes, body: bytes | None = None, extra: list[bytes] = ()
    ) -> bytes:
        head = [method + b" " + path + b" HTTP/1.1", *self.headers(), *extra]
        if body is not None:
            head.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")

    # one request per endpoint family
    def chat(self) -> bytes:
        r = self.rng
        messages: Any = [
            {
                "role": r.choice(["user", "system", "assistant", self.text()]),
                "content": r.choice([self.text(), self.value()]),
            }
            for _ in range(r.randint(0, 3))
        ]
        if r.random() < 0.1:
            messages = self.value()
        body: dict[str, Any] = {
            "model": r.choice(["R", "R", "fz-passthrough", "", 5, None]),
            "messages": messages,
        }
        if r.random() < 0.3:
            body["stream"] = r.choice([True, False, "yes", 1])
        if r.random() < 0.2:
            body["n"] = r.choice([1, 2, 0, -1, "2", True])
        if r.random() < 0.3:
            body[r.choice(["user", "metadata", "temperature", "seed", self.text()[:8] or "k"])] = self.value()
        return self.request(b"POST", b"/v1/chat/completions", self.encode(body))

    def embeddings(self) -> bytes:
        body = {
            "model": self.rng.choice(["R", "fz-emb", 1]),
            "input": self.rng.choice([self.text(), [self.text()], self.value()]),
        }
        return self.request(b"POST", b"/v1/embeddings", self.encode(body))

    def feedback(self) -> bytes:
        r = self.rng
        body = {
            "call_id": r.choice([self.call_id, "call_x", self.text(), 5]),
            "kind": r.choice(["thumbs", "rating", "choice", "flag", "relabel", self.text()]),
            "value": r.choice(["up", "down", 3, 9, "a", self.value()]),
        }
        if r.random() < 0.4:
            body[r.choice(["comment", "user", "data", "extra"])] = self.value()
        return self.request(b"POST", b"/v1/feedback", self.encode(body))

    def admin(self) -> bytes:
        r = self.rng
        if r.random() < 0.5:
            limit = str(r.choice([1, 100, 10_000, 10_001, 0, -1, 10**25, "x"])).encode()
            return self.request(b"GET", b"/admin/history?limit=" + limit)
        change = {
            r.choice(
                ["mode", "share", "shadow_rate", "candidate", "sticky_key", "reason", "nope"]
            ): self.value()
        }
        if r.random() < 0.3:
            change = {"mode": r.choice(["off", "shadow"]), "reason": "fuzz"}
        route = r.choice([b"R", b"missing", b"%00", b"x" * 200])
        return self.request(r.choice([b"PATCH", b"PUT"]), b"/admin/routes/" + route, self.encode(change))

    def review(self) -> bytes:
        r = self.rng
        page = str(r.choice([1, 2, 10**22, -5, "x", 1_000_001])).encode()
        path = r.choice(
            [
                b"/review/calls?page=" + page,
                b"/review?period=" + page,
                b"/review/calls/" + self.call_id.encode(),
            ]
        )
        return self.request(b"GET", path)

    def review_post(self) -> bytes:
        r = self.rng
        form = "&".join(
            f"{k}={self.text()[:20]}" for k in r.sample(["answer", "value", "csrf", "x"], r.randint(0, 3))
        )
        action = r.choice([b"relabel", b"exclude", b"thumbs"])
        return self.request(
            b"POST",
            b"/review/calls/" + self.call_id.encode() + b"/" + action,
            form.encode("utf-8", "surrogatepass"),
            [b"Content-Type: application/x-www-form-urlencoded"],
        )

    def models(self) -> bytes:
        model = self.rng.choice([b"", b"/R", b"/fz", b"/%ff", b"/" + b"a" * 300])
        return self.request(b"GET", b"/v1/models" + model)

    def responses(self) -> bytes:
        r = self.rng
        if r.random() < 0.3:  # a stored response: retrieve, delete, input items, cancel, hostile ids
            rid = r.choice(
                [b"resp_1", b"%00", b"x" * 300, self.text().encode("utf-8", "surrogatepass").hex().encode()]
            )
            suffix = r.choice([b"", b"/input_items", b"/cancel", b"/x"])
            query = r.choice(
                [b"", b"?limit=" + str(r.choice([0, 5, 10**22])).encode(), b"?order=%ff", b"?stream=true"]
            )
            method = r.choice([b"GET", b"DELETE", b"POST", b"PUT"])
            return self.request(method, b"/v1/responses/" + rid + suffix + query)
        path = r.choice([b"/v1/responses", b"/v1/completions"])
        return self.request(b"POST", path, self.encode({"model": "R", "input": self.value()}))

    def probes(self) -> bytes:
        return self.request(
            self.rng.choice([b"GET", b"HEAD"]), self.rng.choice([b"/healthz", b"/readyz", b"/metrics"])
        )

    def raw_http(self) -> bytes:
        r = self.rng
        h = b"Host: " + self.host
        return r.choice(
            [
                b"POST /v1/chat/completions HTTP/1.1\r\n"
                + h
                + b"\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                b"POST /v1/feedback HTTP/1.1\r\n" + h + b"\r\nContent-Length: x\r\n\r\n{}",
                b"POST /v1/chat/completions HTTP/1.1\r\n" + h + b"\r\nContent-Length: 10000000000\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\n"
                + h
                + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"GET /healthz HTTP/1.1\r\n" + h + b"\r\nX-Bad\xff: 1\r\n\r\n",
                b"GET /he\x80lthz HTTP/1.1\r\n" + h + b"\r\n\r\n",
                b"GET /healthz HTTP/9.9\r\n" + h + b"\r\n\r\n",
                bytes(r.randint(0, 255) for _ in range(r.randint(1, 40))) + b"\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\n" + h + b"\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
            ]
        )

    def next(self) -> tuple[str, bytes]:
        endpoint = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        return endpoint, getattr(self, endpoint.replace("-", "_"))()


# -- a raw HTTP/1.1 client ---------------------------------------------------------------------
async def read_answer(reader: asyncio.StreamReader, head_only: bool) -> tuple[int, dict[bytes, bytes], bytes]:
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if head_only:
        return status, headers, b""
    if headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size + 2))
        return status, headers, b"".join(p[:-2] for p in parts)
    if b"content-length" in headers:
        return status, headers, await reader.readexactly(int(headers[b"content-length"]))
    return status, headers, await reader.read()


class Tally:
    def __init__(self) -> None:
        self.by_endpoint: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self.hot_calls: set[str] = set()
        self.problems: list[str] = []
        self.sent = 0
        self.seconds: dict[str, list[float]] = collections.defaultdict(list)  # review path kind -> latencies

    def add(self, endpoint: str, status: int, headers: dict[bytes, bytes], body: bytes, sent: bytes) -> None:
        self.by_endpoint[endpoint][status] += 1
        if status >= 500 and len(self.problems) < 20:
            self.problems.append(f"{endpoint} {status}: {sent[:120]!r} -> {body[:200]!r}")
        if status >= 400 and body and not sent.startswith(b"HEAD"):
            try:
                err = json.loads(body)["error"]
                assert set(err) == {"message", "type", "param", "code"}
            except Exception:
                if len(self.problems) < 20:
                    self.problems.append(f"{endpoint} {status} not in OpenAI's shape: {body[:200]!r}")
        for secret in SECRETS:
            if secret in body or secret in b"".join(headers.values()):
                self.problems.append(f"{endpoint}: a secret in the answer to {sent[:80]!r}")
        call_id = headers.get(b"x-request-id", b"")
        if endpoint in ("chat", "embeddings") and call_id.startswith(b"call_"):
            self.hot_calls.add(call_id.decode())


async def worker(port: int, gen: Gen, count: int, tally: Tally) -> None:
    reader = writer = None
    for _ in range(count):
        endpoint, data = gen.next()
        t0 = time.monotonic()
        for attempt in range(2):
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(data)
                await writer.drain()
                status, headers, body = await asyncio.wait_for(
                    read_answer(reader, data.startswith(b"HEAD")), 60
                )
                break
            except TimeoutError:  # no answer within a minute: a hang, reported
                tally.problems.append(f"{endpoint}: no answer within 60 s to {data[:200]!r}")
                writer.close()
                reader = writer = None
                status, headers, body = 0, {}, b""
                break
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                writer.close()
                reader = writer = None
                if attempt == 1:  # closed without an answer twice: count it as 0
                    status, headers, body = 0, {}, b""
        tally.add(endpoint, status, headers, body, data)
        if endpoint == "review":
            tally.seconds[_review_kind(data)].append(time.monotonic() - t0)
        tally.sent += 1
        if tally.sent % 10_000 == 0:
            print(f"  {tally.sent} requests", file=sys.stderr, flush=True)
        if headers.get(b"connection", b"").lower() == b"close" and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


# -- the run -----------------------------------------------------------------------------------
def _review_kind(data: bytes) -> str:
    path = data.split(b" ", 2)[1]
    if path.startswith(b"/review/calls/"):
        return "call page"
    return "call list" if path.startswith(b"/review/calls") else "dashboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the gateway did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    ap.add_argument(
        "--keep", action="store_true", help="keep the log directory (printed) for a look afterwards"
    )
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    tmp = tempfile.mkdtemp(prefix="shadowtune-fuzz-")
    env = {
        **os.environ,
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "FUZZ_KEY": PROVIDER_KEY,
    }
    upstream = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM.format(root=ROOT)],
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert upstream.stdout is not None
    up_port = int(upstream.stdout.readline())
    base = f"http://127.0.0.1:{up_port}/v1"
    config = os.path.join(tmp, "config.yaml")  # JSON is YAML
    port = free_port()
    with open(config, "w") as f:
        json.dump(
            {
                "server": {
                    "auth": "open",
                    "passthrough_url": base,
                    "upstream_key_env": "FUZZ_KEY",
                    "max_body_bytes": 1 << 20,
                    "body_timeout_s": 5,
                    "header_timeout_s": 5,
                },
                "upstreams": {
                    "base": {"base_url": base, "model": "echo-base", "api_key_env": "FUZZ_KEY"},
                    "cand": {"base_url": base, "model": "echo-cand", "api_key_env": "FUZZ_KEY"},
                },
                "routes": {"R": {"baseline": "base", "candidate": "cand", "mode": "shadow"}},
                "store": {"log_dir": os.path.join(tmp, "log")},
            },
            f,
        )
    gateway_log = open(os.path.join(tmp, "gateway.log"), "wb")  # noqa: SIM115 (a pipe nobody reads fills up)
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "-c",
            config,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--log-level",
            "error",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=gateway_log,
        start_new_session=True,
    )
    try:
        wait_http(port)
        import urllib.request

        seed_call = urllib.request.urlopen(
            urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=b'{"model": "R", "messages": [{"role": "user", "content": "seed"}]}',
                headers={"content-type": "application/json"},
            )
        ).headers["x-request-id"]
        tally = Tally()
        per = args.requests // args.connections
        started = time.monotonic()

        async def run() -> None:
            await asyncio.gather(
                *(
                    worker(port, Gen(args.seed * 1000 + i, port, seed_call), per, tally)
                    for i in range(args.connections)
                )
            )

        asyncio.run(run())
        elapsed = time.monotonic() - started
        alive = (
            gateway.poll() is None
            and urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").status == 200
        )
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/admin/flush", method="POST")
        ).read()
        sent = sum(sum(c.values()) for c in tally.by_endpoint.values())
        print(
            f"{sent} requests in {elapsed:.0f} s ({sent / elapsed:.0f}/s), {args.connections} connections, seed {args.seed}"
        )
        statuses = sorted({s for c in tally.by_endpoint.values() for s in c})
        print("| endpoint | " + " | ".join(str(s) for s in statuses) + " | total |")
        print("| --- | " + " | ".join("---:" for _ in statuses) + " | ---: |")
        for endpoint in MIX:
            c = tally.by_endpoint[endpoint]
            print(
                f"| {endpoint} | "
                + " | ".join(str(c.get(s, 0)) for s in statuses)
                + f" | {sum(c.values())} |"
            )
        fivexx = sum(n for c in tally.by_endpoint.values() for s, n in c.items() if s >= 500 or s == 0)
        missing, secrets_logged = check_log(os.path.join(tmp, "log"), tally.hot_calls)
        print(f"5xx or no answer: {fivexx}; gateway alive: {alive}")
        print(
            f"hot-path calls answered: {len(tally.hot_calls)}; not in the log: {missing}; secrets in the log: {secrets_logged}"
        )
        for kind, seconds in sorted(tally.seconds.items()):
            seconds.sort()
            print(
                f"review {kind}: {len(seconds)} answered in p50 {seconds[len(seconds) // 2]:.2f} s, "
                f"p90 {seconds[int(len(seconds) * 0.9)]:.2f} s, max {seconds[-1]:.2f} s"
            )
        for p in tally.problems:
            print("  problem:", p)
        ok = fivexx == 0 and alive and missing == 0 and secrets_logged == 0 and not tally.problems
        with open(os.path.join(tmp, "gateway.log"), "rb") as f:
            errors = f.read().count(b"Traceback")
        print(f"tracebacks in the gateway's log: {errors}")
        ok = ok and errors == 0
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        for proc in (gateway, upstream):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def check_log(log_dir: str, answered: set[str]) -> tuple[int, int]:
    sys.path.insert(0, ROOT)
    from gateway.store import LogStore

    deadline = time.monotonic() + 30
    while True:
        with LogStore.open(log_dir) as store:
            ids = {r["call_id"] for r in store.sql("SELECT call_id FROM calls")}
            missing = len(answered - ids)
            if missing == 0 or time.monotonic() > deadline:
                leaked = 0
                for secret in (PROVIDER_KEY, CALLER_KEY):
                    for table in ("calls", "events"):
                        cols = [c["column_name"] for c in store.sql(f"DESCRIBE {table}")]
                        cond = " OR ".join(f"CAST({c} AS VARCHAR) LIKE ?" for c in cols)
                        leaked += store.sql(
                            f"SELECT count(*) AS n FROM {table} WHERE {cond}", [f"%{secret}%"] * len(cols)
                        )[0]["n"]
                return missing, leaked
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
