"""The call log on a real S3-compatible server (moto_server on loopback): a missing bucket is a
clear error unless ``create_bucket``; writes, reads, compaction and retention are Delta commits
on ``s3://``; the evals read an ``s3://`` log; credentials never reach the log or an error."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from gateway.store import LogStore, LogStoreError, LogWriter, layout
from gateway.store.table import DeltaLog
from tests.support.s3 import SECRET, MotoServer

pytestmark = pytest.mark.real_clock  # moto_server is a subprocess: it keeps the real clock

NOW_US = time.time_ns() // 1000
DAY_US = 86_400 * 1_000_000


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    for key, value in moto.env.items():
        monkeypatch.setenv(key, value)
    return moto


def call(i: int, ts: int = NOW_US, route: str = "bot") -> dict:
    return {"call_id": f"call_{i:04d}", "ts": ts + i, "status": 200, "route": route, "served": True}


def ids(log_dir: str) -> list[str]:
    with LogStore.open(log_dir, wal_dir="/nonexistent") as store:
        return [r["call_id"] for r in store.sql("SELECT call_id FROM calls ORDER BY call_id")]


def test_a_missing_bucket_is_a_clear_error_at_start_unless_creation_is_allowed(s3_env, tmp_path, caplog):
    log_dir = "s3://no-such-bucket-here/log"
    w = LogWriter(log_dir, wal_dir=str(tmp_path / "wal"), flush_interval=3600, compact_interval=0)
    with pytest.raises(LogStoreError, match=r"'no-such-bucket-here' .* does not exist.*create_bucket"):
        w.start()
    with caplog.at_level(logging.DEBUG):
        w = LogWriter(
            log_dir,
            wal_dir=str(tmp_path / "wal2"),
            flush_interval=3600,
            compact_interval=0,
            create_bucket=True,
        )
        with w:
            w.append("calls", call(1))
    assert ids(log_dir) == ["call_0001"]
    assert SECRET not in caplog.text


def test_rows_compaction_and_retention_on_s3_are_commits_and_every_row_stays_once(s3_env, tmp_path):
    log_dir = f"s3://{s3_env.create_bucket()}/shadowtune"
    old = NOW_US - 40 * DAY_US
    with LogWriter(log_dir, wal_dir=str(tmp_path / "wal"), flush_interval=3600, compact_interval=0) as w:
        for i in range(6):
            w.append("calls", call(i, ts=old if i == 0 else NOW_US))
            w.flush()
        w.append("calls", call(6))
        # before its flush the row is read from this host's WAL tail
        with LogStore.open(log_dir, wal_dir=w.wal_dir) as store:
            assert store.count() == 7
    assert ids(log_dir) == [f"call_{i:04d}" for i in range(7)]
    calls = DeltaLog.for_log(log_dir, "calls")
    assert len(calls.files()) == 7
    assert layout.compact(log_dir, str(tmp_path / "wal")) == 6  # today's six files -> one
    assert len(calls.files()) == 2
    assert ids(log_dir) == [f"call_{i:04d}" for i in range(7)]
    assert layout.prune(log_dir, (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).date()) == 1
    assert ids(log_dir) == [f"call_{i:04d}" for i in range(1, 7)]
    ops = [h.get("shadowtune.operation") for h in calls.load().history()]
    assert ops[:2] == ["retention", "compaction"]
    assert ops.count("append") == 7


def test_the_evals_read_an_s3_log(s3_env, tmp_path):
    from evals.outcomes_cli import outcomes

    log_dir = f"s3://{s3_env.create_bucket()}/log"
    with LogWriter(log_dir, wal_dir=str(tmp_path / "wal"), flush_interval=3600, compact_interval=0) as w:
        for i in range(4):
            w.append("calls", {**call(i), "variant": "baseline" if i % 2 else "candidate"})
        w.append(
            "events",
            {"event_id": "e1", "call_id": "call_0001", "ts": NOW_US, "kind": "thumbs", "value": "up"},
        )
    result = CliRunner().invoke(outcomes, ["--log-dir", log_dir, "--route", "bot", "--json"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert '"baseline"' in result.output or "baseline" in result.output


def test_a_bad_credential_is_an_error_that_does_not_show_the_secret(s3_env, tmp_path, monkeypatch):
    log_dir = f"s3://{s3_env.create_bucket()}/log"
    with LogWriter(log_dir, wal_dir=str(tmp_path / "wal"), flush_interval=3600, compact_interval=0) as w:
        w.append("calls", call(1))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(Exception) as info:
        LogStore.open(log_dir)
    assert SECRET not in str(info.value)


def test_the_trainer_builds_a_dataset_from_an_s3_log(s3_env, tmp_path, monkeypatch):
    import json

    from trainer.dataset import build_dataset

    monkeypatch.setenv("SHADOWTUNE_DATASETS_DIR", str(tmp_path / "datasets"))
    log_dir = f"s3://{s3_env.create_bucket()}/log"
    with LogWriter(log_dir, wal_dir=str(tmp_path / "wal"), flush_interval=3600, compact_interval=0) as w:
        for i in range(6):
            messages = [{"role": "user", "content": f"question {i}: " + "x" * i}]
            answer = {"role": "assistant", "content": f"answer {i}"}
            w.append(
                "calls",
                {
                    **call(i),
                    "variant": "baseline",
                    "endpoint": "chat.completions",
                    "request": json.dumps({"model": "m", "messages": messages}),
                    "response": json.dumps({"choices": [{"index": 0, "message": answer}]}),
                },
            )
    version = build_dataset(log_dir, "from-s3", near_dup_threshold=None, warn=False)
    assert version.manifest["counts"]["examples"] == 6
    assert version.manifest["source"]["log_dir"] == log_dir
    assert str(tmp_path / "datasets") in str(version.path)
