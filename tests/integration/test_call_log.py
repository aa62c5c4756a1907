"""The call log seen from the gateway: every call exactly once with the right fields
(streamed or not, failed or not), across a restart; rows visible before any flush;
secrets never written; redaction and ``store_bodies: false`` applied before the disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import openai
import pyarrow.parquet as pq

from gateway.auth import KeyFile
from gateway.store import LogStore
from gateway.store.wal import WAL_SUFFIX
from tests.support.calllog import request, response, row, rows

MESSAGES = [{"role": "user", "content": "hello log"}]


def client_for(gw, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)


def post(gw, body, **kw) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions", json=body, timeout=10, **kw)


def all_log_bytes(log_dir: str) -> bytes:
    """Every file under the log directory: WAL segments raw, Parquet files decoded to text."""
    out = []
    for path in Path(log_dir).rglob("*"):
        if not path.is_file():
            continue
        out.append(path.read_bytes())
        if path.suffix == ".parquet":
            out.append(json.dumps(pq.read_table(path).to_pylist(), default=str).encode())
    return b"\n".join(out)


def test_every_call_is_logged_exactly_once_streamed_or_not_failed_or_not(
    make_settings, start_gateway, log_dir
):
    settings = make_settings()
    gw = start_gateway(settings)
    expected: dict[str, tuple[int, bool]] = {}

    def sent(resp: httpx.Response, stream: bool) -> None:
        expected[resp.headers["x-request-id"]] = (resp.status_code, stream)

    sent(post(gw, {"model": "echo-1", "messages": MESSAGES}), False)
    with httpx.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json={"model": "echo-2", "messages": MESSAGES, "stream": True},
        timeout=10,
    ) as resp:
        resp.read()
        sent(resp, True)
    with httpx.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json={"model": "break", "messages": MESSAGES, "stream": True},
        timeout=10,
    ) as resp:
        resp.read()
        sent(resp, True)
    sent(post(gw, {"model": "reject-400", "messages": MESSAGES}), False)
    sent(post(gw, {"model": "error-500", "messages": MESSAGES}), False)
    sent(httpx.post(gw.base_url + "/chat/completions", content=b"{oops", timeout=10), False)
    sent(httpx.post(gw.base_url + "/embeddings", json={"model": "emb", "input": "x"}, timeout=10), False)
    assert len(expected) == 7

    logged = rows(gw, log_dir)
    assert sorted(r["call_id"] for r in logged) == sorted(expected)
    for r in logged:
        status, stream = expected[r["call_id"]]
        if r["route"] == "break":  # answered 200, then failed midway: logged with the failure
            assert (status, r["status"], r["error_type"]) == (200, 502, "upstream_error")
            continue
        assert r["status"] == status
        assert bool(r["stream"]) == stream
        assert (r["error_type"] is None) == (status == 200)
        assert r["latency_ms"] is not None
        assert r["schema_version"] >= 1

    # a restart flushes on the way down and replays nothing twice on the way up
    gw.stop()
    assert not [p for p in Path(log_dir, "wal").glob("*.wal.ndjson") if p.stat().st_size]
    gw2 = start_gateway(make_settings())
    assert post(gw2, {"model": "echo-3", "messages": MESSAGES}).status_code == 200
    again = rows(gw2, log_dir)
    assert len(again) == 8
    assert len({r["call_id"] for r in again}) == 8


def test_a_call_is_visible_to_readers_before_the_writer_flushes(make_settings, start_gateway, log_dir):
    gw = start_gateway(make_settings(store={"flush_interval": 3600}))
    resp = post(gw, {"model": "echo-tail", "messages": MESSAGES})
    assert not list(Path(log_dir).rglob("*.parquet"))
    with LogStore.open(log_dir) as store:
        found = store.sql(
            "SELECT output_text, status FROM calls WHERE call_id = ?", [resp.headers["x-request-id"]]
        )
    assert found == [{"output_text": "echo-tail: hello log", "status": 200}]


def test_the_call_log_is_parquet_partitioned_by_date(gateway, log_dir):
    resp = post(gateway, {"model": "echo-pq", "messages": MESSAGES})
    r = row(gateway, log_dir, resp.headers["x-request-id"])
    day = r["ts"].date().isoformat()
    files = list(Path(log_dir, "calls", f"date={day}").glob("*.parquet"))
    assert files
    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_secrets_never_reach_the_log(make_settings, start_gateway, fake_upstream, log_dir, monkeypatch):
    provider_key = "sk-provider-SECRET-7f3a9"
    monkeypatch.setenv("SECRET_PROVIDER_KEY", provider_key)
    client_key = KeyFile(log_dir).create("svc")
    gw = start_gateway(
        make_settings(
            server={"auth": "keys"},
            upstreams={"up": {"model": "echo-secret", "api_key_env": "SECRET_PROVIDER_KEY"}},
            routes={"bot": {"baseline": "up"}},
        )
    )
    with client_for(gw, client_key) as client:
        client.chat.completions.create(model="bot", messages=MESSAGES)
        list(client.chat.completions.create(model="bot", messages=MESSAGES, stream=True))
        with_error = client.chat.completions.with_raw_response.create(
            model="bot", messages=MESSAGES, user="u1"
        )
    assert fake_upstream.requests[-1]["headers"]["Authorization"] == f"Bearer {provider_key}"  # it was used
    wrong = post(
        gw, {"model": "bot", "messages": MESSAGES}, headers={"Authorization": "Bearer sk-st-wrong-SECRET-key"}
    )
    assert wrong.status_code == 401
    logged = rows(gw, log_dir)
    assert len(logged) == 4
    assert row(gw, log_dir, with_error.headers["x-request-id"])["client_key"] == "svc"

    data = all_log_bytes(log_dir)
    assert provider_key.encode() not in data
    assert client_key.encode() not in data
    assert b"sk-st-wrong-SECRET-key" not in data
    assert b"Bearer" not in data


def test_the_callers_key_forwarded_in_open_mode_is_not_logged(gateway, fake_upstream, log_dir):
    with client_for(gateway, "sk-open-mode-SECRET-1") as client:
        client.chat.completions.create(model="echo", messages=MESSAGES)
        list(client.chat.completions.create(model="echo", messages=MESSAGES, stream=True))
    rows(gateway, log_dir)
    assert b"sk-open-mode-SECRET-1" not in all_log_bytes(log_dir)


def test_emails_cards_and_custom_patterns_are_redacted_before_the_log(
    make_settings, start_gateway, fake_upstream, log_dir
):
    gw = start_gateway(
        make_settings(store={"redact": {"emails": True, "cards": True, "patterns": [r"ACCT-\d{6}"]}})
    )
    secret = "mail jane.doe@example.com card 4111 1111 1111 1111 account ACCT-123456 ok"
    messages = [{"role": "user", "content": secret}]
    with client_for(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="echo-r", messages=messages)
        stream = client.chat.completions.with_raw_response.create(
            model="echo-r", messages=messages, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    # the user and the provider see the real text: redaction is for the log only
    assert raw.parse().choices[0].message.content == f"echo-r: {secret}"
    assert streamed == f"echo-r: {secret}"
    assert fake_upstream.requests[0]["body"]["messages"] == messages

    expected = "mail [EMAIL] card [CARD] account [REDACTED] ok"
    for call_id in (raw.headers["x-request-id"], stream.headers["x-request-id"]):
        r = row(gw, log_dir, call_id)
        assert request(r)["messages"][0]["content"] == expected
        assert r["output_text"] == f"echo-r: {expected}"
        assert response(r)["choices"][0]["message"]["content"] == f"echo-r: {expected}"
    data = all_log_bytes(log_dir)
    for needle in (b"jane.doe@example.com", b"4111 1111 1111 1111", b"ACCT-123456"):
        assert needle not in data


def test_redaction_runs_in_the_agent_not_on_the_request_path(make_settings, start_gateway, log_dir):
    """The worker's WAL line holds the raw stream (not assembled) and the redaction to apply, in a
    0600 file; the row the agent makes of it is redacted, and nothing raw is left once converted."""
    gw = start_gateway(
        make_settings(
            store={"redact": {"emails": True, "cards": False, "patterns": []}, "flush_interval": 30}
        )
    )
    messages = [{"role": "user", "content": "write to jane.doe@example.com"}]
    with client_for(gw) as client:
        stream = client.chat.completions.with_raw_response.create(
            model="echo-r", messages=messages, stream=True
        )
        "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    call_id = stream.headers["x-request-id"]
    wal_dir = gw.ctx.writer.wal_dir
    lines = []
    for name in os.listdir(wal_dir):
        if name.endswith(WAL_SUFFIX):
            assert os.stat(os.path.join(wal_dir, name)).st_mode & 0o777 == 0o600
            with open(os.path.join(wal_dir, name), "rb") as f:
                lines += [json.loads(x) for x in f.read().splitlines() if call_id.encode() in x]
    (line,) = lines
    assert "response" not in line and line["response_sse"].startswith("data: ")  # not assembled here
    assert line["redact"] == {"emails": True, "cards": False, "patterns": []}
    r = row(gw, log_dir, call_id)
    assert r["output_text"] == "echo-r: write to [EMAIL]"
    assert request(r)["messages"][0]["content"] == "write to [EMAIL]"
    assert b"jane.doe@example.com" not in all_log_bytes(log_dir)


def test_a_route_with_store_bodies_off_logs_no_bodies_but_still_logs_the_call(
    make_settings, start_gateway, log_dir
):
    gw = start_gateway(
        make_settings(
            upstreams={"up": {"model": "echo-private"}, "up2": {"model": "echo-public"}},
            routes={"private": {"baseline": "up", "store_bodies": False}, "public": {"baseline": "up2"}},
        )
    )
    messages = [{"role": "user", "content": "medical-details-XYZ"}]
    with client_for(gw) as client:
        plain = client.chat.completions.with_raw_response.create(model="private", messages=messages)
        streamed = client.chat.completions.with_raw_response.create(
            model="private", messages=messages, stream=True
        )
        list(streamed.parse())
        public = client.chat.completions.with_raw_response.create(model="public", messages=messages)
    assert plain.parse().choices[0].message.content == "echo-private: medical-details-XYZ"
    for raw, stream in ((plain, False), (streamed, True)):
        r = row(gw, log_dir, raw.headers["x-request-id"])
        assert (r["request"], r["response"], r["output_text"]) == (None, None, None)
        assert (r["status"], r["stream"], r["route"]) == (200, stream, "private")
        assert r["latency_ms"] is not None
    assert (
        row(gw, log_dir, public.headers["x-request-id"])["output_text"] == "echo-public: medical-details-XYZ"
    )
    private = rows(gw, log_dir, "route = 'private'")
    assert len(private) == 2
    assert "medical-details-XYZ" not in json.dumps(private, default=str)


def test_the_wal_directory_holds_only_unflushed_segments(gateway, log_dir):
    for _ in range(3):
        post(gateway, {"model": "echo", "messages": MESSAGES})
    rows(gateway, log_dir)
    segments = [p for p in Path(log_dir, "wal").glob("*.wal.ndjson") if os.path.getsize(p)]
    assert segments == []


def test_an_unwritable_log_directory_degrades_readyz_but_calls_are_served_and_kept(
    make_settings, start_gateway, tmp_path
):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the log's parent directory should be")
    log_dir = str(blocker / "log")
    gw = start_gateway(make_settings(store={"log_dir": log_dir, "flush_interval": 0.05}))
    ready = httpx.get(gw.url + "/readyz", timeout=5)
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"  # no WAL: this instance cannot keep calls
    assert "Not a directory" in body["store"]["last_error"]  # the reason, with the path
    assert str(blocker) in body["store"]["last_error"]
    health = httpx.get(gw.url + "/healthz", timeout=5)
    assert health.status_code == 200 and "store" in health.json()["degraded"]

    resp = post(gw, {"model": "echo-kept", "messages": MESSAGES})
    assert resp.status_code == 200
    assert httpx.get(gw.url + "/readyz", timeout=5).json()["store"]["pending_in_memory"] == 1

    blocker.unlink()  # the disk comes back: the held record reaches the log
    deadline = time.monotonic() + 10
    while httpx.get(gw.url + "/readyz", timeout=5).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 200
    assert row(gw, log_dir, resp.headers["x-request-id"])["output_text"] == "echo-kept: hello log"
