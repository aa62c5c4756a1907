"""Which upstream created a Responses API id is known to every worker and every replica: with
``shadowtune serve --workers 2`` (the file state backend) and with two gateway processes on one
PostgreSQL, a response the candidate created on one worker is continued (``previous_response_id``)
on the candidate and retrieved from the candidate through the other worker.

Each client keeps one keep-alive connection, so its requests stay on one worker; the test picks
two connections that ``/admin/process`` shows on different processes."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.store import LogStore
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def cand_upstream():
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def procs():
    started: list[ServeProcess] = []
    yield started
    for p in started:
        p.stop()


def start(tmp_path, name: str, fake_upstream, cand_upstream, state: str, workers: int) -> ServeProcess:
    config: dict[str, Any] = {
        "server": {"auth": "open", "workers": workers},
        "upstreams": {
            "base": {"base_url": fake_upstream.base_url, "model": "base-model"},
            "cand": {"base_url": cand_upstream.base_url, "model": "cand-model"},
        },
        "routes": {"bot": {"baseline": "base", "candidate": "cand", "mode": "canary", "share": 100}},
        "store": {
            "log_dir": str(tmp_path / f"log-{name}"),
            "state_url": state,
            "flush_interval": 0.2,
            "compact_interval": 0,
        },
        "signals": {"detect_interval_s": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = ServeProcess(["--config", str(path), "--workers", str(workers), "--log-level", "warning"])
    return proc.start(timeout=90)


def pinned(url: str) -> tuple[httpx.Client, int]:
    """A keep-alive client and the pid of the worker its connection landed on."""
    client = httpx.Client(base_url=url, timeout=30)
    return client, int(client.get("/admin/process").json()["pid"])


def two_workers(url_a: str, url_b: str) -> tuple[httpx.Client, httpx.Client]:
    first, pid = pinned(url_a)
    spare: list[httpx.Client] = []
    try:
        for _ in range(60):
            other, other_pid = pinned(url_b)
            if other_pid != pid:
                return first, other
            spare.append(other)
        raise AssertionError("every connection landed on the same worker")
    finally:
        for c in spare:
            c.close()


def sdk(http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=str(http.base_url) + "/v1", api_key="sk-x", http_client=http, max_retries=0)


def check_shared(a: httpx.Client, b: httpx.Client, cand_upstream: FakeUpstream, log_dir_b: str) -> None:
    first = sdk(a).responses.create(model="bot", input="turn one", user="u1")
    assert first.output_text == "cand-model: turn one"
    raw = sdk(b).responses.with_raw_response.create(
        model="bot", input="turn two", user="u1", previous_response_id=first.id
    )
    second = raw.parse()
    assert second.output_text == "cand-model: turn two"  # the other worker knew the candidate made it
    assert sdk(b).responses.retrieve(first.id).output_text == "cand-model: turn one"
    assert sdk(a).responses.retrieve(second.id).output_text == "cand-model: turn two"
    gets = [q["path"] for q in cand_upstream.requests if q.get("method") == "GET"]
    assert gets == [f"/v1/responses/{first.id}", f"/v1/responses/{second.id}"]
    sdk(b).responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):  # deleted: a 404 through the other worker too
        sdk(a).responses.retrieve(first.id)
    call_id = raw.headers["x-request-id"]
    b.post("/admin/flush")
    with LogStore.open(log_dir_b) as store:
        row = store.sql("SELECT variant, tags FROM calls WHERE call_id = ?", [call_id])
    assert row and row[0]["variant"] == "candidate" and "stateful:candidate" in row[0]["tags"]


def test_two_workers_share_response_ids_through_the_state_directory(
    tmp_path, fake_upstream, cand_upstream, procs
):
    proc = start(tmp_path, "one", fake_upstream, cand_upstream, str(tmp_path / "state"), workers=2)
    procs.append(proc)
    a, b = two_workers(proc.url, proc.url)
    with contextlib.ExitStack() as stack:
        stack.callback(a.close)
        stack.callback(b.close)
        check_shared(a, b, cand_upstream, str(tmp_path / "log-one"))


def test_two_gateways_share_response_ids_through_postgresql(
    tmp_path, fake_upstream, cand_upstream, procs, postgres_url
):
    one = start(tmp_path, "one", fake_upstream, cand_upstream, postgres_url, workers=1)
    procs.append(one)
    two = start(tmp_path, "two", fake_upstream, cand_upstream, postgres_url, workers=1)
    procs.append(two)
    a, b = two_workers(one.url, two.url)
    with contextlib.ExitStack() as stack:
        stack.callback(a.close)
        stack.callback(b.close)
        check_shared(a, b, cand_upstream, str(tmp_path / "log-two"))
