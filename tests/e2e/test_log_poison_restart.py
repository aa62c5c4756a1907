"""The issue's failure, end to end: ``shadowtune serve --workers 2`` over a WAL that holds a
record main wrote untyped, hostile metadata in flight, kill -9 mid-traffic, then a restart:
every start succeeds, every answered call is a row exactly once, and the one poisoned
record sits in the quarantine, counted by ``logs status``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from click.testing import CliRunner

from gateway.cli_ops import logs
from gateway.store import LogStore, layout
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.slow


def test_workers_over_a_poisoned_wal_start_and_a_kill_9_restart_keeps_every_answer(
    tmp_path, fake_upstream, log_dir
):
    wal = Path(log_dir, "wal")
    wal.mkdir(parents=True)
    poison = {"_t": "calls", "call_id": "call_poison", "ts": time.time_ns() // 1000, "session_id": {"x": 1}}
    (wal / f"0000000000001-1-dead00.{1:08d}{layout.WAL_SUFFIX}").write_bytes(orjson.dumps(poison) + b"\n")
    config = {
        "server": {"auth": "open", "passthrough_url": fake_upstream.base_url},
        "store": {"log_dir": log_dir, "flush_interval": 0.2, "compact_interval": 0},
    }
    path = tmp_path / "shadowtune.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["--config", str(path), "--workers", "2", "--log-level", "warning"]
    answered: list[str] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not stop.is_set():
                meta = [{"session_id": {"x": i}}, {"n": i, "tags": [1, {"a": None}]}, "text", [i]][i % 4]
                body = {
                    "model": "m",
                    "messages": [{"role": "user", "content": f"q{i}"}],
                    "metadata": meta,
                    "user": i,
                }
                try:
                    r = client.post(url + "/v1/chat/completions", json=body, headers={"Connection": "close"})
                except httpx.HTTPError:
                    continue  # the server was killed mid-call: not answered
                if r.status_code == 200:
                    answered.append(r.headers["x-request-id"])
                i += 1

    first = ServeProcess(args).start(timeout=90)  # main: "Application startup failed" in every worker
    threads = [threading.Thread(target=load, args=(first.url,)) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(answered) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill9()
    stop.set()
    for t in threads:
        t.join(20)
    assert len(answered) >= 150

    second = ServeProcess(args).start(timeout=90)
    try:
        r = httpx.post(
            second.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "after"}]},
        )
        assert r.status_code == 200
        answered.append(r.headers["x-request-id"])
    finally:
        second.stop()
    with LogStore.open(log_dir) as store:
        rows = [r["call_id"] for r in store.sql("SELECT call_id FROM calls")]
        sessions = store.sql("SELECT DISTINCT typeof(session_id) AS t FROM calls")
    assert len(rows) == len(set(rows))  # exactly once
    assert set(answered) <= set(rows)  # every answered call
    assert "call_poison" not in rows
    assert sessions == [{"t": "VARCHAR"}]
    out = json.loads(CliRunner().invoke(logs, ["status", "--log-dir", log_dir, "--json"]).output)
    assert out["quarantine"]["records"] == 1
