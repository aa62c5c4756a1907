"""Where the call log's files live, and the file-level operations on them.

::

    <log_dir>/
      store.json                         {"schema_version": N, "layout_version": 2} — checked on open
      calls/                             a Delta Lake table (see `gateway.store.table`)
        _delta_log/…                     its commits: the only truth about which files are in the log
        date=YYYY-MM-DD/<stem>.parquet
      events/                            a Delta Lake table, same layout
      wal/<writer_id>.<seq>.wal.ndjson   unflushed records (local disk)
      wal/<writer_id>.lock

What trainer and evals keep next to the log (their paths are defined here, once)::

      datasets/<name>/v<N>/              dataset versions (`datasets_root`; local even for a remote log)
      models/<version>/model.json        the model registry (`models_root`)
      evals/judge/<run_id>/              judge runs: summary.json, verdicts.parquet, judgements.parquet
      evals/golden/<run_id>/             golden runs: summary.json, outputs.parquet (`eval_runs_dir`)
      evals/cache/responses.jsonl        the judge's response cache (`judge_cache_path`)
      drift/<route>/drift_*.json         drift reports (`drift_dir`)
      controller/<route>.json            controller state (`controller_dir`)
      triggers/policies.yaml             retraining trigger policies (`triggers_dir`)

``<stem>`` is the WAL segment a file came from (``<writer_id>.<seq>``), or
``compact-<time>-<random>`` for a compacted file. A file is in the log once a commit adds
it; a WAL segment whose seq the table has committed for its writer (Delta app
transactions) is not read again, so a segment left behind by a crash is neither read
twice nor converted twice.

Layout 1 (before the table format: loose Parquet files, no ``_delta_log``) is migrated
when a writer starts, or by ``shadowtune logs migrate``: its files are registered into
the tables as they are, in one commit per table; readers of a layout-1 store get a
`LogStoreError` that says so.

``log_dir`` may also be an object-store URI (``s3://bucket/prefix``, ``gs://…``): Parquet
files then go through pyarrow's filesystems, commits through delta-rs, both configured
by the usual environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …), and
the WAL stays on local disk (``store.wal_dir``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import defaultdict
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gateway.store.fileio import atomic_file, try_locked
from gateway.store.schema import SCHEMA_VERSION, TABLES

DEFAULT_LOG_DIR = "./shadowtune-data"
WAL_SUFFIX = ".wal.ndjson"
STORE_FILE = "store.json"
LAYOUT_VERSION = 2
ROW_GROUP_ROWS = 32_768
"""Rows per Parquet row group of the files `write_parquet` writes (and compaction, `gateway.store.table`).

Row groups are what a query skips by their ``ts`` statistics (a file is in about ``ts`` order): one
call's page reads the row group around its id's time, not a whole segment's bodies."""
"""1: loose Parquet files; 2: Delta Lake tables (`gateway.store.table`)."""


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


# -- what trainer and evals keep next to the log (see the module docstring) ------------------
RESULT_VIEWS = {
    "judge_verdicts": "evals/judge/*/verdicts.parquet",
    "judge_judgements": "evals/judge/*/judgements.parquet",
}
"""Views `LogStore` opens over result files, by view name: glob patterns under the log dir."""


def datasets_root(log_dir: str) -> str:
    """``<log_dir>/datasets``; for a log in object storage, ``$SHADOWTUNE_DATASETS_DIR`` (default
    ``./shadowtune-datasets``): datasets are local files for the trainer."""
    if is_remote(log_dir):
        return os.path.abspath(os.environ.get("SHADOWTUNE_DATASETS_DIR") or "shadowtune-datasets")
    return os.path.join(local_path(log_dir), "datasets")


def models_root(log_dir: str) -> str:
    """``<log_dir>/models``: the model registry."""
    return os.path.join(local_path(log_dir), "models")


def eval_runs_dir(log_dir: str, kind: str) -> str:
    """``<log_dir>/evals/<kind>``: one folder per run of ``kind`` (``judge``, ``golden``)."""
    return os.path.join(local_path(log_dir), "evals", kind)


def judge_cache_path(log_dir: str) -> str:
    """``<log_dir>/evals/cache/responses.jsonl``: the judge's response cache."""
    return os.path.join(local_path(log_dir), "evals", "cache", "responses.jsonl")


def drift_dir(log_dir: str) -> str:
    """``<log_dir>/drift``: drift reports by route (and the classifier's calibration cache)."""
    return os.path.join(local_path(log_dir), "drift")


def review_snapshot_path(log_dir: str, name: str) -> str:
    """``<log_dir>/review/<name>.json`` (in the log's own filesystem, object storage too): the review
    pages' last computed aggregates, shown while they are recomputed after a restart."""
    _, root = filesystem(log_dir)
    return f"{root}/review/{name}.json"


def controller_dir(log_dir: str) -> str:
    """``<log_dir>/controller``: the canary controller's state (file state backend)."""
    return os.path.join(local_path(log_dir), "controller")


def triggers_dir(log_dir: str) -> str:
    """``<log_dir>/triggers``: retraining trigger policies."""
    return os.path.join(local_path(log_dir), "triggers")


def filesystem(log_dir: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path of a log directory or URI."""
    if is_remote(log_dir):
        fs, path = pafs.FileSystem.from_uri(log_dir)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(local_path(log_dir))


def ensure_store(log_dir: str, *, create_bucket: bool = False, wal_dir: str | None = None) -> None:
    """Create the store and its tables if needed, migrating a layout-1 store; refuse a newer one.

    On an object store, a missing bucket is created only with ``create_bucket``;
    otherwise `LogStoreError` says which bucket is missing.
    """
    from gateway.store import table as tables

    if is_remote(log_dir):
        tables.ensure_bucket(log_dir, create=create_bucket)
    fs, root = filesystem(log_dir)
    fs.create_dir(root, recursive=True)
    marker = read_marker(log_dir) or {"schema_version": SCHEMA_VERSION}
    layout_version = check_marker(log_dir, marker)
    for table in TABLES:
        tables.DeltaLog.for_log(log_dir, table).create()
    if layout_version < LAYOUT_VERSION:
        tables.migrate_layout_1(log_dir, wal_dir or default_wal_dir(log_dir))
    marker = {**marker, "schema_version": max(SCHEMA_VERSION, int(marker["schema_version"]))}
    write_marker(log_dir, {**marker, "layout_version": LAYOUT_VERSION, "table_format": "delta"})


def read_marker(log_dir: str) -> dict[str, Any] | None:
    """The parsed ``store.json``, or None when there is none."""
    fs, root = filesystem(log_dir)
    try:
        with fs.open_input_stream(f"{root}/{STORE_FILE}") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise LogStoreError(f"{root}/{STORE_FILE} is not a Shadowtune store marker: {exc}") from exc
    if not isinstance(data, dict):
        raise LogStoreError(f"{root}/{STORE_FILE} is not a Shadowtune store marker")
    return data


def write_marker(log_dir: str, marker: dict[str, Any]) -> None:
    fs, root = filesystem(log_dir)
    with fs.open_output_stream(f"{root}/{STORE_FILE}") as f:
        f.write(json.dumps(marker).encode())


def check_marker(log_dir: str, marker: dict[str, Any]) -> int:
    try:
        version = int(marker["schema_version"])
        layout_version = int(marker.get("layout_version", 1))
    except (ValueError, KeyError, TypeError) as exc:
        raise LogStoreError(f"{log_dir}/{STORE_FILE} is not a Shadowtune store marker: {exc}") from exc
    if version > SCHEMA_VERSION or layout_version > LAYOUT_VERSION:
        raise LogStoreError(
            f"the call log at {log_dir} has schema version {version} (layout {layout_version}), newer than "
            f"this Shadowtune understands ({SCHEMA_VERSION}, layout {LAYOUT_VERSION}); upgrade Shadowtune to read it"
        )
    return layout_version


def check_version(log_dir: str) -> int:
    """The store's schema version; `LogStoreError` if this Shadowtune cannot read it.

    A layout-1 store (loose Parquet files) must be migrated first: start the gateway once, or
    run ``shadowtune logs migrate``.
    """
    marker = read_marker(log_dir)
    if marker is None:  # layout 1 always wrote its marker: no marker and a table is layout 2
        from gateway.store.table import DeltaLog

        if any(DeltaLog.for_log(log_dir, t).exists() for t in TABLES):
            return SCHEMA_VERSION
        marker = {"schema_version": SCHEMA_VERSION}
    if check_marker(log_dir, marker) < LAYOUT_VERSION and unregistered_files(log_dir):
        raise LogStoreError(
            f"the call log at {log_dir} uses the old layout (loose Parquet files, layout 1); migrate it to the "
            "Delta Lake table with `shadowtune logs migrate --log-dir ...` (or start the gateway once)"
        )
    return int(marker["schema_version"])


def write_parquet(log_dir: str, table: str, day: str, stem: str, data: pa.Table) -> str:
    """Write ``data`` durably as ``<table>/date=<day>/<stem>.parquet`` (tmp, fsync, rename)."""
    fs, root = filesystem(log_dir)
    folder = f"{root}/{table}/date={day}"
    final = f"{folder}/{stem}.parquet"
    if is_remote(log_dir):  # object stores publish an object atomically when it is closed
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(final) as out:
            pq.write_table(data, out, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        return final
    with atomic_file(final) as f:  # fsync'd, renamed into place, no temporary file left on error
        pq.write_table(data, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)
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


class WalSummary(NamedTuple):
    """What the WAL holds: segments, their bytes, and the oldest last-write time of a non-empty one."""

    segments: int
    bytes: int
    oldest_mtime: float | None


def wal_summary(wal_dir: str) -> WalSummary:
    """`WalSummary` of ``wal_dir`` (of every writer), read while writers append and the agent deletes:
    each segment is looked at once, and one that is gone by then is not counted."""
    segments = size = 0
    oldest: float | None = None
    try:
        entries = list(os.scandir(wal_dir))
    except OSError:  # no WAL (yet), or not a directory
        return WalSummary(0, 0, None)
    for entry in entries:
        if not entry.name.endswith(WAL_SUFFIX):
            continue
        try:
            st = entry.stat()
        except OSError:  # converted and deleted since the listing
            continue
        segments += 1
        size += st.st_size
        if st.st_size and (oldest is None or st.st_mtime < oldest):
            oldest = st.st_mtime
    return WalSummary(segments, size, oldest)


def wal_stems(wal_dir: str) -> set[str]:
    try:
        return {n[: -len(WAL_SUFFIX)] for n in os.listdir(wal_dir) if n.endswith(WAL_SUFFIX)}
    except FileNotFoundError:
        return set()


def parquet_files(log_dir: str, table: str) -> list[tuple[str, str, int]]:
    """``(path, day, size)`` of every file of ``table``'s current snapshot."""
    from gateway.store.table import DeltaLog

    log = DeltaLog.for_log(log_dir, table)
    if not log.exists():
        return []
    return [(f.uri.removeprefix("file://"), f.day, f.size) for f in log.files()]


def unregistered_files(log_dir: str) -> list[str]:
    """Parquet files under the tables' folders that no table snapshot has (a layout-1 store's files)."""
    from gateway.store.table import DeltaLog

    out = []
    for table in TABLES:
        log = DeltaLog.for_log(log_dir, table)
        have = (
            {f.uri.removeprefix("file://").split("://", 1)[-1] for f in log.files()}
            if log.exists()
            else set()
        )
        out += [p for p, _day, _size in parquet_files_legacy(log_dir, table) if p not in have]
    return out


def parquet_files_legacy(log_dir: str, table: str) -> list[tuple[str, str, int]]:
    """``(path, day, size)`` of every Parquet file under ``table``'s folder (layout 1: no table)."""
    fs, root = filesystem(log_dir)
    selector = pafs.FileSelector(f"{root}/{table}", recursive=True, allow_not_found=True)
    out = []
    for info in fs.get_file_info(selector):
        if (
            info.type != pafs.FileType.File
            or not info.path.endswith(".parquet")
            or "/_delta_log/" in info.path
        ):
            continue
        day = info.path.rsplit("/", 2)[-2].removeprefix("date=")
        out.append((info.path, day, info.size or 0))
    out.sort()
    return out


def stem_of(path: str) -> str:
    return path.rsplit("/", 1)[-1][: -len(".parquet")]


def compact(log_dir: str, wal_dir: str, *, min_files: int = 2) -> int:
    """Merge each day's small files into one, one atomic commit per merged file; returns files removed.

    Safe with any number of compacting processes and hosts (commits are conflict-checked,
    see `gateway.store.table`); the ``flock`` on ``<wal_dir>/compact.lock`` only saves a
    second process on the same host from doing the same work.
    """
    from gateway.store.table import DeltaLog

    with try_locked(os.path.join(wal_dir, "compact.lock")) as mine:
        if not mine:
            return 0
        removed = 0
        for table in TABLES:
            log = DeltaLog.for_log(log_dir, table)
            if log.exists():
                removed += log.compact(min_files=min_files)
                log.vacuum()
        return removed


def prune(log_dir: str, before: dt.date) -> int:
    """Remove every partition older than ``before`` from the tables, one commit per table; returns files removed.

    The files themselves are deleted by the next vacuum (after compaction) once no recent
    snapshot needs them.
    """
    from gateway.store.table import DeltaLog

    removed = 0
    for table in TABLES:
        log = DeltaLog.for_log(log_dir, table)
        if log.exists():
            removed += log.prune(before)
    return removed
