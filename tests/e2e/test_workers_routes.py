"""A route change reaches every worker of ``shadowtune serve --workers 2`` while it is under
load: no request is lost, and soon every answer, from whichever worker, comes from the
new arm (the workers poll the shared route-state file)."""

from __future__ import annotations

import os
import threading
import time

import duckdb
import httpx
import pytest
import yaml

from gateway.store import LogStore
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.slow

CONVERGED_AFTER = 60  # consecutive answers from the new arm, on fresh connections


@pytest.fixture
def serve(tmp_path, fake_upstream, log_dir):
    config = {
        "server": {"auth": "open", "workers": 2},
        "upstreams": {
            "base": {"base_url": fake_upstream.base_url, "model": "echo-base"},
            "cand": {"base_url": fake_upstream.base_url, "model": "echo-cand"},
        },
        "routes": {"bot": {"baseline": "base", "candidate": "cand", "mode": "off"}},
        "store": {"log_dir": log_dir, "flush_interval": 0.2, "compact_interval": 0},
    }
    path = tmp_path / "shadowtune.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = ServeProcess(["--config", str(path), "--workers", "2", "--log-level", "warning"]).start()
    yield proc
    proc.stop()


def ask(client: httpx.Client, url: str, text: str) -> tuple[int, str | None, str | None]:
    r = client.post(
        url + "/v1/chat/completions",
        json={"model": "bot", "messages": [{"role": "user", "content": text}], "user": text},
        headers={"Connection": "close"},  # a new connection each time, so the workers share the load
    )
    if r.status_code != 200:
        return r.status_code, None, r.headers.get("x-request-id")
    return 200, r.json()["choices"][0]["message"]["content"].split(":", 1)[0], r.headers["x-request-id"]


def test_a_route_change_under_load_loses_nothing_and_reaches_every_worker(serve, log_dir):
    results: list[tuple[float, float, int, str | None, str | None]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status, arm, call_id = ask(client, serve.url, f"load-{worker}-{i}")
                except httpx.HTTPError as exc:  # a lost request
                    errors.append(exc)
                    continue
                results.append((sent, time.monotonic(), status, arm, call_id))
                i += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        patch_sent = time.monotonic()
        r = httpx.patch(
            serve.url + "/admin/routes/bot", json={"mode": "primary", "shadow_rate": 0, "reason": "e2e"}
        )
        assert r.status_code == 200, r.text
        changed_at = time.monotonic()

        # poll until a long run of fresh-connection answers all come from the candidate
        streak, polled, converged_at = 0, 0, None
        with httpx.Client(timeout=30) as client:
            deadline = changed_at + 20
            while time.monotonic() < deadline:
                _, arm, _ = ask(client, serve.url, f"poll-{polled}")
                polled += 1
                streak = streak + 1 if arm == "echo-cand" else 0
                if streak >= CONVERGED_AFTER:
                    converged_at = time.monotonic()
                    break
        assert converged_at is not None, "the change did not reach every worker"
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    assert errors == []
    assert results and all(status == 200 for _, _, status, _, _ in results)
    assert {arm for _, done, _, arm, _ in results if done < patch_sent} == {"echo-base"}
    assert {arm for sent, _, _, arm, _ in results if sent > converged_at} == {"echo-cand"}
    last_old = max((sent for sent, _, _, arm, _ in results if arm == "echo-base"), default=changed_at)
    print(f"\nlast request answered by the old arm was sent {last_old - changed_at:+.3f}s after the change")

    serve.stop()  # workers flush their logs on the way out
    store = LogStore.open(log_dir)
    served = {
        r["call_id"]: r
        for r in store.sql("SELECT call_id, variant, mode, route_version FROM calls WHERE served")
    }
    missing = [call_id for *_, call_id in results if call_id not in served]
    assert missing == [], f"{len(missing)} answered calls are not in the log"
    for *_, arm, call_id in results:
        row = served[call_id]
        assert (row["variant"], row["mode"], row["route_version"]) == (
            ("candidate", "primary", 1) if arm == "echo-cand" else ("baseline", "off", 0)
        )

    # both worker processes served the new arm (each writes its own files, named after its pid)
    files = os.path.join(log_dir, "calls", "*", "*.parquet")
    pids = duckdb.sql(
        f"SELECT DISTINCT split_part(parse_filename(filename), '-', 2) AS pid "
        f"FROM read_parquet('{files}', filename = true) WHERE served AND variant = 'candidate'"
    ).fetchall()
    assert len(pids) == 2
