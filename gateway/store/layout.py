"""Where the call log's files live, and the file-level operations on them.

::

    <log_dir>/
      store.json                         {"schema_version": N} — checked on open
      calls/date=YYYY-MM-DD/<stem>.parquet
      events/date=YYYY-MM-DD/<stem>.parquet
      wal/<writer_id>.<seq>.wal.ndjson   unflushed records (local disk)
      wal/<writer_id>.lock

``<stem>`` is the WAL segment a file came from (``<writer_id>.<seq>``), or
``compact-<time>-<random>`` for a compacted file. A Parquet file whose stem still has a
WAL segment is not yet final: readers read the segment instead, and compaction leaves
it alone.

``log_dir`` may also be an object-store URI (``s3://bucket/prefix``, ``gs://…``): Parquet
files then go through pyarrow's filesystems, and the WAL stays on local disk
(``store.wal_dir``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gateway.store.schema import SCHEMA_VERSION, TABLES

DEFAULT_LOG_DIR = "./shadowtune-data"
WAL_SUFFIX = ".wal.ndjson"
STORE_FILE = "store.json"
COMPACT_TARGET_ROWS = 1_000_000


class LogStoreError(Exception):
    """The call log cannot be opened, read or written as asked."""


def default_log_dir() -> str:
    """``--log-dir``'s default for every command: ``$SHADOWTUNE_LOG_DIR``, else the one ``serve`` uses."""
    return (
        os.environ.get("SHADOWTUNE_LOG_DIR") or os.environ.get("SHADOWTUNE_STORE__LOG_DIR") or DEFAULT_LOG_DIR
    )


def is_remote(log_dir: str) -> bool:
    return "://" in log_dir and not log_dir.startswith("file://")


def local_path(log_dir: str) -> str:
    return log_dir[len("file://") :] if log_dir.startswith("file://") else log_dir


def default_wal_dir(log_dir: str) -> str:
    if is_remote(log_dir):
        return os.path.abspath("shadowtune-wal")
    return os.path.join(local_path(log_dir), "wal")


def filesystem(log_dir: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path of a log directory or URI."""
    if is_remote(log_dir):
        fs, path = pafs.FileSystem.from_uri(log_dir)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(local_path(log_dir))


def ensure_store(log_dir: str) -> None:
    """Create the store if needed; refuse a store of an unknown newer layout."""
    fs, root = filesystem(log_dir)
    fs.create_dir(root, recursive=True)
    marker = f"{root}/{STORE_FILE}"
    info = fs.get_file_info(marker)
    if info.type == pafs.FileType.NotFound:
        with fs.open_output_stream(marker) as f:
            f.write(json.dumps({"schema_version": SCHEMA_VERSION}).encode())
        return
    check_version(log_dir)


def check_version(log_dir: str) -> int:
    """The store's schema version; `LogStoreError` if this Shadowtune cannot read it."""
    fs, root = filesystem(log_dir)
    try:
        with fs.open_input_stream(f"{root}/{STORE_FILE}") as f:
            version = int(json.loads(f.read())["schema_version"])
    except FileNotFoundError:
        return SCHEMA_VERSION
    except (ValueError, KeyError, TypeError) as exc:
        raise LogStoreError(f"{root}/{STORE_FILE} is not a Shadowtune store marker: {exc}") from exc
    if version > SCHEMA_VERSION:
        raise LogStoreError(
            f"the call log at {root} has schema version {version}, newer than this Shadowtune "
            f"understands ({SCHEMA_VERSION}); upgrade Shadowtune to read it"
        )
    return version


def write_parquet(log_dir: str, table: str, day: str, stem: str, data: pa.Table) -> str:
    """Write ``data`` durably as ``<table>/date=<day>/<stem>.parquet`` (tmp, fsync, rename)."""
    fs, root = filesystem(log_dir)
    folder = f"{root}/{table}/date={day}"
    final = f"{folder}/{stem}.parquet"
    if is_remote(log_dir):  # object stores publish an object atomically when it is closed
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(final) as out:
            pq.write_table(data, out, compression="zstd")
        return final
    os.makedirs(folder, exist_ok=True)
    tmp = f"{final}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(data, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:  # a full disk, an error mid-write: no temporary file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def wal_segments_by_owner(wal_dir: str) -> dict[str, list[str]]:
    """Segments in ``wal_dir`` grouped by writer id, each list in write order."""
    owners: dict[str, list[str]] = defaultdict(list)
    try:
        names = os.listdir(wal_dir)
    except FileNotFoundError:
        return {}
    for name in sorted(names):
        if name.endswith(WAL_SUFFIX):
            stem = name[: -len(WAL_SUFFIX)]
            owners[stem.rsplit(".", 1)[0]].append(os.path.join(wal_dir, name))
        elif name.endswith(".lock"):
            owners.setdefault(name[: -len(".lock")], [])
    return dict(owners)


def wal_stems(wal_dir: str) -> set[str]:
    try:
        return {n[: -len(WAL_SUFFIX)] for n in os.listdir(wal_dir) if n.endswith(WAL_SUFFIX)}
    except FileNotFoundError:
        return set()


def parquet_files(log_dir: str, table: str) -> list[tuple[str, str, int]]:
    """``(path, day, size)`` of every final Parquet file of ``table``."""
    fs, root = filesystem(log_dir)
    selector = pafs.FileSelector(f"{root}/{table}", recursive=True, allow_not_found=True)
    out = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        day = info.path.rsplit("/", 2)[-2].removeprefix("date=")
        out.append((info.path, day, info.size or 0))
    out.sort()
    return out


def stem_of(path: str) -> str:
    return path.rsplit("/", 1)[-1][: -len(".parquet")]


def compact(log_dir: str, wal_dir: str, *, min_files: int = 2) -> int:
    """Merge each day's small final files into one; returns the number of files removed.

    Only one process compacts at a time (``flock`` on ``<wal_dir>/compact.lock``);
    files whose WAL segment still exists are left alone (see the module docstring).
    """
    import fcntl

    os.makedirs(wal_dir, exist_ok=True)
    lock_fd = os.open(os.path.join(wal_dir, "compact.lock"), os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        fs, _ = filesystem(log_dir)
        live = wal_stems(wal_dir)
        removed = 0
        for table, schema in TABLES.items():
            by_day: dict[str, list[str]] = defaultdict(list)
            for path, day, _size in parquet_files(log_dir, table):
                if stem_of(path) not in live:
                    by_day[day].append(path)
            for day, paths in by_day.items():
                small = [
                    p for p in paths if pq.ParquetFile(_open(fs, p)).metadata.num_rows < COMPACT_TARGET_ROWS
                ]
                if len(small) < min_files:
                    continue
                merged = pa.concat_tables(
                    [pq.read_table(_open(fs, p)).cast(schema) for p in small], promote_options="default"
                )
                stem = f"compact-{int(time.time() * 1000):013d}-{secrets.token_hex(4)}"
                write_parquet(log_dir, table, day, stem, merged)
                for p in small:
                    fs.delete_file(p)
                removed += len(small)
        return removed
    finally:
        os.close(lock_fd)


def _open(fs: pafs.FileSystem, path: str) -> pa.NativeFile:
    return fs.open_input_file(path)


def prune(log_dir: str, before: dt.date) -> int:
    """Delete every partition older than ``before``; returns the number of files deleted."""
    fs, root = filesystem(log_dir)
    deleted = 0
    for table in TABLES:
        selector = pafs.FileSelector(f"{root}/{table}", allow_not_found=True)
        for info in fs.get_file_info(selector):
            name = info.path.rsplit("/", 1)[-1]
            if info.type != pafs.FileType.Directory or not name.startswith("date="):
                continue
            with contextlib.suppress(ValueError):
                if dt.date.fromisoformat(name[5:]) < before:
                    n = len(fs.get_file_info(pafs.FileSelector(info.path, recursive=True)))
                    fs.delete_dir(info.path)
                    deleted += n
    return deleted
