"""`gateway.store.objectfs.SnapshotFS`: what DuckDB reads a log in object storage through.

The filesystem under it here is a pyarrow `PyFileSystem` over local files that counts what it
is asked (on S3 each of those is a request); the S3 reads themselves are in
``tests/integration/test_review_s3.py``.
"""

from __future__ import annotations

import collections
import io
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.objectfs import PROTOCOL, SnapshotFS, _RangeFile, duckdb_path


class CountingHandler(pafs.FileSystemHandler):
    """Local files, and a count of each kind of request."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()
        self.asked: collections.Counter[str] = collections.Counter()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        self.asked["info"] += len(paths)
        return self.fs.get_file_info(["/" + p.lstrip("/") for p in paths])

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        self.asked["list"] += 1
        return self.fs.get_file_info(selector)

    def open_input_file(self, path: str) -> pa.NativeFile:
        self.asked["open"] += 1
        return self.fs.open_input_file("/" + path.lstrip("/"))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    def create_dir(self, path: str, recursive: bool) -> None:
        raise NotImplementedError

    def delete_dir(self, path: str) -> None:
        raise NotImplementedError

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        raise NotImplementedError

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError

    def delete_file(self, path: str) -> None:
        raise NotImplementedError

    def move(self, src: str, dest: str) -> None:
        raise NotImplementedError

    def copy_file(self, src: str, dest: str) -> None:
        raise NotImplementedError

    def open_output_stream(self, path: str, metadata: object = None) -> pa.NativeFile:
        raise NotImplementedError

    def open_append_stream(self, path: str, metadata: object = None) -> pa.NativeFile:
        raise NotImplementedError


def parquet_files(tmp_path: Path, n: int) -> list[tuple[str, int]]:
    """``n`` small Parquet files; (path without the leading slash, size)."""
    out = []
    for k in range(n):
        path = tmp_path / f"date=2026-12-0{k + 1}" / f"part-{k}.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table({"k": list(range(k * 1000, (k + 1) * 1000)), "day": [k] * 1000}), path)
        out.append((str(path).lstrip("/"), path.stat().st_size))
    return out


def store_fs(tmp_path: Path, n: int = 3) -> tuple[SnapshotFS, CountingHandler, list[tuple[str, int]]]:
    handler = CountingHandler()
    fs = SnapshotFS(pafs.PyFileSystem(handler))
    files = parquet_files(tmp_path, n)
    fs.know((f"s3://{p}", s) for p, s in files)
    return fs, handler, files


def read_all(con: duckdb.DuckDBPyConnection, files: list[tuple[str, int]]) -> tuple[int, int]:
    listing = ", ".join(f"'{duckdb_path('s3://' + p)}'" for p, _ in files)
    row = con.execute(f"SELECT count(*), sum(k) FROM read_parquet([{listing}])").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_duckdb_reads_known_files_with_no_metadata_request_and_one_open_each(tmp_path: Path) -> None:
    fs, handler, files = store_fs(tmp_path)
    con = duckdb.connect()
    con.register_filesystem(fs)
    expected = (3000, sum(range(3000)))
    assert read_all(con, files) == expected
    assert handler.asked == {"open": 3}  # no info (HEAD) nor list request: sizes from the Delta log
    assert read_all(con, files) == expected  # the next query reuses the open files
    assert handler.asked == {"open": 3}


def test_an_unknown_path_goes_to_the_filesystem_itself(tmp_path: Path) -> None:
    fs, handler, files = store_fs(tmp_path)
    extra = parquet_files(tmp_path / "more", 1)[0]
    con = duckdb.connect()
    con.register_filesystem(fs)
    assert read_all(con, [extra]) == (1000, sum(range(1000)))
    assert handler.asked["info"] >= 1  # asked for its size, as any fsspec filesystem would
    assert fs.exists(f"{PROTOCOL}://{files[0][0]}") and not fs.exists(f"{PROTOCOL}://{files[0][0]}.nope")


def test_a_new_snapshot_forgets_removed_files_and_closes_them(tmp_path: Path) -> None:
    fs, handler, files = store_fs(tmp_path)
    con = duckdb.connect()
    con.register_filesystem(fs)
    read_all(con, files)
    fs.forget(f"s3://{p}" for p, _ in files[1:])
    assert fs._size_of(files[0][0]) is None and files[0][0] not in fs._handles
    assert sorted(fs._handles) == sorted(p for p, _ in files[1:])
    assert fs.info(f"{PROTOCOL}://{files[0][0]}")["size"] == files[0][1]  # from the filesystem now
    assert handler.asked["info"] == 1


def test_at_most_max_open_files_stay_open(tmp_path: Path, monkeypatch) -> None:
    import gateway.store.objectfs as objectfs

    monkeypatch.setattr(objectfs, "MAX_OPEN", 2)
    fs, _, files = store_fs(tmp_path, 3)
    con = duckdb.connect()
    con.register_filesystem(fs)
    assert read_all(con, files) == (3000, sum(range(3000)))
    assert len(fs._handles) == 2


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=300),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("seek"), st.integers(-50, 350), st.sampled_from([0, 1, 2])),
            st.tuples(st.just("read"), st.integers(-1, 120), st.just(0)),
            st.tuples(st.just("readinto"), st.integers(0, 120), st.just(0)),
        ),
        max_size=25,
    ),
)
def test_a_range_file_reads_what_a_plain_file_reads(data: bytes, ops: list[tuple[str, int, int]]) -> None:
    shared = pa.BufferReader(data)
    mine, plain = _RangeFile(shared, len(data)), io.BytesIO(data)
    for op, n, whence in ops:
        if op == "seek":
            target = {0: 0, 1: plain.tell(), 2: len(data)}[whence] + n
            if target < 0:  # BytesIO refuses it; the range file stops at 0
                plain.seek(0)
                mine.seek(n, whence)
                assert mine.tell() == 0
                continue
            assert mine.seek(n, whence) == plain.seek(n, whence)
        elif op == "read":
            assert mine.read(n) == plain.read(n)
        else:
            a, b = bytearray(n), bytearray(n)
            assert mine.readinto(a) == plain.readinto(b) and a == b
        assert mine.tell() == plain.tell()
        shared.seek(len(data) // 2)  # another reader moving the shared file changes nothing here
