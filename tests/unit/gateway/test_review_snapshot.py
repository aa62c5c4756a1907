"""The dashboard's kept aggregates: a restarted process shows the last numbers at once and
recomputes them; files of other inputs, other versions or broken ones are not used."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway.store import layout
from gateway.store.outcomes import ArmRate
from gateway.web._snapshot import Snapshots, decode, encode
from gateway.web._store import Cached


def _value(n: int) -> dict[str, object]:
    rate = ArmRate(0.25, 3.0, 12.0, 7, 0.1, 0.5)
    return {
        "lo": 1,
        "routes": {
            "chat": {"rates": {(None, "baseline", "thumbs_up_rate"): rate}, "share": [(3600, 5.0, 1, 20)]}
        },
        "series": {
            (3600 * k, "candidate", "error_rate"): ArmRate(None, 0.0, 0.0, 0, None, None) for k in range(3)
        },
        "table": [{"route": "chat", "p50_ms": float("nan"), "cost": float("inf"), "n": n}],
        "~odd": "a key that looks like a tag",
    }


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and type(a) is type(b):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


def test_values_come_back_as_they_were_kept():
    value = _value(1)
    back = decode(json.loads(json.dumps(encode(value), allow_nan=False)))
    assert _same(back, value)
    with pytest.raises(TypeError):
        encode({"x": object()})


def test_a_restarted_process_shows_the_kept_numbers_and_recomputes(tmp_path):
    log = str(tmp_path / "log")
    calls = []
    gate = threading.Event()

    def compute() -> dict[str, object]:
        calls.append(1)
        gate.wait(10)
        return _value(len(calls))

    async def first() -> None:
        gate.set()
        got = await Cached(snapshots=Snapshots(log)).get(("dashboard", "24h"), compute, keep=True)
        assert got is not None and got[0]["table"][0]["n"] == 1

    asyncio.run(first())
    kept = os.listdir(os.path.join(log, "review"))
    assert len(kept) == 1 and kept[0].startswith("dashboard-") and kept[0].endswith(".json")

    async def restarted() -> None:
        gate.clear()  # the recomputation is slow: the kept value must not wait for it
        cache = Cached(ttl=0.0, snapshots=Snapshots(log))  # (older than the ttl: recomputed)
        got = await cache.get(("dashboard", "24h"), compute, keep=True, wait=0.01)
        assert got is not None and got[0]["table"][0]["n"] == 1
        assert _same(got[0], _value(1))
        gate.set()
        for _ in range(200):  # ... and the new numbers replace it
            await asyncio.sleep(0.02)
            got = await cache.get(("dashboard", "24h"), compute, keep=True)
            if got is not None and got[0]["table"][0]["n"] == 2:
                break
        else:
            raise AssertionError("the kept value was never recomputed")

    asyncio.run(restarted())
    assert len(calls) >= 2


def test_only_a_snapshot_of_the_same_inputs_is_used(tmp_path, caplog):
    log = str(tmp_path / "log")
    snaps = Snapshots(log)
    snaps.save(("dashboard", "24h", (("chat", "user"),)), _value(1), 100.0)
    assert snaps.load(("dashboard", "24h", (("chat", "user"),)))[1] == 100.0
    assert snaps.load(("dashboard", "24h", (("chat", "session"),))) is None  # other inputs
    assert snaps.load(("dashboard", "7d")) is None
    (path,) = [os.path.join(log, "review", f) for f in os.listdir(os.path.join(log, "review"))]
    with open(path) as f:
        doc = json.loads(f.read())
    with open(path, "w") as f:
        f.write(json.dumps({**doc, "version": 0}))
    assert snaps.load(("dashboard", "24h", (("chat", "user"),))) is None  # another version
    with open(path, "w") as f:
        f.write("{half a fil")
    assert snaps.load(("dashboard", "24h", (("chat", "user"),))) is None  # broken: a warning, no error
    assert "not used" in caplog.text


def test_without_keep_nothing_is_written(tmp_path):
    log = str(tmp_path / "log")

    async def go() -> None:
        got = await Cached(snapshots=Snapshots(log)).get(("facets",), lambda: {"routes": []})
        assert got is not None

    asyncio.run(go())
    assert not os.path.exists(os.path.join(log, "review"))


def test_files_are_written_in_row_groups_a_lookup_can_skip(tmp_path):
    n = 2 * layout.ROW_GROUP_ROWS + 5
    data = pa.table({"ts": pa.array(range(n), pa.int64()), "call_id": [f"call_{i:08d}" for i in range(n)]})
    path = layout.write_parquet(str(tmp_path), "calls", "2026-01-01", "seg", data)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 3
    stats = [meta.row_group(i).column(0).statistics for i in range(3)]
    assert [(s.min, s.max) for s in stats] == [
        (0, layout.ROW_GROUP_ROWS - 1),
        (layout.ROW_GROUP_ROWS, 2 * layout.ROW_GROUP_ROWS - 1),
        (2 * layout.ROW_GROUP_ROWS, n - 1),
    ]
