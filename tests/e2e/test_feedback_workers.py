"""Feedback integrity across the workers of ``shadowtune serve --workers 2``: a call made on one
worker is owned by its key on every worker, and repeats posted to different workers count once."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from gateway.auth import KeyFile
from gateway.store import LogStore
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path, fake_upstream, log_dir):
    files = KeyFile(log_dir)
    keys = {"alice": files.create("alice"), "bob": files.create("bob")}
    config = {
        "server": {"auth": "keys", "workers": 2},
        "upstreams": {"base": {"base_url": fake_upstream.base_url, "model": "echo-base"}},
        "routes": {"bot": {"baseline": "base"}},
        "store": {"log_dir": log_dir, "flush_interval": 0.2, "compact_interval": 0},
    }
    path = tmp_path / "shadowtune.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = ServeProcess(["--config", str(path), "--workers", "2", "--log-level", "warning"]).start()
    yield proc, keys
    proc.stop()


def post(url: str, key: str, path: str, body: dict) -> httpx.Response:
    # a new connection each time, so the requests are spread over both workers
    headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
    return httpx.post(url + path, json=body, headers=headers, timeout=30)


def test_ownership_and_idempotency_hold_across_workers(serve, log_dir):
    proc, keys = serve
    calls = []
    for i in range(12):
        r = post(proc.url, keys["alice"], "/v1/chat/completions", {
            "model": "bot", "messages": [{"role": "user", "content": f"q{i}"}], "user": f"u{i}"})  # fmt: skip
        assert r.status_code == 200, r.text
        calls.append(r.headers["x-request-id"])
    for call_id in calls:  # posted right away, before any flush, to whichever worker answers
        r = post(
            proc.url, keys["bob"], "/v1/feedback", {"call_id": call_id, "kind": "thumbs", "value": "down"}
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "call_not_found", r.text
        for _ in range(3):
            r = post(
                proc.url, keys["alice"], "/v1/feedback", {"call_id": call_id, "kind": "thumbs", "value": "up"}
            )
            assert r.status_code == 200, r.text
    rows = None
    for _ in range(50):
        with LogStore.open(log_dir) as store:
            rows = store.sql(
                "SELECT c.call_id, coalesce(o.thumbs_up, 0) AS up, coalesce(o.thumbs_down, 0) AS down "
                "FROM calls c LEFT JOIN outcomes o USING (call_id) WHERE c.route = 'bot' ORDER BY c.call_id"
            )
            posters = store.sql("SELECT DISTINCT client_key FROM events")
        if len(rows) == 12 and all(r["up"] == 1 for r in rows):
            break
        time.sleep(0.2)
    assert [(r["up"], r["down"]) for r in rows] == [(1, 0)] * 12
    assert posters == [{"client_key": "alice"}]


HEAVY = ("pyarrow", "duckdb", "opentelemetry.sdk", "polars", "pandas")


def worker_modules(url: str, workers: int = 2, tries: int = 400) -> dict[int, list[str]]:
    """pid -> ``sys.modules`` of each request worker (fresh connections reach both in time)."""
    seen: dict[int, list[str]] = {}
    for _ in range(tries):
        r = httpx.get(url + "/admin/process", headers={"Connection": "close"}, timeout=10)
        assert r.status_code == 200, r.text
        seen[r.json()["pid"]] = r.json()["modules"]
        if len(seen) >= workers:
            break
    return seen


def test_request_workers_load_no_duckdb_or_pyarrow_after_feedback_posts(serve):
    """The ownership index lives in the log agent: workers ask it, and stay lean."""
    proc, keys = serve
    for i in range(8):  # answers and feedback spread over both workers
        r = post(proc.url, keys["alice"], "/v1/chat/completions", {
            "model": "bot", "messages": [{"role": "user", "content": f"lean {i}"}]})  # fmt: skip
        assert r.status_code == 200, r.text
        call_id = r.headers["x-request-id"]
        r = post(
            proc.url, keys["alice"], "/v1/feedback", {"call_id": call_id, "kind": "thumbs", "value": "up"}
        )
        assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
        again = post(
            proc.url, keys["alice"], "/v1/feedback", {"call_id": call_id, "kind": "thumbs", "value": "up"}
        )
        assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
        other = post(
            proc.url, keys["bob"], "/v1/feedback", {"call_id": call_id, "kind": "thumbs", "value": "up"}
        )
        assert other.status_code == 404, other.text
    seen = worker_modules(proc.url)
    assert len(seen) == 2
    for pid, modules in seen.items():
        loaded = [m for m in modules if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY))]
        assert loaded == [], f"worker {pid} imported {loaded[:5]} after feedback posts"
