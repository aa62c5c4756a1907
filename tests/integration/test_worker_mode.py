"""A request worker of ``shadowtune serve`` whose log agent is away (restarting): calls are served and
logged to the WAL, and the pages the agent answers say so in OpenAI's error shape (never a hang)."""

from __future__ import annotations

from pathlib import Path

import httpx


def test_without_its_agent_a_worker_serves_calls_and_answers_log_pages_503(
    make_settings, start_gateway, tmp_path
):
    gw = start_gateway(make_settings(), agent_socket=str(tmp_path / "no-agent.sock"))
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200
    wal = b"".join(p.read_bytes() for p in Path(gw.ctx.writer.wal_dir).glob("*.wal.ndjson"))
    assert r.headers["x-request-id"].encode() in wal
    for path in ("/metrics", "/review", "/admin/status"):
        page = httpx.get(gw.url + path, timeout=10)
        assert page.status_code == 503, path
        assert page.json()["error"]["code"] == "log_agent_unavailable"
        assert page.headers["retry-after"] == "1"
    big = httpx.post(gw.url + "/review/calls/x/thumbs", content=b"x" * (9 * 2**20), timeout=20)
    assert big.status_code == 413
    assert big.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 200  # the WAL takes the calls
