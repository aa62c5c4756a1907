"""``/readyz`` means "this instance can serve": Parquet flushes failing (the log's storage
refusing writes, as an object store outage does on every pod at once) leave it ready while
the WAL holds the records; ``/healthz`` and the metrics report the degradation, and once the
storage is back the held records reach the log."""

from __future__ import annotations

import os
import time

import httpx

from gateway.store import LogStore


def chat(gw, text):
    return httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )


def test_readyz_stays_ready_while_parquet_writes_fail_and_the_wal_holds_them(
    make_settings, start_gateway, tmp_path
):
    parent = tmp_path / "lake"
    parent.write_text("a file where the log's directory should be: every Parquet write fails")
    log_dir = str(parent / "log")
    wal_dir = str(tmp_path / "wal")
    settings = make_settings(
        store={
            "log_dir": log_dir,
            "wal_dir": wal_dir,
            "state_dir": str(tmp_path / "state"),
            "flush_interval": 0.05,
        }
    )
    gw = start_gateway(settings)
    ids = []
    for i in range(5):
        resp = chat(gw, f"held {i}")
        assert resp.status_code == 200
        ids.append(resp.headers["x-request-id"])
    deadline = time.monotonic() + 10
    while httpx.get(gw.url + "/healthz").json()["store"]["flush_errors"] == 0:
        assert time.monotonic() < deadline, "the flush never failed"
        time.sleep(0.05)

    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["store"]["wal_open"] is True
    health = httpx.get(gw.url + "/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded" and body["degraded"] == ["store"]
    assert body["store"]["healthy"] is False and body["store"]["backlog_bytes"] > 0
    metrics = httpx.get(gw.url + "/metrics").text
    healthy = [line for line in metrics.splitlines() if line.startswith("shadowtune_log_healthy")]
    assert healthy and float(healthy[0].rsplit(" ", 1)[1]) == 0
    assert any(
        os.path.getsize(os.path.join(wal_dir, n)) for n in os.listdir(wal_dir) if n.endswith(".ndjson")
    )

    parent.unlink()  # the storage is back: the WAL's records reach the log
    deadline = time.monotonic() + 15
    while not httpx.get(gw.url + "/healthz").json()["store"]["healthy"]:
        assert time.monotonic() < deadline, "the store did not recover"
        time.sleep(0.1)
    with LogStore.open(log_dir, wal_dir=wal_dir) as store:
        logged = {r["call_id"] for r in store.sql("SELECT call_id FROM calls")}
    assert set(ids) <= logged
    assert httpx.get(gw.url + "/healthz").json()["status"] == "ok"
