"""The review pages' reads on a real S3-compatible server (moto_server on loopback): the text
search (one ``OR`` query per chunk there, `gateway.web._queries.search_calls`), the sample's
pool, the facets and the dashboard give what they give on local disk for the same log, and
the dashboard's outcome query over a week of a 1M-call log fits the agent's memory bound
(DuckDB's reader through `gateway.store.objectfs`: it spills, where pyarrow datasets did not)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest

from bench.review_gen import generate
from gateway.store import LogStore, LogStoreError
from gateway.store.reader import QueryLimits, limit_queries, query_limits
from gateway.store.table import DeltaLog
from gateway.web import _queries as q
from gateway.web import _sample, _series
from tests.support.s3 import MotoServer

pytestmark = pytest.mark.real_clock  # moto_server is a subprocess: it keeps the real clock

NOW = time.time()


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    moto = MotoServer().start()
    saved = {k: os.environ.get(k) for k in moto.env}
    os.environ.update(moto.env)
    try:
        yield moto
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        moto.stop()


@pytest.fixture(scope="module")
def logs(server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LogStore, LogStore]]:
    local = str(tmp_path_factory.mktemp("review-s3") / "log")
    generate(local, 8_000, days=2.0, now=NOW, batch=1_500)
    bucket = server.create_bucket()
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}/log")
    pafs.copy_files(local, f"{bucket}/log", destination_filesystem=fs)
    with LogStore.open(local) as disk, LogStore.open(f"s3://{bucket}/log") as s3:
        yield disk, s3


def _ids(rows: list[dict]) -> list[str]:
    return [r["call_id"] for r in rows]


@pytest.mark.parametrize("text", ["order 12", "ORDER 4", "nothing like this"])
def test_a_text_search_on_s3_finds_what_it_finds_on_disk_and_only_matches(logs, text):
    disk, s3 = logs
    flt = q.CallFilter(q=text, period="7d")
    on_disk, on_s3 = q.search_calls(disk, flt), q.search_calls(s3, flt)
    assert (on_s3.full, on_s3.complete) == (on_disk.full, on_disk.complete)
    assert on_s3.full or on_s3.complete  # 8,000 calls: one page's budget fills it or covers them
    assert _ids(on_s3.rows) == _ids(on_disk.rows)
    where, params = flt.where()
    expected = disk.sql(
        f"SELECT call_id FROM calls WHERE {where} ORDER BY ts DESC, call_id DESC LIMIT 51", params
    )
    assert _ids(on_s3.rows) == _ids(expected)


def test_the_sample_pool_and_the_facets_on_s3_are_the_ones_on_disk(logs):
    disk, s3 = logs
    until = int(NOW * 1e6) + 1
    lo = until - 3 * 86_400_000_000
    assert _ids(_sample.pool(s3, lo, until)) == _ids(_sample.pool(disk, lo, until))
    assert (
        q.facets(s3)
        == q.facets(disk)
        == {
            "routes": ["extract", "summarize", "support"],
            "variants": ["baseline", "candidate"],
        }
    )


@pytest.mark.parametrize("text", ["order 12", "ORDER 4"])
def test_a_text_search_on_s3_walked_page_by_page_on_a_spent_budget_shows_each_match_once(logs, text):
    disk, s3 = logs
    flt = q.CallFilter(q=text, period="7d")
    shown: list[str] = []
    for _ in range(500):  # follow the page's links, as a reviewer would
        found = q.search_calls(s3, flt, budget_s=0.0, first_rows=500)
        page = found.rows[: q.PAGE_SIZE]
        shown += _ids(page)
        if found.full:
            flt = dataclasses.replace(flt, before=page[-1]["ts_us"], before_id=page[-1]["call_id"])
        elif found.complete:
            break
        else:
            flt = dataclasses.replace(flt, before=found.searched_from_us, before_id="")
    where, params = flt.where()
    expected = disk.sql(f"SELECT call_id FROM calls WHERE {where} ORDER BY ts DESC, call_id DESC", params)
    assert shown == _ids(expected) and len(shown) > q.PAGE_SIZE


ROUTES = {"support": "user", "extract": "user", "summarize": "user"}


def rounded(value: object) -> object:
    """``value`` with its floats to 9 significant digits (sums in another order differ in the last bits)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return rounded(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.9g}")
    return value


def test_the_dashboard_on_s3_gives_the_numbers_it_gives_on_disk(logs):
    disk, s3 = logs
    on_disk, on_s3 = (rounded(_series.dashboard(st, "7d", int(NOW * 1e6), ROUTES)) for st in (disk, s3))
    assert on_s3 == on_disk
    assert sum(r["served"] for r in on_s3["table"]) > 6_000 and on_s3["unrouted"]
    assert on_s3["routes"]["support"]["rates"] and on_s3["routes"]["support"]["rate_series"]


def test_a_week_of_1m_calls_on_s3_fits_a_64_mib_bound_and_gives_the_unbounded_numbers(server, tmp_path):
    """At this size the pyarrow-dataset reads failed at 64 MiB (and 10M calls at 1 GiB)."""
    uri = f"s3://{server.create_bucket()}/log"
    generate(uri, 1_000_000, days=7.0, now=NOW, batch=250_000)
    lo, hi, bucket = _series.window("7d", int(NOW * 1e6))
    before = query_limits()
    limit_queries(QueryLimits(memory_mb=64, threads=1, temp_dir=str(tmp_path / "spill")))
    try:
        with LogStore.open(uri) as s3:
            bounded = _series.outcome_rates(s3, list(ROUTES), lo, hi, bucket, "user", whole=True)
            assert s3.sql("SELECT current_setting('memory_limit') AS v")[0]["v"] == "64.0 MiB"
    finally:
        limit_queries(before)
    with LogStore.open(uri) as s3:
        unbounded = _series.outcome_rates(s3, list(ROUTES), lo, hi, bucket, "user", whole=True)
        served = s3.sql(
            "SELECT count(*) AS n FROM calls WHERE served AND route = 'summarize' "
            "AND ts >= make_timestamptz($lo) AND ts < make_timestamptz($hi)",
            {"lo": lo, "hi": hi},
        )[0]["n"]
    assert rounded(bounded) == rounded(unbounded)
    assert bounded["summarize"][(None, "baseline", "error_rate")].n == served > 250_000


def test_a_store_whose_files_were_compacted_and_vacuumed_away_on_s3_reads_its_next_snapshot(
    server, logs, tmp_path
):
    disk, _ = logs
    uri = f"s3://{server.create_bucket()}/log"
    fs, _ = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(disk.log_dir, uri.removeprefix("s3://"), destination_filesystem=fs)
    with LogStore.open(uri) as s3:
        assert s3.count() == 8_000
        old = {f.uri for f in s3.data_files["calls"]}
        log = DeltaLog.for_log(uri, "calls")
        assert log.compact() > 0
        assert log.vacuum(retention_hours=0) > 0
        gone = {u for u in old if not fs.get_file_info(u.removeprefix("s3://")).is_file}
        assert gone  # some of the files this store's snapshot lists
        assert s3.count() == 8_000  # read again from a new snapshot
        assert not gone & {f.uri for f in s3.data_files["calls"]}
        with pytest.raises(LogStoreError) as err:  # an error inside the filesystem keeps its own line
            s3.sql("SELECT count(*) FROM read_parquet('stlog://no-such-bucket/x.parquet')")
        assert not str(err.value).startswith("Traceback") and "LINE" not in str(err.value)
