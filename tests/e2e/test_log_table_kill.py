"""The log as a Delta table under kill -9: every answered call exactly once in the table.

* kill -9 of ``shadowtune serve`` at random moments under load, compacting every few
  hundred milliseconds, many rounds, then one clean restart;
* kill -9 of a process in the middle of compactions (appends between rounds are known
  exactly, so the table must hold exactly those rows after every round);
* two gateway processes x 2 workers appending to one ``s3://`` table on a real
  S3-compatible server (moto_server) while both compact; one is killed mid-way and
  restarted on its WAL directory: 0 missing, 0 duplicated.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from gateway.store import LogStore, layout
from gateway.store.table import DeltaLog
from tests.e2e.test_serve_process import Load
from tests.support.s3 import MotoServer
from tests.support.servers import ServeProcess, wait_until_responds

pytestmark = pytest.mark.slow
ROUNDS = int(os.environ.get("SHADOWTUNE_KILL_ROUNDS", "8"))


class Serve(ServeProcess):
    """`ServeProcess` that waits longer for the start: these tests start many gateways on a busy machine."""

    def start(self) -> Serve:
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until_responds(self.url + "/healthz", timeout=90)
        return self


def serve(upstream_url: str, log_dir: str, env: dict[str, str], *extra: str) -> Serve:
    args = ["--upstream", upstream_url, "--log-dir", log_dir, "--open", "--log-level", "warning", *extra]
    return Serve(args, env={"SHADOWTUNE_STORE__FLUSH_INTERVAL": "0.1", **env})


def logged(log_dir: str, wal_dir: str | None = None) -> Counter[str]:
    with LogStore.open(log_dir, wal_dir=wal_dir) as store:
        return Counter(r["call_id"] for r in store.sql("SELECT call_id FROM calls"))


def check_exactly_once(received: list[str], ids: Counter[str]) -> None:
    dup = {k: n for k, n in ids.items() if n > 1}
    missing = set(received) - set(ids)
    assert not dup, f"{len(dup)} call(s) logged more than once, e.g. {list(dup.items())[:3]}"
    assert not missing, f"{len(missing)} answered call(s) missing from the log"


def test_kill_9_at_random_moments_with_frequent_compaction_keeps_every_call_once(fake_upstream, log_dir):
    rng = random.Random(os.environ.get("SHADOWTUNE_KILL_SEED", "10"))
    env = {"SHADOWTUNE_STORE__COMPACT_INTERVAL": "0.3"}
    received: list[str] = []
    for round_ in range(ROUNDS):
        proc = serve(fake_upstream.base_url, log_dir, env, "--workers", str(1 + round_ % 2)).start()
        try:
            with Load(proc.url) as load:
                load.wait_for(rng.randint(20, 120))
                time.sleep(rng.uniform(0.0, 0.6))
                proc.kill9()
                time.sleep(0.2)
            received += load.received
        finally:
            proc.stop()
    assert len(received) == len(set(received)) >= ROUNDS * 20
    final = serve(fake_upstream.base_url, log_dir, env).start()  # replays the WAL left by the last kill
    final.stop()
    check_exactly_once(received, logged(log_dir))
    with LogStore.open(log_dir) as store:
        assert store.count() == sum(logged(log_dir).values())


COMPACTOR = textwrap.dedent(
    """
    import sys, time
    from gateway.store import layout, table
    from gateway.store.rows import derive, to_table

    log_dir, wal_dir, writer = sys.argv[1:4]
    seq = 0
    while True:  # commit a segment of 5 rows, compact every third one, until killed
        seq += 1
        recs = [
            {"call_id": f"call_{writer}_{seq:05d}_{j}", "ts": time.time_ns() // 1000, "status": 200, "_t": "calls"}
            for j in range(5)
        ]
        data = to_table("calls", [derive("calls", r) for r in recs], derived=True)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        table.commit_segment(log_dir, f"{writer}.{seq:08d}", {"calls": [(day, data)]})
        if seq % 3 == 0:
            layout.compact(log_dir, wal_dir, min_files=2)
    """
)


def test_kill_9_during_commits_and_compactions_leaves_every_row_exactly_once(log_dir, tmp_path):
    """The child's committed app-transaction version says exactly which of its rows must be there."""
    rng = random.Random(11)
    expected: list[str] = []
    layout.ensure_store(log_dir)
    for round_ in range(ROUNDS):
        writer = f"child{round_}"
        child = subprocess.Popen(
            [sys.executable, "-c", COMPACTOR, log_dir, str(tmp_path / f"wal{round_}"), writer],
            env={**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")},
        )
        table = DeltaLog.for_log(log_dir, "calls")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (table.exists() and table.committed_seq(writer) >= 1):
            time.sleep(0.05)  # past the imports: the child has committed once
        time.sleep(rng.uniform(0.2, 2.5))  # then inside a commit, a merge or a vacuum
        child.kill()
        child.wait(10)
        committed = DeltaLog.for_log(log_dir, "calls").committed_seq(writer)
        expected += [f"call_{writer}_{seq:05d}_{j}" for seq in range(1, committed + 1) for j in range(5)]
        ids = logged(log_dir, str(tmp_path / "none"))
        check_exactly_once(expected, ids)
        assert sum(ids.values()) == len(expected)
    history = [h.get("shadowtune.operation") for h in DeltaLog.for_log(log_dir, "calls").load().history()]
    assert history.count("compaction") >= ROUNDS


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


def test_two_gateways_x_2_workers_on_one_s3_table_compacting_one_killed_lose_and_double_nothing(
    fake_upstream, moto, tmp_path, monkeypatch
):
    log_dir = f"s3://{moto.create_bucket()}/shadowtune"
    common = {
        **moto.env,
        "SHADOWTUNE_STORE__COMPACT_INTERVAL": "0.5",
        "SHADOWTUNE_STORE__FLUSH_INTERVAL": "0.3",
        "SHADOWTUNE_STORE__STATE_DIR": str(tmp_path / "state"),
    }
    envs = [{**common, "SHADOWTUNE_STORE__WAL_DIR": str(tmp_path / f"wal-{h}")} for h in ("a", "b")]
    hosts = [serve(fake_upstream.base_url, log_dir, e, "--workers", "2").start() for e in envs]
    received: list[str] = []
    try:
        with Load(hosts[0].url, threads=3) as load_a, Load(hosts[1].url, threads=3) as load_b:
            load_a.wait_for(150, timeout=60)
            load_b.wait_for(150, timeout=60)
            hosts[0].kill9()
            time.sleep(0.2)
            n_b = len(load_b.received)
            load_b.wait_for(n_b + 100, timeout=60)  # host b keeps appending and compacting alone
        received = load_a.received + load_b.received
    finally:
        for h in hosts:
            h.stop()
    assert len(received) == len(set(received))
    again = serve(fake_upstream.base_url, log_dir, envs[0]).start()  # host a replays its WAL
    again.stop()
    for k, v in moto.env.items():
        monkeypatch.setenv(k, v)
    ids = logged(log_dir, wal_dir=str(tmp_path / "nowhere"))
    check_exactly_once(received, ids)
    history = [h.get("shadowtune.operation") for h in DeltaLog.for_log(log_dir, "calls").load().history()]
    assert "compaction" in history
