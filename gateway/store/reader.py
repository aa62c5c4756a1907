"""LogStore: read-only DuckDB views over the call log, importable without the server.

>>> store = LogStore.open("./shadowtune-data")
>>> store.sql("SELECT variant, count(*) AS n FROM calls GROUP BY variant")

Views:

* ``calls`` — every call (`CALLS_SCHEMA`): the files of the Delta table's snapshot plus
  the WAL tail that this host's writers have not committed yet, so a row is visible as soon
  as its call is done. A segment the table has already committed (its writer's app
  transaction version is at or past the segment's seq) is not read from the WAL.
* ``events`` — outcome events (`EVENTS_SCHEMA`), same rules.
* ``events_resolved`` — ``events`` with ``chatcmpl-`` ids resolved to call ids.
* ``user_events`` — the outcome signals of the calls' users: ``events_resolved`` without
  reviewer events (``source`` in `REVIEWER_SOURCES`), and only the latest event per
  ``(call_id, kind, poster)`` (`POSTER_SQL`), so a repeated post counts once. What user-outcome
  rates (``evals.online.outcomes``, the controller) are computed from.
* ``outcomes`` — events aggregated per call: thumbs, rating, choice, flags, regenerations
  from ``user_events``; the reviewers' thumbs apart (``reviewer_thumbs_up/down``); latest
  relabel, exclusion (from anyone).
* ``calls_with_outcomes`` — ``calls`` left-joined with ``outcomes``.
* ``judge_verdicts``, ``judge_judgements`` — per-item verdicts (with reasons) of the pairwise
  judge runs (``shadowtune eval judge``), once any exist.

The snapshot is taken when the store is opened and by `refresh` (the WAL first, then
the table, so a segment committed in between is seen once); a query that races with
vacuum is retried once on a fresh snapshot.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from gateway.store import layout
from gateway.store.layout import LogStoreError
from gateway.store.rows import convert, parse_lines, to_table
from gateway.store.schema import TABLES
from gateway.store.table import DataFile, DeltaLog, split_stem

if TYPE_CHECKING:
    from gateway.store.objectfs import SnapshotFS


@dataclass
class QueryLimits:
    """What DuckDB may use for the queries of every `LogStore` a process opens (`limit_queries`)."""

    memory_mb: int = 0
    """0: DuckDB's default (80 % of the machine's memory)."""
    threads: int = 0
    """0: DuckDB's default (one per core)."""
    temp_dir: str | None = None
    """Where a query past ``memory_mb`` spills (None: DuckDB's default, ``.tmp`` in the working
    directory; ``""``: nowhere, so such a query fails)."""


_limits = QueryLimits()


class QueryMemoryError(LogStoreError):
    """A query ran out of the memory its process allows (`limit_queries`) and could not spill."""


_instances = itertools.count()


SharedTail = Callable[[str], "tuple[dict[str, list[pa.Table]], int] | None"]
"""What a process that tails the WAL already holds of a segment: its rows as Arrow tables per
table, and the byte offset they end at; None when it holds nothing complete for it."""

_shared_tails: dict[str, SharedTail] = {}


def share_tail(wal_dir: str, source: SharedTail) -> Callable[[], None]:
    """Let every `LogStore` of this process over ``wal_dir`` take the unflushed tail from
    ``source`` (the log agent's `WalTailer`, which has parsed and derived it already), reading
    from the WAL only what was written after it; returns the function that stops it."""
    key = os.path.realpath(wal_dir)
    _shared_tails[key] = source

    def unshare() -> None:
        if _shared_tails.get(key) is source:
            del _shared_tails[key]

    return unshare


@dataclass
class _Tail:
    """One unflushed WAL segment as a store reads it."""

    tables: dict[str, list[pa.Table]]
    """Rows already in Arrow (`share_tail`), per table."""
    records: list[dict[str, Any]]
    """Records parsed from the segment itself (all of it, or what follows the shared rows)."""


def limit_queries(limits: QueryLimits) -> None:
    """Bound every `LogStore` this process opens from now on (the log agent: `gateway.agent.core`),
    and remove what processes that are gone left in ``temp_dir`` (a kill -9 skips DuckDB's cleanup)."""
    global _limits
    _limits = limits
    if limits.temp_dir:
        remove_stale_temp_dirs(limits.temp_dir)


def query_limits() -> QueryLimits:
    return _limits


def instance_temp_dir(temp_dir: str) -> str:
    """``<temp_dir>/<pid>-<n>``: each DuckDB instance spills into a directory of its own.

    DuckDB before 2.0 named the spill files of instances sharing a directory alike, and one
    instance's cleanup deleted the other's (duckdb/duckdb#15173: "could not read enough bytes");
    2.0 names them by process and instance. A directory per instance keeps either way apart, and
    what a killed process left is found by its pid (`remove_stale_temp_dirs`).
    """
    with contextlib.suppress(OSError):  # DuckDB makes the instance's directory, not its parents
        os.makedirs(temp_dir, exist_ok=True)
    return os.path.join(temp_dir, f"{os.getpid()}-{next(_instances)}")


def remove_stale_temp_dirs(temp_dir: str) -> int:
    """Remove the ``<pid>-<n>`` directories of ``temp_dir`` whose process is gone; returns how many."""
    try:
        names = os.listdir(temp_dir)
    except OSError:
        return 0
    removed = 0
    for name in names:
        pid, dash, n = name.partition("-")
        if not (dash and pid.isdigit() and n.isdigit()) or _alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(temp_dir, name), ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists (another user's): not ours to judge
        return True
    return True


Params = Sequence[object] | Mapping[str, object] | None
"""Query parameters: positional (``?``, ``$1``) or named (``$name``)."""

_READ_ONLY_TYPES = {"SELECT", "EXPLAIN", "PRAGMA", "SHOW", "DESCRIBE", "SUMMARIZE"}

# Result files that `evals` writes next to the log, exposed as views when they exist.
EXTRA_VIEWS = layout.RESULT_VIEWS

# Feedback may name a call by its x-request-id (call_id) or by the response's chatcmpl- id.
EVENTS_RESOLVED_SQL = """
SELECT e.* REPLACE (coalesce(m.call_id, e.call_id) AS call_id)
FROM events e
LEFT JOIN (SELECT any_value(call_id) AS call_id, response_id FROM calls
           WHERE served AND response_id IS NOT NULL GROUP BY response_id) m
  ON e.call_id = m.response_id
"""


_IS_REVIEWER = "coalesce(source, '') IN ('reviewer', 'review')"
REVIEWER_SQL = _IS_REVIEWER
"""SQL: the ``events`` row was posted by a reviewer (kept out of the users' outcomes)."""

POSTER_SQL = (
    "coalesce('key:' || key_id, 'reviewer:' || reviewer, 'user:' || \"user\", "
    "'source:' || coalesce(source, ''))"
)
"""Who posted an ``events`` row (`gateway.signals.feedback.poster_id`): what repeats are deduplicated on."""

USER_EVENTS_SQL = f"""
SELECT * EXCLUDE (_rn) FROM (
  SELECT *, row_number() OVER (
    PARTITION BY call_id, kind, {POSTER_SQL} ORDER BY ts DESC, event_id DESC) AS _rn
  FROM events_resolved WHERE NOT {_IS_REVIEWER}
) WHERE _rn = 1
"""

OUTCOMES_SQL = f"""
WITH e AS (
  SELECT *, {_IS_REVIEWER} AS by_reviewer, row_number() OVER (
      PARTITION BY call_id, kind, {POSTER_SQL} ORDER BY ts DESC, event_id DESC) = 1 AS latest
  FROM events_resolved
)
SELECT
  call_id,
  count(*) FILTER (WHERE latest AND NOT by_reviewer AND kind = 'thumbs' AND value = 'up') AS thumbs_up,
  count(*) FILTER (WHERE latest AND NOT by_reviewer AND kind = 'thumbs' AND value = 'down') AS thumbs_down,
  avg(value_num) FILTER (WHERE latest AND NOT by_reviewer AND kind = 'rating') AS rating,
  arg_max(value, ts) FILTER (WHERE NOT by_reviewer AND kind = 'choice') AS choice,
  count(*) FILTER (WHERE latest AND NOT by_reviewer AND kind = 'flag') AS flags,
  count(*) FILTER (WHERE NOT by_reviewer AND kind = 'regeneration') > 0 AS regenerated,
  arg_max(value, ts) FILTER (WHERE kind = 'relabel') AS relabel,
  count(*) FILTER (WHERE kind = 'exclude') > 0 AS excluded,
  count(*) AS n_events,
  count(*) FILTER (WHERE latest AND by_reviewer AND kind = 'thumbs' AND value = 'up') AS reviewer_thumbs_up,
  count(*) FILTER (WHERE latest AND by_reviewer AND kind = 'thumbs' AND value = 'down') AS reviewer_thumbs_down
FROM e GROUP BY call_id
"""


def _duckdb_config(limits: QueryLimits) -> dict[str, str | bool | int | float | list[str]]:
    config: dict[str, str | bool | int | float | list[str]] = {}
    if limits.memory_mb:
        config["memory_limit"] = f"{limits.memory_mb}MiB"
    if limits.threads:
        config["threads"] = limits.threads
    if limits.temp_dir == "":  # no spilling
        config["temp_directory"] = ""
    elif limits.temp_dir is not None:
        config["temp_directory"] = instance_temp_dir(limits.temp_dir)
    return config


class LogStore:
    """Read-only access to a call log directory (or object-store URI)."""

    def __init__(
        self, log_dir: str, *, wal_dir: str | None = None, max_tail_bytes: int | None = None
    ) -> None:
        self.log_dir = log_dir
        self.wal_dir = wal_dir or layout.default_wal_dir(log_dir)
        self.max_tail_bytes = max_tail_bytes
        """At most this many bytes of unflushed WAL are parsed per snapshot, newest segments first
        (None: all). Older segments are seen once converted; `tail_skipped_bytes` says how much was left."""
        self.tail_skipped_bytes = 0
        self.limits = _limits
        """The bounds of this store's queries (`limit_queries` when it was opened)."""
        self.con = duckdb.connect(":memory:", config=_duckdb_config(self.limits))
        self.objectfs: SnapshotFS | None = None
        """A log in object storage: what DuckDB reads its files through (`gateway.store.objectfs`)."""
        if layout.is_remote(log_dir):
            from gateway.store.objectfs import SnapshotFS  # fsspec: only for object storage

            self.objectfs = SnapshotFS(layout.filesystem(log_dir)[0])
            self.con.register_filesystem(self.objectfs)
            # footers kept across queries: a request less per file and query (the files never change)
            self.con.execute("SET parquet_metadata_cache = true")
        self._logs: dict[str, DeltaLog] = {}
        self.data_files: dict[str, list[DataFile]] = {}
        """Per table, the snapshot's data files (path, day partition, rows)."""
        self._views: dict[str, str] = {}
        """The SQL of each view made by the last `refresh`: one whose files did not change is kept."""
        self.refresh()

    @classmethod
    def open(cls, log_dir: str, *, wal_dir: str | None = None, max_tail_bytes: int | None = None) -> LogStore:
        """Open a store; `LogStoreError` when it does not exist or has an unknown schema."""
        fs, root = layout.filesystem(log_dir)
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            raise LogStoreError(f"no call log at {log_dir} (start the gateway or pass --log-dir)")
        layout.check_version(log_dir)
        return cls(log_dir, wal_dir=wal_dir, max_tail_bytes=max_tail_bytes)

    def refresh(self) -> None:
        """Take a new snapshot of the files (Parquet and unflushed WAL)."""
        live_stems = layout.wal_stems(self.wal_dir)
        tails = self._read_tail(live_stems)  # before the table snapshot: see the module docstring
        changed = not self._views
        for table in TABLES:
            log = self._logs.setdefault(table, DeltaLog.for_log(self.log_dir, table))
            snapshot = log.load() if log.exists() else None
            data_files = log.files(snapshot) if snapshot is not None else []
            self.data_files[table] = data_files  # with their day partition: `gateway.store.windows`
            if self.objectfs is not None:  # before a view binds them
                self.objectfs.know((f.uri, f.size) for f in data_files)
            committed: dict[str, int] = {}
            parts: list[pa.Table] = []
            recs: list[dict[str, Any]] = []
            for stem, seg in tails.items():
                writer_id, seq = split_stem(stem)
                if writer_id not in committed:
                    committed[writer_id] = (
                        log.committed_seq(writer_id, snapshot) if snapshot is not None else 0
                    )
                if seq > committed[writer_id]:
                    parts.extend(seg.tables.get(table, ()))
                    recs.extend(r for r in seg.records if r.get("_t") == table)
            # a record that cannot become a row is left out here; the writer quarantines it
            arrow, _ = convert(table, recs, [])
            if arrow is not None:
                parts.append(arrow)
            tail = pa.concat_tables(parts) if parts else to_table(table, [])
            self.con.register(f"_{table}_tail", tail)
            source = f"SELECT * FROM {self.parquet(data_files)}" if data_files else None
            body = (
                f"{source} UNION ALL BY NAME SELECT * FROM _{table}_tail"
                if source
                else f"SELECT * FROM _{table}_tail"
            )
            if self._views.get(table) != body:  # (the tail is found by name: re-registered above)
                self.con.execute(f"CREATE OR REPLACE VIEW {table} AS {body}")
                self._views[table] = body
                changed = True
        if self.objectfs is not None:
            self.objectfs.forget(f.uri for files in self.data_files.values() for f in files)
        self._extra_views()
        if changed:  # creating a view binds it: every file's footer, for each view over calls
            self.con.execute(f"CREATE OR REPLACE VIEW events_resolved AS {EVENTS_RESOLVED_SQL}")
            self.con.execute(f"CREATE OR REPLACE VIEW user_events AS {USER_EVENTS_SQL}")
            self.con.execute(f"CREATE OR REPLACE VIEW outcomes AS {OUTCOMES_SQL}")
            self.con.execute(
                "CREATE OR REPLACE VIEW calls_with_outcomes AS "
                "SELECT c.*, o.* EXCLUDE (call_id) FROM calls c LEFT JOIN outcomes o USING (call_id)"
            )

    def parquet(self, files: Sequence[DataFile]) -> str:
        """``read_parquet`` over snapshot files (DuckDB's reader, local or object storage alike)."""
        if self.objectfs is not None:
            from gateway.store.objectfs import duckdb_path

            paths = [duckdb_path(f.uri) for f in files]
        else:
            paths = [f.uri.removeprefix("file://") for f in files]
        listing = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        return f"read_parquet([{listing}], union_by_name = true, hive_partitioning = false)"

    def _extra_views(self) -> None:
        """Views over result files other tools keep next to the log (local logs only), when present."""
        if layout.is_remote(self.log_dir):
            return
        root = layout.local_path(self.log_dir)
        for view, pattern in EXTRA_VIEWS.items():
            found = sorted(glob.glob(os.path.join(root, pattern)))
            if found and self._views.get(view) != repr(found):
                path = os.path.join(root, pattern).replace("'", "''")
                self.con.execute(
                    f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM "
                    f"read_parquet('{path}', union_by_name = true, filename = true)"
                )
                self._views[view] = repr(found)

    def _read_tail(self, live_stems: set[str]) -> dict[str, _Tail]:
        """Each unflushed WAL segment, by segment stem (within `max_tail_bytes`): from what this
        process's tailer holds of it (`share_tail`) plus the lines written since, or parsed whole."""
        out: dict[str, _Tail] = {}
        self.tail_skipped_bytes = 0
        shared = _shared_tails.get(os.path.realpath(self.wal_dir)) if self.wal_dir else None
        for stem, path in self._tail_segments(live_stems):
            held = shared(path) if shared is not None else None
            tables, offset = held if held is not None else ({}, 0)
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                out[stem] = _Tail(tables, parse_lines(f.read())[0])
        return out

    def _tail_segments(self, live_stems: set[str]) -> list[tuple[str, str]]:
        """``(stem, path)`` of the segments to read: all, or the newest within `max_tail_bytes`
        (segments rotate every second, so what is left out is the oldest backlog, converted first)."""
        paths = [(stem, os.path.join(self.wal_dir, stem + layout.WAL_SUFFIX)) for stem in sorted(live_stems)]
        if self.max_tail_bytes is None:
            return paths
        sized: list[tuple[float, int, str, str]] = []
        for stem, path in paths:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                sized.append((st.st_mtime, st.st_size, stem, path))
        kept: list[tuple[str, str]] = []
        budget = self.max_tail_bytes
        for _, size, stem, path in sorted(sized, reverse=True):
            if size <= budget:
                kept.append((stem, path))
                budget -= size
            else:
                budget = -1  # nothing older: the tail stays one contiguous recent stretch
                self.tail_skipped_bytes += size
        return sorted(kept)

    # -- queries ------------------------------------------------------------------------
    def sql(self, query: str, params: Params = None) -> list[dict[str, Any]]:
        """Run a read-only query; rows as dicts."""
        cur = self._execute(query, params)
        cols = [d[0] for d in cur.description or ()]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def batches(
        self, query: str, params: Params = None, *, rows: int = 20_000
    ) -> Iterator[list[dict[str, Any]]]:
        """Run a read-only query; its rows as dicts, ``rows`` at a time (the Python rows held stay bounded)."""
        cur = self._execute(query, params)
        cols = [d[0] for d in cur.description or ()]
        while chunk := cur.fetchmany(rows):
            yield [dict(zip(cols, row, strict=True)) for row in chunk]

    def arrow(self, query: str, params: Params = None) -> pa.Table:
        """Run a read-only query; an Arrow table."""
        return self._execute(query, params).to_arrow_table()

    def _execute(self, query: str, params: Params) -> duckdb.DuckDBPyConnection:
        check_read_only(query)
        try:
            try:
                return self.con.execute(query, params)
            except duckdb.Error as exc:
                if not _file_gone(exc):
                    raise
            self.refresh()  # a file went away under us (vacuum): new snapshot, once
            return self.con.execute(query, params)
        except duckdb.OutOfMemoryException as exc:
            raise QueryMemoryError(
                f"the query needs more memory than this process allows its queries "
                f"({self.limits.memory_mb or 'DuckDB default'} MiB, store.query_memory_mb): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        except duckdb.Error as exc:
            raise LogStoreError(_message(exc)) from exc

    def count(self, table: str = "calls") -> int:
        return int(self.sql(f"SELECT count(*) AS n FROM {table}")[0]["n"])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_gone(exc: duckdb.Error) -> bool:
    """A snapshot file could not be read: DuckDB's own IOException, or any error the Python
    filesystem of a log in object storage (`gateway.store.objectfs`) raised inside DuckDB (an
    object that vacuum deleted, or a failed request: worth a new snapshot and one more try)."""
    if isinstance(exc, duckdb.IOException):
        return True
    return type(exc) is duckdb.Error and str(exc).startswith("Traceback")


def _message(exc: duckdb.Error) -> str:
    """One line for the caller: DuckDB's own, or for an error a Python filesystem raised inside
    DuckDB (a traceback), that error's own line."""
    lines = str(exc).splitlines()
    if lines and lines[0].startswith("Traceback"):
        raised = [ln for ln in lines if ln and not ln.startswith((" ", "Traceback", "LINE ")) and ": " in ln]
        if raised:
            return raised[-1]
    return lines[0] if lines else type(exc).__name__


def check_read_only(query: str) -> None:
    """`LogStoreError` unless every statement in ``query`` only reads."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise LogStoreError(str(exc).splitlines()[0]) from exc
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in _READ_ONLY_TYPES:
            raise LogStoreError(f"the call log is read-only here: {kind} statements are not allowed")
