"""The log agent's DuckDB queries are bounded (``store.query_memory_mb``, ``query_threads``, ``query_temp_dir``).

Unbounded, a cold 7-day review dashboard over 10M calls took the agent process to 3.7 GB
(docs/benchmarks.md): a pod's memory limit would kill the host's log agent with it. Bounded,
a query past the limit spills to the temp directory, and one that cannot is an error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.agent.core import LogAgent
from gateway.config import Settings
from gateway.store import LogStore, LogStoreError, layout
from gateway.store.reader import QueryLimits, limit_queries, query_limits, remove_stale_temp_dirs

# ~100 MB of hash table: 1M string keys with their sums (0.1-1 s)
BIG_GROUP_BY = (
    "SELECT count(*) AS n FROM (SELECT 'user-' || (i % 1000000) AS k, count(*) AS c, sum(i) AS s "
    "FROM range(3000000) t(i) GROUP BY k)"
)


@pytest.fixture(autouse=True)
def restore_limits() -> Iterator[None]:
    before = query_limits()
    yield
    limit_queries(before)


def empty_log(tmp_path: Path) -> str:
    log_dir = str(tmp_path / "log")
    layout.ensure_store(log_dir)
    return log_dir


def settings(log_dir: str, **store: object) -> Settings:
    return Settings.model_validate(
        {"store": {"log_dir": log_dir, "compact_interval": 0, **store}, "server": {"auth": "open"}}
    )


def current(store: LogStore, name: str) -> object:
    return store.sql(f"SELECT current_setting('{name}') AS v")[0]["v"]


def test_a_store_opened_after_limit_queries_has_its_bounds(tmp_path: Path) -> None:
    log_dir = empty_log(tmp_path)
    spill = str(tmp_path / "spill")
    limit_queries(QueryLimits(memory_mb=64, threads=1, temp_dir=spill))
    with LogStore.open(log_dir) as store, LogStore.open(log_dir) as other:
        assert current(store, "memory_limit") == "64.0 MiB"
        assert current(store, "threads") == 1
        mine, theirs = str(current(store, "temp_directory")), str(current(other, "temp_directory"))
        # a directory of its own per DuckDB instance, named by the process
        assert os.path.dirname(mine) == os.path.dirname(theirs) == spill
        assert mine != theirs and os.path.basename(mine).startswith(f"{os.getpid()}-")


def test_the_agent_bounds_its_process_from_its_settings(tmp_path: Path) -> None:
    log_dir = empty_log(tmp_path)
    LogAgent(settings(log_dir, query_memory_mb=100, query_threads=1, query_temp_dir=str(tmp_path / "t")))
    assert query_limits() == QueryLimits(memory_mb=100, threads=1, temp_dir=str(tmp_path / "t"))
    LogAgent(settings(log_dir))  # the defaults: 512 MiB, every core, a directory under the system's temp
    limits = query_limits()
    assert (limits.memory_mb, limits.threads) == (512, 0)
    assert limits.temp_dir is not None and limits.temp_dir.endswith("shadowtune-duckdb")
    with LogStore.open(log_dir) as store:
        assert current(store, "memory_limit") == "512.0 MiB"


def test_a_query_past_the_bound_spills_and_answers(tmp_path: Path) -> None:
    log_dir = empty_log(tmp_path)
    limit_queries(QueryLimits(memory_mb=32, threads=1, temp_dir=str(tmp_path / "spill")))
    with LogStore.open(log_dir) as store:
        assert store.sql(BIG_GROUP_BY) == [{"n": 1_000_000}]


def test_two_stores_spill_at_once_and_both_answer(tmp_path: Path) -> None:
    log_dir = empty_log(tmp_path)
    spill = tmp_path / "spill"
    limit_queries(QueryLimits(memory_mb=32, threads=1, temp_dir=str(spill)))
    answers: list[object] = []
    with LogStore.open(log_dir) as a, LogStore.open(log_dir) as b:
        threads = [threading.Thread(target=lambda s=s: answers.append(s.sql(BIG_GROUP_BY))) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert answers == [[{"n": 1_000_000}]] * 2
    assert list(spill.iterdir()) == []  # each instance removed its own directory as it closed


def test_what_a_killed_process_left_is_removed_when_the_next_agent_starts(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = spill / f"{int(gone.stdout)}-0"
    live = spill / f"{os.getpid()}-99"
    other = spill / "not-ours"
    for d in (dead, live, other):
        d.mkdir(parents=True)
        (d / "duckdb_temp_block-1.block").write_bytes(b"x")
    limit_queries(QueryLimits(memory_mb=64, temp_dir=str(spill)))
    assert not dead.exists()
    assert live.exists() and other.exists()
    assert remove_stale_temp_dirs(str(spill)) == 0


def test_the_bound_is_real_a_query_that_cannot_spill_fails_instead_of_growing(tmp_path: Path) -> None:
    log_dir = empty_log(tmp_path)
    limit_queries(QueryLimits(memory_mb=32, threads=1, temp_dir=""))  # "": DuckDB may not spill
    with LogStore.open(log_dir) as store, pytest.raises(LogStoreError, match="Out of Memory"):
        store.sql(BIG_GROUP_BY)


def test_no_bound_by_default_in_other_processes(tmp_path: Path) -> None:
    """CLI commands (``logs sql``, ``eval``, ``train``) keep DuckDB's defaults."""
    log_dir = empty_log(tmp_path)
    limit_queries(QueryLimits())
    with LogStore.open(log_dir) as store:
        assert current(store, "memory_limit") != "512.0 MiB"
        assert store.sql(BIG_GROUP_BY) == [{"n": 1_000_000}]


def test_the_review_pages_say_a_query_ran_out_of_its_bound_and_do_not_retry_it_on_every_request(
    tmp_path: Path,
) -> None:
    """A dashboard past the bound (the object-store path cannot spill some of its reads: docs/benchmarks.md)
    answers 503 with the setting to raise, in the error shape, and is not recomputed on every request."""
    import asyncio

    from gateway.errors import Overloaded
    from gateway.web._store import Cached, SharedStore

    log_dir = empty_log(tmp_path)
    limit_queries(QueryLimits(memory_mb=32, threads=1, temp_dir=""))
    shared = SharedStore(log_dir)
    runs: list[int] = []

    def compute() -> object:
        runs.append(1)
        return shared.run(lambda s: s.sql(BIG_GROUP_BY))

    cache = Cached(ttl=60)

    async def twice() -> list[BaseException]:
        errors = []
        for _ in range(2):
            try:
                await cache.get(("dashboard", "7d"), compute, wait=60)
            except Overloaded as exc:
                errors.append(exc)
            await asyncio.sleep(0.05)  # the failed computation's callback has run
        return errors

    errors = asyncio.run(twice())
    shared.close()
    assert len(errors) == 2 and runs == [1]  # the second request got the kept failure
    assert errors[0].status == 503 and errors[0].code == "query_memory"
    assert "store.query_memory_mb" in str(errors[0]) and "32 MiB" in str(errors[0])
