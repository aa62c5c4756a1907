"""The log's typed boundary through the real gateway (loopback, fake upstream): hostile
values in every field a caller controls never stop the writer nor break a column; the
request goes upstream unchanged; a record that still cannot be converted is quarantined;
a restart over a poisoned WAL starts; a full disk loses no answered call uncounted."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import orjson
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.cli_ops import logs
from gateway.store import LogStore, layout
from tests.support.fulldisk import fill, free, small_tmpfs

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
header_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    min_size=1,
    max_size=30,
).filter(lambda s: all(not (0x7F <= ord(c) <= 0xA0) for c in s))
content = st.none() | st.text(max_size=40) | json_values
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]) | st.text(max_size=8)},
    optional={"content": content, "name": json_values, "tool_calls": json_values, "extra": json_values},
)
reply_extra = st.dictionaries(
    st.sampled_from(["id", "model", "usage", "system_fingerprint", "created", "service_tier"]),
    json_values,
    max_size=3,
)
body = st.fixed_dictionaries(
    {
        "model": st.text(max_size=20).map(lambda s: "echo-" + s),
        "messages": st.lists(message, min_size=1, max_size=3),
    },
    optional={
        "metadata": json_values | st.dictionaries(st.text(max_size=8), json_values, max_size=20),
        "user": json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.none() | st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
        "n": st.integers(min_value=1, max_value=2) | json_values,
        "temperature": json_values,
        "x_reply_extra": reply_extra,
        "unknown_field": json_values,
    },
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "x-shadowtune-session": header_value,
        "x-shadowtune-tags": header_value,
        "x-shadowtune-regenerate-of": header_value,
        "traceparent": header_value,
        "x-custom": header_value,
    },
)


def test_hostile_caller_fields_never_stop_the_writer_and_every_answer_is_logged(
    make_settings, start_gateway, fake_upstream, log_dir
):
    gw = start_gateway(make_settings(store={"log_dir": log_dir, "flush_interval": 0.1}))
    client = httpx.Client(base_url=gw.base_url, timeout=20)
    answered: dict[str, int] = {}  # x-request-id -> status
    poisoned: list[str] = []

    @settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(req=body, hdrs=headers)
    def one_call(req, hdrs):
        sent = orjson.dumps(req)
        before = len(fake_upstream.requests)
        wire_headers = {k: v.encode("latin-1") for k, v in hdrs.items()}
        resp = client.post(
            "/chat/completions", content=sent, headers={"content-type": "application/json", **wire_headers}
        )
        assert resp.status_code < 500 or resp.json()["error"]["type"] != "server_error", resp.text
        answered[resp.headers["x-request-id"]] = resp.status_code
        if len(fake_upstream.requests) > before:  # it went upstream: byte for byte what the caller sent
            assert fake_upstream.requests[-1]["body"] == orjson.loads(sent)
        if len(answered) % 25 == 0:  # a record that bypasses CallRecord (older code, a bug) is quarantined
            call_id = f"call_poison{len(poisoned):04d}"
            gw.ctx.writer.append(
                "calls", {"call_id": call_id, "ts": time.time_ns() // 1000, "session_id": {"x": 1}}
            )
            poisoned.append(call_id)

    one_call()
    gw.flush()
    status = gw.ctx.store_status()
    assert gw.ctx.writer._thread.is_alive()
    with LogStore.open(log_dir) as store:  # the log stays queryable
        rows = {
            r["call_id"]: r
            for r in store.sql(
                "SELECT call_id, status, user, session_id, tags, metadata FROM calls WHERE served"
            )
        }
    assert {k: rows[k]["status"] for k in answered} == answered  # every answered call, with its status
    assert set(rows) == set(answered)
    for r in rows.values():
        if r["metadata"] is not None:
            meta = json.loads(r["metadata"])
            assert not isinstance(meta, dict) or all(isinstance(v, str) for v in meta.values())
    assert status["quarantined"] == len(poisoned)  # only the records that bypassed the boundary
    assert status["dropped"] == ({"quarantined": len(poisoned)} if poisoned else {})
    health = httpx.get(gw.url + "/healthz").json()
    assert health["store"]["quarantined"] == len(poisoned)
    assert httpx.get(gw.url + "/review/calls").status_code == 200
    metrics = httpx.get(gw.url + "/metrics").text
    assert re.search(r"^shadowtune_log_quarantined_total(\{[^}]*\})? (\S+)$", metrics, re.M).group(2) == str(
        float(len(poisoned))
    )


def test_the_issue_reproducer_is_answered_logged_and_queryable(gateway, log_dir):
    body = {
        "model": "bot",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"session_id": {"x": 1}},
    }
    resp = httpx.post(gateway.base_url + "/chat/completions", json=body, timeout=10)
    assert resp.status_code == 200
    gateway.flush()
    gateway.flush()
    with LogStore.open(log_dir) as store:
        assert store.sql("SELECT session_id, metadata FROM calls") == [
            {"session_id": '{"x":1}', "metadata": '{"session_id":"{\\"x\\":1}"}'}
        ]
    assert gateway.ctx.store_status()["quarantined"] == 0
    assert list(Path(log_dir, "calls").rglob("*.parquet"))  # it reached Parquet, not only the tail


def test_a_restart_over_a_poisoned_wal_starts_and_serves(make_settings, start_gateway, log_dir):
    now = time.time_ns() // 1000
    wal = Path(log_dir, "wal")
    wal.mkdir(parents=True)
    good = {"_t": "calls", "call_id": "call_before", "ts": now, "status": 200, "served": True}
    poison = {**good, "call_id": "call_poison", "session_id": {"x": 1}}  # what main wrote for the reproducer
    (wal / f"0000000000001-1-dead00.{1:08d}{layout.WAL_SUFFIX}").write_bytes(
        orjson.dumps(good) + b"\n" + orjson.dumps(poison) + b"\n"
    )
    gw = start_gateway(make_settings())  # main: "Application startup failed"
    resp = httpx.post(
        gw.base_url + "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status_code == 200
    gw.flush()
    assert httpx.get(gw.url + "/readyz").status_code == 200
    assert httpx.get(gw.url + "/healthz").json()["store"]["quarantined"] == 1
    with LogStore.open(log_dir) as store:
        assert {r["call_id"] for r in store.sql("SELECT call_id FROM calls")} == {
            "call_before",
            resp.headers["x-request-id"],
        }
    out = json.loads(CliRunner().invoke(logs, ["status", "--log-dir", log_dir, "--json"]).output)
    assert out["quarantine"]["records"] == 1


def test_a_full_disk_logs_or_counts_every_answered_call_and_leaves_no_temporary_file(
    make_settings, start_gateway, tmp_path
):
    with small_tmpfs(tmp_path / "disk", "3m") as disk:
        log_dir = str(disk / "log")
        gw = start_gateway(
            make_settings(store={"log_dir": log_dir, "flush_interval": 0.05, "max_pending": 30})
        )
        client = httpx.Client(base_url=gw.base_url, timeout=20)
        fill(disk, leave=64 * 1024)
        answered = []
        for i in range(300):
            msg = f"{i} " + "y" * 1500
            resp = client.post(
                "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": msg}]}
            )
            assert resp.status_code == 200  # the disk is full: callers are still served
            answered.append(resp.headers["x-request-id"])
        degraded = client.get(gw.url + "/readyz")
        assert degraded.status_code == 503
        stats = gw.ctx.store_status()
        assert stats["dropped"].get("queue_full", 0) > 0 and stats["wal_errors"] > 0
        free(disk)
        deadline = time.monotonic() + 20
        while gw.ctx.store_status()["pending_in_memory"] and time.monotonic() < deadline:
            time.sleep(0.05)
        gw.flush()
        gw.flush()
        stats = gw.ctx.store_status()
        with LogStore.open(log_dir) as store:
            logged = [r["call_id"] for r in store.sql("SELECT call_id FROM calls")]
        assert len(logged) == len(set(logged)) and set(logged) <= set(answered)
        assert len(logged) + sum(stats["dropped"].values()) == len(answered)
        assert stats["corrupt_records"] == 0 and stats["quarantined"] == 0  # no torn line anywhere
        assert not list(Path(log_dir).rglob("*.tmp-*"))
        gw.stop()


feedback = st.fixed_dictionaries(
    {
        "call_id": st.from_regex(r"call_[A-Za-z0-9]{1,20}", fullmatch=True) | json_values,
        "kind": st.sampled_from(["thumbs", "rating", "choice", "flag"]) | json_values,
    },
    optional={
        "value": st.sampled_from(["up", "down", "a", "b", 1, 5, 3.5]) | json_values,
        "comment": json_values,
        "user": json_values,
        "data": json_values | st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    },
)


def test_hostile_feedback_bodies_are_4xx_or_logged_as_events_never_quarantined(
    make_settings, start_gateway, log_dir
):
    # the per-key rate limit (its own tests in test_feedback_api) is lifted: this is about the bodies
    gateway = start_gateway(
        make_settings(signals={"feedback_rate_per_min": 100_000, "feedback_burst": 100_000})
    )
    client = httpx.Client(base_url=gateway.url, timeout=20)
    accepted: list[str] = []

    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None, database=None)
    @given(fb=feedback)
    @example(fb={"call_id": "call_x", "kind": "thumbs", "value": "up", "data": {"k": [1]}})
    def one(fb):
        resp = client.post(
            "/v1/feedback", content=orjson.dumps(fb), headers={"content-type": "application/json"}
        )
        assert resp.status_code in (200, 400), resp.text
        if resp.status_code == 200 and not resp.json().get("duplicate"):  # a repeat is stored once
            accepted.append(resp.json()["id"])

    one()
    gateway.flush()
    with LogStore.open(log_dir) as store:
        assert sorted(r["event_id"] for r in store.sql("SELECT event_id FROM events")) == sorted(accepted)
    assert accepted and gateway.ctx.store_status()["quarantined"] == 0
