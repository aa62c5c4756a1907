"""Upstream failures are visible to the operator of a real ``shadowtune serve``: one redacted stderr
line per upstream and error in the interval, and counts in ``/healthz``; callers see no URL."""

from __future__ import annotations

import httpx

from tests.support.servers import ServeProcess, free_port


def test_a_failing_upstream_shows_on_stderr_and_in_healthz_without_its_password(log_dir):
    url = f"http://ops:pw-zz-9911@127.0.0.1:{free_port()}/v1"
    proc = ServeProcess(["--upstream", url, "--log-dir", log_dir, "--open", "--log-level", "warning"]).start()
    try:
        bodies = []
        for _ in range(3):
            resp = httpx.post(
                proc.url + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            assert resp.status_code == 502
            bodies.append(resp.text)
        health = httpx.get(proc.url + "/healthz", timeout=10).json()
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.stderr is not None
    stderr = proc.proc.stderr.read().decode()
    lines = [line for line in stderr.splitlines() if "upstream 'passthrough' failed" in line]
    assert len(lines) == 1, stderr
    assert "ops:***@127.0.0.1" in lines[0]
    assert "pw-zz-9911" not in stderr
    assert health["status"] == "ok" and health["upstreams"]["passthrough"]["errors"] == 3
    assert all("pw-zz-9911" not in b and "127.0.0.1" not in b for b in bodies)
