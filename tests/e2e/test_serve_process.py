"""``shadowtune serve`` as a real process: kill -9 under load loses no answered call, a restart
replays the WAL exactly once, and ``--workers 2`` gives each worker its own log files."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.store import LogStore
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.slow


def serve(fake_upstream, log_dir: str, *extra: str) -> ServeProcess:
    args = [
        "--upstream",
        fake_upstream.base_url,
        "--log-dir",
        log_dir,
        "--open",
        "--log-level",
        "warning",
        *extra,
    ]
    return ServeProcess(args, env={"SHADOWTUNE_STORE__FLUSH_INTERVAL": "0.2"})


def logged_ids(log_dir: str) -> list[str]:
    with LogStore.open(log_dir) as store:
        return [r["call_id"] for r in store.sql("SELECT call_id FROM calls")]


class Load:
    """A few threads calling the gateway in a loop, keeping the ids of answers fully received."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.received: list[str] = []
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, worker: int) -> None:
        n = 0
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                n += 1
                stream = n % 2 == 0
                body = {
                    "model": "echo",
                    "messages": [{"role": "user", "content": f"{worker}-{n}"}],
                    "stream": stream,
                }
                try:
                    with client.stream("POST", self.url + "/v1/chat/completions", json=body) as resp:
                        text = resp.read().decode()
                        complete = resp.status_code == 200 and (not stream or "[DONE]" in text)
                        if complete:
                            self.received.append(resp.headers["x-request-id"])
                except httpx.HTTPError:
                    self.errors += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_under_load_loses_no_answered_call_and_a_restart_logs_each_once(
    fake_upstream, log_dir, workers
):
    proc = serve(fake_upstream, log_dir, "--workers", str(workers)).start()
    try:
        with Load(proc.url) as load:
            load.wait_for(150)
            proc.kill9()
            time.sleep(0.2)  # let the clients see the dead connections
        received = list(load.received)
    finally:
        proc.stop()
    assert len(received) >= 150
    assert len(set(received)) == len(received)
    assert list(Path(log_dir, "wal").glob("*.wal.ndjson"))  # the kill left an unflushed tail

    restarted = serve(fake_upstream, log_dir).start()
    try:
        resp = httpx.post(
            restarted.url + "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "after"}]},
            timeout=10,
        )
        assert resp.status_code == 200
        ids = logged_ids(log_dir)
    finally:
        restarted.stop()
    assert len(ids) == len(set(ids)), "a call was logged twice"
    missing = set(received) - set(ids)
    assert not missing, f"{len(missing)} answered call(s) missing from the log"
    assert resp.headers["x-request-id"] in ids

    final = logged_ids(log_dir)  # after a clean stop: all in Parquet, still once each
    assert sorted(final) == sorted(ids)
    assert not [p for p in Path(log_dir, "wal").glob("*.wal.ndjson") if p.stat().st_size]


def test_each_worker_writes_its_own_files_and_every_call_is_logged_once(fake_upstream, log_dir):
    proc = serve(fake_upstream, log_dir, "--workers", "2").start()
    try:
        wal = Path(log_dir, "wal")

        def request_writers() -> set[str]:
            return {
                p.name[: -len(".lock")]
                for p in wal.glob("*.lock")
                # the log agent's own writer and its conversion lock are not request workers
                if not p.name.startswith("compact") and not p.name.endswith(("-agent.lock", "agent.lock"))
            }

        deadline = time.monotonic() + 30
        while len(request_writers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        writers = request_writers()
        assert len(writers) == 2
        assert {p.name.split(".")[0] for p in wal.glob("*.wal.ndjson")} <= writers
        assert len({w.split("-")[1] for w in writers}) == 2  # two processes (pid in the writer id)

        ids = []
        with httpx.Client(timeout=10) as client:
            for i in range(40):
                resp = client.post(
                    proc.url + "/v1/chat/completions",
                    json={"model": "echo", "messages": [{"role": "user", "content": str(i)}]},
                    headers={"Connection": "close"},  # new connections: both workers get a share
                )
                assert resp.status_code == 200
                ids.append(resp.headers["x-request-id"])
        assert sorted(logged_ids(log_dir)) == sorted(ids)  # readable while both workers run
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0
    final = logged_ids(log_dir)
    assert sorted(final) == sorted(ids)
    stems = {p.stem.split(".")[0] for p in Path(log_dir, "calls").rglob("*.parquet")}
    assert stems <= writers
    assert not list(Path(log_dir, "wal").glob("*.wal.ndjson"))


def test_zero_config_serve_answers_with_the_openai_sdk(fake_upstream, log_dir):
    import openai

    proc = serve(fake_upstream, log_dir).start()
    try:
        with openai.OpenAI(base_url=proc.url + "/v1", api_key="sk-test", max_retries=0, timeout=10) as client:
            reply = client.chat.completions.create(
                model="echo-e2e", messages=[{"role": "user", "content": "hi"}]
            )
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="echo-e2e", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                if c.choices
            )
    finally:
        proc.stop()
    assert reply.choices[0].message.content == streamed == "echo-e2e: hi"
    assert len(logged_ids(log_dir)) == 2
    assert os.path.exists(os.path.join(log_dir, "store.json"))
