"""The review pages' reads on a real S3-compatible server (moto_server on loopback): the text
search (one ``OR`` query per chunk there, `gateway.web._queries.search_calls`), the sample's
pool and the facets give what they give on local disk for the same log."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest

from bench.review_gen import generate
from gateway.store import LogStore
from gateway.web import _queries as q
from gateway.web import _sample
from tests.support.s3 import MotoServer

pytestmark = pytest.mark.real_clock  # moto_server is a subprocess: it keeps the real clock

NOW = time.time()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LogStore, LogStore]]:
    server = MotoServer().start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        local = str(tmp_path_factory.mktemp("review-s3") / "log")
        generate(local, 8_000, days=2.0, now=NOW, batch=1_500)
        bucket = server.create_bucket()
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}/log")
        pafs.copy_files(local, f"{bucket}/log", destination_filesystem=fs)
        with LogStore.open(local) as disk, LogStore.open(f"s3://{bucket}/log") as s3:
            yield disk, s3
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


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
