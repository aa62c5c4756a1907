"""The random-sample queue (`gateway.web._sample`) is a uniform sample of its window.

A known log (`bench.review_gen`, written through the store's commit path): 6,000 calls over
two days, in files of unequal sizes (segments of 1,300 rows cut at the day boundary), about
two thirds of them eligible (served and routed). Many independent queues (each window's
``until`` one microsecond apart, so each has its own pool; each its own seed) are counted by
the file their calls come from and compared with the files' share of eligible calls by a
chi-square test. The same test, on the same log, rejects a sampler that takes as many calls
from each file and one that takes the newest calls, so it can fail.
"""

from __future__ import annotations

import glob
import os
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from scipy.stats import chisquare

from bench.review_gen import generate
from gateway.store import LogStore
from gateway.web import _sample

NOW = time.time()
UNTIL = int(NOW * 1e6) + 1
LO = UNTIL - 3 * 86_400_000_000
DRAWS = 60


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory):
    log = str(tmp_path_factory.mktemp("sample") / "log")
    generate(log, 6_000, days=2.0, now=NOW, batch=1_300)
    file_of: dict[str, str] = {}
    for path in glob.glob(os.path.join(log, "calls", "date=*", "*.parquet")):
        t = pq.read_table(path, columns=["call_id", "served", "route"]).to_pylist()
        file_of.update({r["call_id"]: path for r in t if r["served"] and r["route"] is not None})
    with LogStore.open(log) as s:
        yield s, file_of


def _expected(file_of: dict[str, str], n: int) -> tuple[list[str], list[float]]:
    sizes = Counter(file_of.values())
    files = sorted(sizes)
    total = sum(sizes.values())
    return files, [n * sizes[f] / total for f in files]


def _pvalue(file_of: dict[str, str], picked: list[str]) -> float:
    files, expected = _expected(file_of, len(picked))
    counts = Counter(file_of[c] for c in picked)
    return float(chisquare([counts[f] for f in files], expected).pvalue)


def test_the_files_are_of_unequal_sizes_and_the_sample_only_takes_eligible_calls(known):
    store, file_of = known
    sizes = sorted(Counter(file_of.values()).values())
    assert len(sizes) >= 5 and sizes[-1] > 1.5 * sizes[0]
    queue = _sample.pick(_sample.pool(store, LO, UNTIL), "seed")
    assert len(queue) == _sample.MAX_ITEMS and len({r["call_id"] for r in queue}) == _sample.MAX_ITEMS
    assert all(r["call_id"] in file_of for r in queue)  # served and routed, every one
    again = _sample.pick(_sample.pool(store, LO, UNTIL), "seed")
    assert [r["call_id"] for r in again] == [r["call_id"] for r in queue]  # the URL pins it
    other = _sample.pick(_sample.pool(store, LO, UNTIL), "other")
    assert [r["call_id"] for r in other] != [r["call_id"] for r in queue]


def test_queues_fall_on_the_files_as_their_eligible_calls_do(known):
    store, file_of = known
    picked: list[str] = []
    for i in range(DRAWS):
        picked += [r["call_id"] for r in _sample.pick(_sample.pool(store, LO, UNTIL + i), f"s{i}")]
    assert len(picked) == DRAWS * _sample.MAX_ITEMS
    assert _pvalue(file_of, picked) > 1e-3


def test_the_chi_square_rejects_a_per_file_sampler_and_a_newest_first_one(known):
    store, file_of = known
    by_file: dict[str, list[str]] = {}
    for cid, f in sorted(file_of.items()):
        by_file.setdefault(f, []).append(cid)
    n = DRAWS * _sample.MAX_ITEMS
    per_file = [cid for ids in by_file.values() for cid in (ids * n)[: n // len(by_file)]]
    assert _pvalue(file_of, per_file) < 1e-6
    newest = [r["call_id"] for r in store.sql("SELECT call_id FROM calls ORDER BY ts DESC")]
    newest_first = [c for c in newest if c in file_of][: _sample.MAX_ITEMS] * DRAWS
    assert _pvalue(file_of, newest_first) < 1e-6


def test_a_pool_is_kept_next_to_the_log_and_read_back_as_it_was(known):
    from gateway.web._snapshot import Snapshots

    store, _ = known
    rows = _sample.pool(store, LO, UNTIL)
    assert len(rows) == _sample.POOL and all("request" not in r and r["summary"] for r in rows)
    kept = Snapshots(store.log_dir)
    kept.save(("sample-pool", "24h"), (UNTIL, rows), 12.5)
    assert kept.load(("sample-pool", "24h")) == ((UNTIL, rows), 12.5)
