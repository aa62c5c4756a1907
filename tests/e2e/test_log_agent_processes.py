"""``shadowtune serve`` with its log agent, as real processes: ``/metrics`` with two workers equals
the log's counts, request workers load neither pyarrow, DuckDB nor the OpenTelemetry SDK, the
agent killed under load is restarted and loses nothing, telemetry keeps counting while the
Parquet writes fail, and the workers and the agent exit when the supervisor is killed."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.store import LogStore
from tests.e2e.test_serve_process import Load
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.slow

HEAVY = ("pyarrow", "duckdb", "opentelemetry.sdk", "polars", "pandas")


def serve(fake_upstream: Any, log_dir: str, *extra: str, env: dict[str, str] | None = None) -> ServeProcess:
    args = ["--upstream", fake_upstream.base_url, "--log-dir", log_dir, "--open", "--log-level", "warning"]
    return ServeProcess(
        [*args, *extra],
        env={
            "SHADOWTUNE_STORE__FLUSH_INTERVAL": "0.2",
            "SHADOWTUNE_STORE__COMPACT_INTERVAL": "0",
            **(env or {}),
        },
    )


def chat(url: str, model: str, text: str, *, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    with httpx.Client(timeout=20) as client:  # a new connection each time: every worker gets a share
        r = client.post(url + "/v1/chat/completions", json=body, headers={"Connection": "close"})
    return r


def samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    r = httpx.get(url + "/metrics", headers={"Connection": "close"}, timeout=20)
    assert r.status_code == 200, r.text
    return [
        (s.name, s.labels, s.value) for fam in text_string_to_metric_families(r.text) for s in fam.samples
    ]


def calls_metric(found: list[tuple[str, dict[str, str], float]]) -> dict[tuple[str, str, int], float]:
    out: dict[tuple[str, str, int], float] = Counter()
    for name, labels, value in found:
        if name == "shadowtune_calls_total":
            key = (
                labels["shadowtune_route"],
                labels["shadowtune_variant"],
                int(labels["http_response_status_code"]),
            )
            out[key] += value
    return dict(out)


def wait_for_calls(url: str, n: int, timeout: float = 60) -> list[tuple[str, dict[str, str], float]]:
    deadline = time.monotonic() + timeout
    while True:
        found = samples(url)
        if sum(calls_metric(found).values()) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def processes(url: str, workers: int = 2, tries: int = 400) -> dict[int, list[str]]:
    """pid -> loaded modules of the workers answering fresh connections, once ``workers`` have answered
    (the kernel gives a new connection to whichever worker accepts first: it can take a while)."""
    seen: dict[int, list[str]] = {}
    for _ in range(tries):
        r = httpx.get(url + "/admin/process", headers={"Connection": "close"}, timeout=10)
        assert r.status_code == 200, r.text
        seen[r.json()["pid"]] = r.json()["modules"]
        if len(seen) >= workers:
            break
    return seen


def agent_status(url: str, timeout: float = 60) -> dict[str, Any]:
    """The agent's status (through a worker), once the agent answers (it starts after the workers)."""
    deadline = time.monotonic() + timeout
    while (
        r := httpx.get(url + "/admin/status", headers={"Connection": "close"}, timeout=10)
    ).status_code == 503:
        assert time.monotonic() < deadline, "the log agent never answered"
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    store: dict[str, Any] = r.json()["store"]
    return store


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_metrics_with_two_workers_equal_the_logs_counts(fake_upstream, log_dir):
    proc = serve(fake_upstream, log_dir, "--workers", "2").start()
    try:
        ids: dict[str, str] = {}
        for i in range(36):
            model = ("echo-a", "echo-b", "error-503")[i % 3]
            r = chat(proc.url, model, f"m{i}", stream=i % 4 == 1 and model != "error-503")
            assert r.status_code == (503 if model == "error-503" else 200)
            if r.status_code == 200:
                ids[r.headers["x-request-id"]] = model
        votes = Counter()
        for n, call_id in enumerate(list(ids)[:10]):
            value = "up" if n % 3 else "down"
            r = httpx.post(
                proc.url + "/v1/feedback",
                json={"call_id": call_id, "kind": "thumbs", "value": value},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            votes[(ids[call_id], value)] += 1
        assert len(processes(proc.url)) == 2  # both workers took requests

        found = wait_for_calls(proc.url, 36)
        deadline = time.monotonic() + 20
        while (
            sum(v for n, _, v in found if n == "shadowtune_feedback_total") < 10
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
            found = samples(proc.url)
        scrapes = [calls_metric(samples(proc.url)) for _ in range(6)]  # whichever worker takes the scrape
        warm = httpx.get(proc.url + "/admin/status", headers={"Connection": "close"}, timeout=10).json()
        assert warm["review_warm_s"] is not None  # the review pages warmed up as the agent started
        page = httpx.get(proc.url + "/review/calls?route=echo-a", headers={"Connection": "close"}, timeout=30)
        assert page.status_code == 200  # the review page reads the log in the agent, through a worker
        assert any(call_id in page.text for call_id, model in ids.items() if model == "echo-a")
        with LogStore.open(log_dir) as store:
            logged = {
                (r["route"], r["variant"], r["status"]): r["n"]
                for r in store.sql("SELECT route, variant, status, count(*) AS n FROM calls GROUP BY ALL")
            }
            tokens = {
                r["route"]: r["n"]
                for r in store.sql("SELECT route, sum(input_tokens) AS n FROM calls GROUP BY ALL")
                if r["n"] is not None
            }
    finally:
        proc.stop()
    assert sum(logged.values()) == 36
    assert calls_metric(found) == logged
    assert all(s == logged for s in scrapes)
    metric_tokens = {
        labels["shadowtune_route"]: value
        for name, labels, value in found
        if name == "gen_ai_client_token_usage_sum" and labels["gen_ai_token_type"] == "input"
    }
    assert metric_tokens == tokens
    thumbs = {
        (labels["shadowtune_route"], labels["shadowtune_feedback_value"]): value
        for name, labels, value in found
        if name == "shadowtune_feedback_total" and labels["shadowtune_feedback_kind"] == "thumbs"
    }
    assert thumbs == dict(votes)
    assert {
        labels.get("gen_ai_provider_name") for name, labels, _ in found if name == "shadowtune_calls_total"
    } == {"openai"}


def test_workers_import_no_pyarrow_duckdb_or_otel_sdk_and_exit_when_the_supervisor_is_killed(
    fake_upstream, log_dir
):
    proc = serve(fake_upstream, log_dir, "--workers", "2").start()
    try:
        assert chat(proc.url, "echo-x", "hi").status_code == 200
        assert chat(proc.url, "echo-x", "hi", stream=True).status_code == 200
        seen = processes(proc.url)
        assert len(seen) == 2
        for pid, modules in seen.items():
            loaded = [m for m in modules if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY))]
            assert loaded == [], f"worker {pid} imported {loaded[:5]}"
        agent_pid = agent_status(proc.url)["agent_pid"]
        assert agent_pid not in seen
        deadline = time.monotonic() + 30  # once the agent converted (Arrow used), pandas is still not loaded
        while agent_status(proc.url)["flushed_rows"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        maps = Path(f"/proc/{agent_pid}/maps").read_text()
        assert "/pyarrow/" in maps
        assert "/pandas/" not in maps, "the log agent loaded pandas (pyarrow does on its first pa.array)"

        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGKILL)  # the supervisor only
        proc.proc.wait(10)
        deadline = time.monotonic() + 40
        while any(alive(p) for p in (*seen, agent_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in (*seen, agent_pid) if alive(p)] == []
        with socket.socket() as s:  # nobody holds the port any more
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", proc.port))
    finally:
        proc.stop()
    with LogStore.open(log_dir) as store:  # the workers closed their segments; the agent converted them
        assert store.sql("SELECT count(*) AS n FROM calls")[0]["n"] == 2


def test_the_agent_killed_under_load_is_restarted_and_nothing_is_lost(fake_upstream, log_dir):
    proc = serve(fake_upstream, log_dir, "--workers", "2").start()
    try:
        first = agent_status(proc.url)["agent_pid"]
        with Load(proc.url) as load:
            load.wait_for(60)
            os.kill(first, signal.SIGKILL)
            killed_at = len(load.received)
            load.wait_for(killed_at + 100)  # answers go on while there is no agent
            deadline = time.monotonic() + 60
            restarted = None
            while time.monotonic() < deadline:
                r = httpx.get(proc.url + "/admin/status", headers={"Connection": "close"}, timeout=10)
                if r.status_code == 200 and r.json()["store"]["agent_pid"] != first:
                    restarted = r.json()["store"]["agent_pid"]
                    break
                assert r.status_code == 503  # the agent is away: a clear error, never a hang
                time.sleep(0.2)
            assert restarted is not None, "the agent was not restarted"
            load.wait_for(len(load.received) + 50)
        received = list(load.received)
        assert load.errors == 0
        found = wait_for_calls(proc.url, 1)
        assert sum(calls_metric(found).values()) >= 1  # the new agent counts again
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0
    with LogStore.open(log_dir) as store:
        ids = [r["call_id"] for r in store.sql("SELECT call_id FROM calls")]
    assert len(ids) == len(set(ids)), "a call was logged twice"
    assert set(received) <= set(ids), f"{len(set(received) - set(ids))} answered call(s) missing"
    assert not [p for p in Path(log_dir, "wal").glob("*.wal.ndjson") if p.stat().st_size]


def test_metrics_keep_counting_while_parquet_writes_fail_and_the_wal_holds_the_records(
    fake_upstream, tmp_path
):
    log_dir, wal_dir = str(tmp_path / "log"), str(tmp_path / "wal")
    proc = serve(fake_upstream, log_dir, env={"SHADOWTUNE_STORE__WAL_DIR": wal_dir}).start()
    try:
        agent_status(proc.url)  # the agent has created the store
        blocker = Path(log_dir, "calls")
        aside = blocker.rename(Path(log_dir, "calls.aside"))  # the Delta table exists from the start
        blocker.write_text("a file where the calls table's directory should be: every Parquet write fails")
        ids = [chat(proc.url, "echo-down", f"d{i}").headers["x-request-id"] for i in range(25)]
        found = wait_for_calls(proc.url, 25)
        assert calls_metric(found) == {("echo-down", "baseline", 200): 25}
        deadline = time.monotonic() + 20
        while (health := httpx.get(proc.url + "/healthz", timeout=10).json())["status"] == "ok":
            assert time.monotonic() < deadline, "healthz never reported the failing store"
            time.sleep(0.2)
        assert health["degraded"] == ["store"]
        assert "Not a directory" in health["store"]["last_error"]
        # the store is shared by every replica: readiness stays (the WAL takes the calls)
        assert httpx.get(proc.url + "/readyz", timeout=10).status_code == 200
        assert agent_status(proc.url)["flush_errors"] > 0
        assert not list(Path(log_dir).rglob("*.parquet"))
        held = b"".join(p.read_bytes() for p in Path(wal_dir).glob("*.wal.ndjson"))
        assert all(call_id.encode() in held for call_id in ids)  # the WAL holds every record

        blocker.unlink()  # the store comes back
        aside.rename(blocker)
        deadline = time.monotonic() + 30
        while httpx.get(proc.url + "/healthz", timeout=10).json()["status"] != "ok":
            assert time.monotonic() < deadline, "healthz never recovered"
            time.sleep(0.2)
    finally:
        proc.stop()
    with LogStore.open(log_dir, wal_dir=wal_dir) as store:
        logged = [r["call_id"] for r in store.sql("SELECT call_id FROM calls")]
    assert sorted(logged) == sorted(ids)
    assert list(Path(log_dir).rglob("*.parquet"))
