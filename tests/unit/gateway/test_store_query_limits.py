"""The log agent's DuckDB queries are bounded (``store.query_memory_mb``, ``query_threads``, ``query_temp_dir``).

Unbounded, a cold 7-day review dashboard over 10M calls took the agent process to 3.7 GB
(docs/benchmarks.md): a pod's memory limit would kill the host's log agent with it. Bounded,
a query past the limit spills to the temp directory, and one that cannot is an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.agent.core import LogAgent
from gateway.config import Settings
from gateway.store import LogStore, LogStoreError, layout
from gateway.store.reader import QueryLimits, limit_queries, query_limits

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
    with LogStore.open(log_dir) as store:
        assert current(store, "memory_limit") == "64.0 MiB"
        assert current(store, "threads") == 1
        assert current(store, "temp_directory") == spill


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
