"""The call log's tables as Delta Lake tables: every change to the log is one atomic commit.

::

    <log_dir>/calls/_delta_log/…                      Delta transaction log (JSON + checkpoints)
    <log_dir>/calls/date=YYYY-MM-DD/<stem>.parquet    data files (zstd), Hive-style partitions
    <log_dir>/events/…                               same for outcome events

Why Delta (delta-rs) and not Iceberg: see ``docs/benchmarks.md`` ("Table format"). The
transaction log is the whole catalog, so a directory or an ``s3://`` prefix is a table that
Spark, Trino, DuckDB and polars read directly.

Commits, and why each is safe against kill -9 and against other hosts:

* **Append** (`DeltaLog.commit_segment`): the Parquet files of one WAL segment are written
  under names derived from the segment, then added in one commit that also records the
  Delta *app transaction* ``(app_id=<writer id>, version=<segment seq>)``. A segment whose
  seq is at or below the writer's committed version is already in the table, so a process
  killed between the commit and the segment's deletion converts it again to nothing.
  Appends only add files, so delta-rs retries them on top of concurrent commits.
* **Compaction** and **retention** remove files. delta-rs 1.6 does not detect two
  concurrent commits removing the same file (both compactions land and every row is
  doubled: measured in the benchmark), so these commits are pinned to the snapshot they
  were planned on (``max_commit_retries=0``) and re-planned when another commit won.
  A removed file stays on storage for readers of older snapshots until `DeltaLog.vacuum`.

The Delta schema has the partition column ``date`` (string); data files do not contain it
(Delta's rule), so ``read_parquet`` over the file list gives exactly `TABLES`' columns.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gateway.store import layout
from gateway.store.schema import TABLES

COMPACT_TARGET_ROWS = 1_000_000
COMPACT_MAX_BYTES = 256 * 2**20
COMPACT_ROW_GROUP = layout.ROW_GROUP_ROWS
# Arrow bytes per row group a compaction writes: its memory bound. 16 MiB, measured on 240k 2 KB
# rows (docs/benchmarks.md round 9): peak +83-89 MiB against +106-117 at 32 MiB, 30 row groups,
# a 224 KiB footer; 8 MiB saves 15 MiB more for a footer twice as big.
COMPACT_GROUP_BYTES = 16 * 2**20
COMPACT_READ_ROWS = 2048  # rows read from a source file at a time
VACUUM_RETENTION_HOURS = 1.0
MAX_ATTEMPTS = 20
TABLE_CONFIG = {
    "delta.checkpointInterval": "100",
    "delta.logRetentionDuration": "interval 1 hours",  # one commit per writer per flush: keep the log short
    "delta.deletedFileRetentionDuration": "interval 1 hours",
}


class TableCommitError(OSError):
    """A commit to the log's table failed (storage down, or conflicts past the retry limit)."""


@dataclass(frozen=True, order=True)
class DataFile:
    """One file of a table snapshot."""

    uri: str
    path: str  # relative to the table root, as in the Delta log
    day: str
    size: int
    rows: int


def delta_storage_options(uri: str) -> dict[str, str]:
    """delta-rs storage options for ``uri``: the AWS/GCS/Azure environment variables, plus
    ``AWS_ALLOW_HTTP`` when the S3 endpoint in ``AWS_ENDPOINT_URL`` is plain http."""
    opts: dict[str, str] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if uri.startswith(("s3://", "s3a://")) and endpoint.startswith("http://"):
        opts.setdefault("AWS_ALLOW_HTTP", os.environ.get("AWS_ALLOW_HTTP", "true"))
    return opts


def table_uri(log_dir: str, table: str) -> str:
    if layout.is_remote(log_dir):
        return f"{log_dir.rstrip('/')}/{table}"
    return os.path.join(os.path.abspath(layout.local_path(log_dir)), table)


def _delta_schema(table: str) -> pa.Schema:
    schema = TABLES[table]
    return pa.schema([f.with_nullable(True) for f in schema] + [pa.field("date", pa.string())])


def _deltalake() -> Any:
    import deltalake

    return deltalake


def _commit_failed(exc: BaseException) -> bool:
    return type(exc).__name__ == "CommitFailedError"


class DeltaLog:
    """One table of the call log (``calls`` or ``events``) as a Delta table."""

    def __init__(
        self, uri: str, *, storage_options: dict[str, str] | None = None, table: str = "calls"
    ) -> None:
        self.uri = uri
        self.table = table
        self.storage_options = storage_options if storage_options is not None else delta_storage_options(uri)
        self._dt: Any = None

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def for_log(cls, log_dir: str, table: str) -> DeltaLog:
        uri = table_uri(log_dir, table)
        return cls(uri, table=table)

    def exists(self) -> bool:
        return bool(_deltalake().DeltaTable.is_deltatable(self.uri, storage_options=self.storage_options))

    def create(self) -> None:
        """Create the table if it does not exist (several processes may race here)."""
        dl = _deltalake()
        self._dt = None
        if not self.exists():
            try:
                dl.DeltaTable.create(
                    self.uri,
                    schema=_delta_schema(self.table),
                    partition_by=["date"],
                    mode="ignore",
                    name=self.table,
                    configuration=TABLE_CONFIG,
                    storage_options=self.storage_options,
                )
            except Exception as exc:
                if not self.exists():  # a racing creator that won is fine
                    raise TableCommitError(f"cannot create the Delta table {self.uri}: {exc}") from exc
        self.ensure_schema()

    def ensure_schema(self) -> None:
        """Add the columns that `TABLES` has and the table does not (additive schema changes)."""
        last: Exception | None = None
        for _ in range(MAX_ATTEMPTS):
            dt_ = self.load()
            have = {f.name for f in pa.schema(dt_.schema().to_arrow())}
            missing = [f for f in _delta_schema(self.table) if f.name not in have]
            if not missing:
                return
            from deltalake.schema import Field

            try:
                dt_.alter.add_columns([Field.from_arrow(f) for f in missing])
            except Exception as exc:  # another process altered it first: check again
                self._dt = None
                last = exc
        raise TableCommitError(f"cannot add columns to {self.uri}: {last}")

    def load(self) -> Any:
        """The table at its latest version (refreshed incrementally, reloaded when that fails)."""
        dl = _deltalake()
        if self._dt is not None:
            try:
                self._dt.update_incremental()
                return self._dt
            except Exception:  # e.g. the commits after our version were cleaned up: load afresh
                self._dt = None
        try:
            self._dt = dl.DeltaTable(self.uri, storage_options=self.storage_options)
        except Exception as exc:
            raise TableCommitError(f"cannot read the Delta table {self.uri}: {exc}") from exc
        return self._dt

    # -- snapshot -----------------------------------------------------------------------
    def files(self, snapshot: Any = None) -> list[DataFile]:
        """The files of ``snapshot`` (a loaded ``DeltaTable``; default: the latest)."""
        dt_ = snapshot if snapshot is not None else self.load()
        # from the Arrow stream itself: ``pa.table()`` would import pandas first (~40 MiB, a second of CPU)
        actions = pa.RecordBatchReader.from_stream(dt_.get_add_actions(flatten=True)).read_all()
        if actions.num_rows == 0:
            return []
        uris = {_rel(dt_.table_uri, u): u for u in dt_.file_uris()}
        cols = actions.to_pydict()
        days = cols.get("partition.date") or [None] * actions.num_rows
        return sorted(
            DataFile(
                uri=uris.get(p, f"{dt_.table_uri.rstrip('/')}/{p}"),
                path=p,
                day=str(d),
                size=int(s),
                rows=int(n or 0),
            )
            for p, d, s, n in zip(cols["path"], days, cols["size_bytes"], cols["num_records"], strict=True)
        )

    def committed_seq(self, writer_id: str, snapshot: Any = None) -> int:
        """The last WAL segment seq of ``writer_id`` committed to this table (0: none)."""
        dt_ = snapshot if snapshot is not None else self.load()
        try:
            version = dt_.transaction_version(writer_id)
        except Exception as exc:
            self._dt = None
            raise TableCommitError(f"cannot read the Delta table {self.uri}: {exc}") from exc
        return int(version) if version is not None else 0

    # -- commits ------------------------------------------------------------------------
    def commit_segment(self, log_dir: str, stem: str, groups: Sequence[tuple[str, pa.Table]]) -> int:
        """Add one WAL segment's ``(day, rows)`` groups in one commit, exactly once; returns files added.

        The segments of one writer id must be committed in seq order: a segment at or below
        the writer's committed seq counts as done.
        """
        writer_id, seq = split_stem(stem)
        try:
            committed = self.committed_seq(writer_id)
        except TableCommitError:
            if self.exists():
                raise
            self.create()  # the table was deleted under us (or never made while storage was down)
            committed = self.committed_seq(writer_id)
        if seq <= committed:
            return 0  # committed before a crash: nothing to do
        actions = [self._write_file(log_dir, day, stem, data) for day, data in groups if data.num_rows]
        if not actions:
            return 0
        dl = _deltalake()
        props = dl.CommitProperties(
            app_transactions=[dl.Transaction(writer_id, seq)],
            custom_metadata={"shadowtune.operation": "append", "shadowtune.segment": stem},
            max_commit_retries=MAX_ATTEMPTS,
        )
        self._commit(actions, props)
        return len(actions)

    def compact(
        self,
        *,
        min_files: int = 2,
        target_rows: int = COMPACT_TARGET_ROWS,
        data_schema: pa.Schema | None = None,
    ) -> int:
        """Merge each day's small files; returns the number of files removed from the table."""
        schema = data_schema if data_schema is not None else TABLES[self.table]
        by_day: dict[str, list[DataFile]] = {}
        for f in self.files():
            if f.rows < target_rows:
                by_day.setdefault(f.day, []).append(f)
        removed = 0
        for day, small in sorted(by_day.items()):
            for group in _bins(small, target_rows):
                if len(group) >= min_files:
                    removed += self._compact_group(day, group, schema)
        return removed

    def prune(self, before: dt.date) -> int:
        """Remove every file of the days before ``before`` in one commit; returns files removed."""
        cutoff = before.isoformat()
        for _ in range(MAX_ATTEMPTS):
            snapshot = self.load()
            old = [f for f in self.files(snapshot) if f.day < cutoff]
            if not old:
                return 0
            try:
                self._commit(
                    [self._remove(f, data_change=True) for f in old],
                    self._pinned_props("retention"),
                    snapshot=snapshot,
                )
                return len(old)
            except _Conflict:
                continue
        raise TableCommitError(f"retention of {self.uri}: gave up after {MAX_ATTEMPTS} conflicting commits")

    def vacuum(self, retention_hours: float = VACUUM_RETENTION_HOURS) -> int:
        """Delete the files no snapshot of the last ``retention_hours`` has; returns files deleted.

        ``full``: files that were never committed (a compaction or a conversion killed before
        its commit, temporary files) go too; a writer's uncommitted files are minutes old at
        most, and a segment replayed later writes its files again.
        """
        deleted = self.load().vacuum(
            retention_hours=int(retention_hours), enforce_retention_duration=False, dry_run=False, full=True
        )
        return len(deleted)

    def register(self, files: Iterable[tuple[str, str, int]]) -> int:
        """Add existing files ``(path relative to the table, day, size)`` that the table does not
        have yet, in one commit pinned to the snapshot it checked (migration); returns files added."""
        fs, root = _fs_root(self.uri)
        candidates = list(files)
        rows = {
            rel: pq.ParquetFile(fs.open_input_file(f"{root}/{rel}")).metadata.num_rows
            for rel, _, _ in candidates
        }
        for _ in range(MAX_ATTEMPTS):
            snapshot = self.load()
            have = {f.path for f in self.files(snapshot)}
            actions = [
                self._add(rel, day, size, rows[rel]) for rel, day, size in candidates if rel not in have
            ]
            if not actions:
                return 0
            try:
                self._commit(actions, self._pinned_props("migrate"), snapshot=snapshot)
                return len(actions)
            except _Conflict:
                continue
        raise TableCommitError(f"migration of {self.uri}: gave up after {MAX_ATTEMPTS} conflicting commits")

    # -- internals ----------------------------------------------------------------------
    def _compact_group(self, day: str, group: list[DataFile], schema: pa.Schema) -> int:
        fs, root = _fs_root(self.uri)
        stem = f"compact-{int(time.time() * 1000):013d}-{secrets.token_hex(4)}"
        rel = f"date={day}/{stem}.parquet"
        rows = _merge(fs, [f"{root}/{f.path}" for f in group], f"{root}/{rel}", schema)
        size = fs.get_file_info(f"{root}/{rel}").size or 0
        wanted = {f.path for f in group}
        for _ in range(MAX_ATTEMPTS):
            snapshot = self.load()
            if not wanted <= {f.path for f in self.files(snapshot)}:
                fs.delete_file(f"{root}/{rel}")  # another compaction or retention took some of them
                return 0
            actions = [self._add(rel, day, size, rows, data_change=False)]
            actions += [self._remove(f, data_change=False) for f in group]
            try:
                self._commit(actions, self._pinned_props("compaction"), snapshot=snapshot)
                return len(group)
            except _Conflict:
                continue
        fs.delete_file(f"{root}/{rel}")
        raise TableCommitError(f"compaction of {self.uri}: gave up after {MAX_ATTEMPTS} conflicting commits")

    def _pinned_props(self, operation: str) -> Any:
        dl = _deltalake()
        return dl.CommitProperties(custom_metadata={"shadowtune.operation": operation}, max_commit_retries=0)

    def _write_file(self, log_dir: str, day: str, stem: str, data: pa.Table) -> Any:
        path = layout.write_parquet(log_dir, self.table, day, stem, data)
        fs, _ = layout.filesystem(log_dir)
        size = fs.get_file_info(path).size or 0
        return self._add(f"date={day}/{stem}.parquet", day, size, data.num_rows)

    def _add(self, rel: str, day: str, size: int, rows: int, *, data_change: bool = True) -> Any:
        # numRecords only: the ``date`` partition already prunes by time, and min/max timestamps
        # in microseconds would be more precise than the millisecond stats other engines expect
        stats: dict[str, Any] = {"numRecords": rows}
        from deltalake.transaction import AddAction

        return AddAction(
            path=rel,
            size=size,
            partition_values={"date": day},
            modification_time=int(time.time() * 1000),
            data_change=data_change,
            stats=json.dumps(stats),
        )

    def _remove(self, f: DataFile, *, data_change: bool) -> Any:
        from deltalake.transaction import RemoveAction

        return RemoveAction(
            path=f.path,
            data_change=data_change,
            deletion_timestamp=int(time.time() * 1000),
            size=f.size,
            partition_values={"date": f.day},
        )

    def _commit(self, actions: list[Any], props: Any, *, snapshot: Any = None) -> None:
        """Commit ``actions``; with ``snapshot``, only on top of that exact version (`_Conflict` if taken)."""
        pinned = snapshot is not None
        dt_ = snapshot if pinned else self.load()
        try:
            dt_.create_write_transaction(
                actions,
                mode="append",
                schema=pa.schema(dt_.schema().to_arrow()),
                partition_by=["date"],
                commit_properties=props,
            )
        except Exception as exc:
            self._dt = None
            if pinned and _commit_failed(exc):
                raise _Conflict() from exc
            raise TableCommitError(f"commit to {self.uri} failed: {exc}") from exc


class _Conflict(Exception):
    """Another commit won the version this pinned commit was planned on."""


def split_stem(stem: str) -> tuple[str, int]:
    """``<writer id>.<seq>`` of a WAL segment name."""
    writer_id, _, seq = stem.rpartition(".")
    return writer_id, int(seq)


def _rel(table_uri: str, uri: str) -> str:
    base = table_uri.rstrip("/") + "/"
    for prefix in (base, base.removeprefix("file://")):
        if uri.startswith(prefix):
            return uri[len(prefix) :]
    return uri.removeprefix("file://")


def _fs_root(uri: str) -> tuple[pafs.FileSystem, str]:
    return layout.filesystem(uri)


def _bins(files: list[DataFile], target_rows: int) -> list[list[DataFile]]:
    out: list[list[DataFile]] = [[]]
    rows = size = 0
    for f in sorted(files, key=lambda f: f.path):
        if out[-1] and (rows + f.rows > target_rows or size + f.size > COMPACT_MAX_BYTES):
            out.append([])
            rows = size = 0
        out[-1].append(f)
        rows += f.rows
        size += f.size
    return out


def _merge(fs: pafs.FileSystem, sources: list[str], target: str, schema: pa.Schema) -> int:
    """Stream ``sources`` into one zstd file at ``target``, a few thousand rows at a time.

    Memory stays bounded whatever the files hold (their compressed size says little: the log's
    bodies compress 10 to 50 times): each source is read in batches of `COMPACT_READ_ROWS`, and a row
    group is written once `COMPACT_GROUP_BYTES` of Arrow data (or `COMPACT_ROW_GROUP` rows) are
    pending, so at most about that much is held at once.
    """
    rows = 0
    pending: list[pa.Table] = []
    pending_rows = pending_bytes = 0
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(target), exist_ok=True)
    with fs.open_output_stream(target) as out, pq.ParquetWriter(out, schema, compression="zstd") as w:
        for src in sources:
            with fs.open_input_file(src) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=COMPACT_READ_ROWS):
                    t = _conform(pa.Table.from_batches([batch]), schema)
                    pending.append(t)
                    pending_rows += t.num_rows
                    pending_bytes += t.nbytes
                    if pending_rows >= COMPACT_ROW_GROUP or pending_bytes >= COMPACT_GROUP_BYTES:
                        w.write_table(pa.concat_tables(pending), row_group_size=COMPACT_ROW_GROUP)
                        rows += pending_rows
                        pending, pending_rows, pending_bytes = [], 0, 0
        if pending:
            w.write_table(pa.concat_tables(pending), row_group_size=COMPACT_ROW_GROUP)
            rows += pending_rows
    if isinstance(fs, pafs.LocalFileSystem):  # durable before the commit that references it
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return rows


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t`` with every column of ``schema``, in order (missing ones as nulls: older files)."""
    cols = [
        t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def ensure_bucket(log_dir: str, *, create: bool) -> None:
    """`LogStoreError` when ``log_dir``'s S3 bucket is missing, unless ``create`` (then it is created)."""
    if not log_dir.startswith(("s3://", "s3a://")):
        return
    bucket = log_dir.split("://", 1)[1].split("/", 1)[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"allow_bucket_creation": create}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    fs = pafs.S3FileSystem(**kwargs)
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise layout.LogStoreError(f"cannot reach the bucket of the call log {log_dir}: {exc}") from exc
    if info.type != pafs.FileType.NotFound:
        return
    if not create:
        raise layout.LogStoreError(
            f"the bucket {bucket!r} of the call log {log_dir} does not exist; create it, or set "
            "store.create_bucket: true to let the gateway create it"
        )
    try:
        fs.create_dir(bucket)
    except OSError as exc:
        raise layout.LogStoreError(f"cannot create the bucket {bucket!r} for the call log: {exc}") from exc


def migrate_layout_1(log_dir: str, wal_dir: str) -> dict[str, int]:
    """Register a layout-1 store's loose Parquet files into the tables; returns files registered per table.

    Files are committed as they are (no rewrite). Idempotent: files already in a table are
    skipped, so a migration killed half-way is simply run again. Files whose WAL segment
    still exists are left to the WAL replay, which rewrites and commits them; temporary
    ``*.parquet.tmp-*`` files of layout 1 are deleted.
    """
    live = layout.wal_stems(wal_dir)
    fs, root = layout.filesystem(log_dir)
    out: dict[str, int] = {}
    for table in TABLES:
        log = DeltaLog.for_log(log_dir, table)
        log.create()
        have = {f.path for f in log.files()}
        prefix = f"{root}/{table}/"
        todo = []
        for path, day, size in layout.parquet_files_legacy(log_dir, table):
            rel = path[len(prefix) :] if path.startswith(prefix) else path
            if rel not in have and layout.stem_of(path) not in live:
                todo.append((rel, day, size))
        for info in fs.get_file_info(
            pafs.FileSelector(f"{root}/{table}", recursive=True, allow_not_found=True)
        ):
            if ".parquet.tmp-" in info.path.rsplit("/", 1)[-1]:
                fs.delete_file(info.path)
        out[table] = log.register(todo)
    return out


_WRITER_LOGS: dict[tuple[str, str], DeltaLog] = {}


def _writer_log(log_dir: str, table: str) -> DeltaLog:
    key = (log_dir, table)
    if key not in _WRITER_LOGS:
        _WRITER_LOGS[key] = DeltaLog.for_log(log_dir, table)
    return _WRITER_LOGS[key]


def commit_segment(log_dir: str, stem: str, groups: dict[str, list[tuple[str, pa.Table]]]) -> int:
    """Commit one WAL segment's rows (``{table: [(day, rows), ...]}``), exactly once per table;
    returns the number of files added. Called by the writer's thread only."""
    return sum(
        _writer_log(log_dir, table).commit_segment(log_dir, stem, g) for table, g in sorted(groups.items())
    )


def committed_seq(log_dir: str, writer_id: str) -> int:
    """The highest WAL segment seq of ``writer_id`` committed to any of the log's tables."""
    seqs = [0]
    for t in TABLES:
        log = _writer_log(log_dir, t)
        try:
            seqs.append(log.committed_seq(writer_id))
        except TableCommitError:
            if log.exists():
                raise  # a table that cannot be read: the caller must not guess
    return max(seqs)


def write_data_file(log_dir: str, table: str, day: str, stem: str, data: pa.Table) -> Any:
    """Write ``data`` as one data file of ``table`` (not yet in the table); returns its add action
    for `commit_files`. A file never committed is invisible to readers (vacuum removes it)."""
    return _writer_log(log_dir, table)._write_file(log_dir, day, stem, data)


def commit_files(
    log_dir: str, table: str, writer_id: str, seq: int, actions: list[Any], *, operation: str
) -> bool:
    """Add the files of `write_data_file` in one commit recorded as the app transaction
    ``(writer_id, seq)``: exactly once (False, nothing done, when that version is committed)."""
    log = _writer_log(log_dir, table)
    if log.committed_seq(writer_id) >= seq:
        return False
    dl = _deltalake()
    props = dl.CommitProperties(
        app_transactions=[dl.Transaction(writer_id, seq)],
        custom_metadata={"shadowtune.operation": operation, "shadowtune.writer": writer_id},
        max_commit_retries=MAX_ATTEMPTS,
    )
    log._commit(actions, props)
    return True
