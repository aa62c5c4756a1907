"""Delta Lake (delta-rs) against Apache Iceberg (pyiceberg, SQL catalog) for the call log.

Measures, on a local directory and on an S3-compatible server on loopback (moto_server):

1. append commit latency: 4 writer processes, each committing one Parquet file of
   ``--rows`` ~2 KB rows once a second for ``--seconds`` seconds (p50/p99/max, failures),
   and whether every row is there afterwards;
2. compaction of the resulting files into one per partition, with the 4 writers still
   appending, and two compactors racing on the same snapshot: rows afterwards must equal
   rows appended (a lost or duplicated row is counted);
3. reading from DuckDB without a DuckDB extension: the time to list the snapshot's files
   through the library and run ``count(*)`` plus a group-by over them.

Run: ``python bench/table_format_bench.py [--seconds 20] [--no-s3] [--formats delta,iceberg]``. The
Iceberg half needs ``pip install "pyiceberg[sql-sqlite,pyarrow]"`` (not a project dependency); the
S3 half needs ``moto[server]`` (the ``dev`` extra). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import duckdb
import pyarrow as pa

DAY = "2026-11-30"
SCHEMA = pa.schema(
    [("call_id", pa.string()), ("route", pa.string()), ("body", pa.string()), ("date", pa.string())]
)
DATA_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "date"])


def batch(rows: int, tag: str) -> pa.Table:
    return pa.table(
        {
            "call_id": [f"{tag}-{i}" for i in range(rows)],
            "route": [f"r{i % 3}" for i in range(rows)],
            "body": ["x" * 2000] * rows,
        },
        schema=DATA_SCHEMA,
    )


# -- Delta ---------------------------------------------------------------------------------
def delta_setup(uri: str, so: dict[str, str]) -> None:
    from deltalake import DeltaTable

    DeltaTable.create(uri, schema=SCHEMA, partition_by=["date"], storage_options=so)


def delta_append(uri: str, so: dict[str, str], data: pa.Table) -> None:
    from deltalake import write_deltalake

    full = data.append_column("date", pa.array([DAY] * data.num_rows))
    write_deltalake(uri, full, mode="append", partition_by=["date"], storage_options=so)


def delta_files(uri: str, so: dict[str, str]) -> list[str]:
    from deltalake import DeltaTable

    return list(DeltaTable(uri, storage_options=so).file_uris())


def delta_compact_builtin(uri: str, so: dict[str, str]) -> None:
    from deltalake import DeltaTable

    DeltaTable(uri, storage_options=so).optimize.compact()


def delta_compact_checked(uri: str, so: dict[str, str]) -> None:
    """The store's compaction (gateway.store.table): remove + add in one commit pinned to its snapshot."""
    from gateway.store.table import DeltaLog

    DeltaLog(uri, storage_options=so).compact(min_files=2, data_schema=DATA_SCHEMA)


# -- Iceberg -------------------------------------------------------------------------------
_CATALOGS: dict[str, Any] = {}


def _catalog(uri: str, so: dict[str, str]) -> Any:
    if uri in _CATALOGS:
        return _CATALOGS[uri]
    from pyiceberg.catalog.sql import SqlCatalog

    props = {"uri": f"sqlite:///{so['_catalog_db']}", "warehouse": uri}
    if uri.startswith("s3://"):
        props.update(
            {
                "s3.endpoint": so["AWS_ENDPOINT_URL"],
                "s3.access-key-id": so["AWS_ACCESS_KEY_ID"],
                "s3.secret-access-key": so["AWS_SECRET_ACCESS_KEY"],
                "s3.region": so["AWS_REGION"],
            }
        )
    _CATALOGS[uri] = SqlCatalog("bench", **props)
    return _CATALOGS[uri]


def iceberg_setup(uri: str, so: dict[str, str]) -> None:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import IdentityTransform

    cat = _catalog(uri, so)
    cat.create_namespace("log")
    schema = cat._convert_schema_if_needed(SCHEMA)
    field_id = schema.find_field("date").field_id
    spec = PartitionSpec(PartitionField(field_id, 1000, IdentityTransform(), "date"))
    cat.create_table("log.calls", schema=SCHEMA, partition_spec=spec)


def iceberg_append(uri: str, so: dict[str, str], data: pa.Table) -> None:
    full = data.append_column("date", pa.array([DAY] * data.num_rows))
    _catalog(uri, so).load_table("log.calls").append(full)


def iceberg_files(uri: str, so: dict[str, str]) -> list[str]:
    tbl = _catalog(uri, so).load_table("log.calls")
    return [t.file.file_path for t in tbl.scan().plan_files()]


def iceberg_compact(uri: str, so: dict[str, str]) -> None:
    """pyiceberg has no rewrite_data_files: read the partition, overwrite it in one snapshot."""
    from pyiceberg.expressions import EqualTo

    tbl = _catalog(uri, so).load_table("log.calls")
    merged = tbl.scan(row_filter=EqualTo("date", DAY)).to_arrow()
    tbl.overwrite(merged, overwrite_filter=EqualTo("date", DAY))


FORMATS = {
    "delta": (
        delta_setup,
        delta_append,
        delta_files,
        {"builtin": delta_compact_builtin, "checked": delta_compact_checked},
    ),
    "iceberg": (iceberg_setup, iceberg_append, iceberg_files, {"overwrite": iceberg_compact}),
}


# -- the runs ------------------------------------------------------------------------------
def writer(fmt: str, uri: str, so: dict[str, str], wid: int, seconds: float, rows: int, q: Any) -> None:
    append = FORMATS[fmt][1]
    FORMATS[fmt][2](uri, so)  # warm up: imports, catalog connection, first table load
    lat, failures, committed = [], 0, 0
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        data = batch(rows, f"w{wid}-{tick}")
        t0 = time.perf_counter()
        try:
            append(uri, so, data)
            committed += rows
            lat.append(time.perf_counter() - t0)
        except Exception as exc:  # a benchmark counts failures, it does not stop on them
            failures += 1
            print(f"  {fmt} writer {wid}: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
        tick += 1
        time.sleep(max(0.0, start + tick - time.monotonic()))
    q.put({"lat": lat, "failures": failures, "rows": committed})


def run_writers(fmt: str, uri: str, so: dict[str, str], seconds: float, rows: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(fmt, uri, so, i, seconds, rows, q)) for i in range(4)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    lat = sorted(x for r in results for x in r["lat"])
    return {
        "commits": len(lat),
        "failures": sum(r["failures"] for r in results),
        "rows": sum(r["rows"] for r in results),
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 1) if lat else None,
        "max_ms": round(lat[-1] * 1000, 1) if lat else None,
    }


def duck_read(fmt: str, uri: str, so: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    files = FORMATS[fmt][2](uri, so)
    plan_s = time.perf_counter() - t0
    con = duckdb.connect()
    t0 = time.perf_counter()
    if uri.startswith("s3://"):
        import pyarrow.dataset as ds
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(
            endpoint_override=so["AWS_ENDPOINT_URL"],
            access_key=so["AWS_ACCESS_KEY_ID"],
            secret_key=so["AWS_SECRET_ACCESS_KEY"],
            region=so["AWS_REGION"],
            scheme="http",
        )
        dataset = ds.dataset([f.removeprefix("s3://") for f in files], filesystem=fs, format="parquet")
        con.register("calls", dataset)
    else:
        listing = ", ".join(f"'{f.removeprefix('file://')}'" for f in files)
        con.execute(f"CREATE VIEW calls AS SELECT * FROM read_parquet([{listing}])")
    n = con.execute("SELECT count(*) FROM calls").fetchone()[0]
    con.execute("SELECT route, count(*) FROM calls GROUP BY route").fetchall()
    return {
        "files": len(files),
        "rows": n,
        "plan_s": round(plan_s, 3),
        "query_s": round(time.perf_counter() - t0, 3),
    }


def compaction(
    fmt: str, uri: str, so: dict[str, str], name: str, seconds: float, rows: int
) -> dict[str, Any]:
    """Two compactors race on one snapshot while 4 writers keep appending; count rows after."""
    compact = FORMATS[fmt][3][name]
    before = duck_read(fmt, uri, so)["rows"]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(fmt, uri, so, 10 + i, seconds, rows, q)) for i in range(4)]
    for p in procs:
        p.start()
    time.sleep(seconds / 3)
    t0 = time.perf_counter()
    comps = [ctx.Process(target=_compact_proc, args=(compact, uri, so)) for _ in range(2)]
    for c in comps:
        c.start()
    for c in comps:
        c.join()
    compact_s = time.perf_counter() - t0
    appended = sum(q.get()["rows"] for _ in procs)
    for p in procs:
        p.join()
    after = duck_read(fmt, uri, so)
    return {
        "compactor": name,
        "compact_s": round(compact_s, 2),
        "expected_rows": before + appended,
        "rows": after["rows"],
        "files_after": after["files"],
    }


def _compact_proc(compact: Any, uri: str, so: dict[str, str]) -> None:
    try:
        compact(uri, so)
    except Exception as exc:  # the other compactor won: counted by the row check
        print(f"  compactor: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--formats", default="delta,iceberg")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="st-formats-")
    stores: list[tuple[str, dict[str, str]]] = [("local", {})]
    moto = None
    if not args.no_s3:
        import boto3

        port = free_port()
        moto = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "moto_server"),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
        for _ in range(100):
            try:
                boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    aws_access_key_id="bench",
                    aws_secret_access_key="bench",
                    region_name="us-east-1",
                ).create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.1)
        s3_env = {**creds, "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}
        os.environ.update(s3_env)  # pyarrow's S3 filesystem (the store's compaction) reads these
        stores.append(("s3", s3_env))
    out: list[dict[str, Any]] = []
    formats = args.formats.split(",")
    if "iceberg" in formats:
        try:
            import pyiceberg  # noqa: F401
        except ImportError:
            print('skipping iceberg: pip install "pyiceberg[sql-sqlite,pyarrow]"', file=sys.stderr)
            formats.remove("iceberg")
    try:
        for fmt in formats:
            for store, so in stores:
                for name in FORMATS[fmt][3]:
                    run_id = uuid.uuid4().hex[:6]
                    uri = (
                        f"s3://bench/{fmt}-{run_id}"
                        if store == "s3"
                        else os.path.join(tmp, f"{fmt}-{run_id}")
                    )
                    so_run = {**so, "_catalog_db": os.path.join(tmp, f"{fmt}-{run_id}.db")}
                    if fmt == "delta":
                        so_run.pop("_catalog_db")
                    FORMATS[fmt][0](uri, so_run)
                    res: dict[str, Any] = {"format": fmt, "store": store}
                    res["append"] = run_writers(fmt, uri, so_run, args.seconds, args.rows)
                    res["read"] = duck_read(fmt, uri, so_run)
                    res["compaction"] = compaction(fmt, uri, so_run, name, args.seconds, args.rows)
                    out.append(res)
                    a, r, c = res["append"], res["read"], res["compaction"]
                    print(
                        f"{fmt:8} {store:6} append p50 {a['p50_ms']} ms p99 {a['p99_ms']} ms max {a['max_ms']} ms "
                        f"({a['commits']} commits, {a['failures']} failed, rows {r['rows']}/{a['rows']}) | "
                        f"read {r['files']} files: plan {r['plan_s']} s, DuckDB {r['query_s']} s | "
                        f"compaction '{c['compactor']}' x2 racing + 4 writers: {c['compact_s']} s, "
                        f"rows {c['rows']} of {c['expected_rows']} expected, {c['files_after']} files",
                        flush=True,
                    )
    finally:
        if moto is not None:
            moto.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
