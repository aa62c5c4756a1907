"""DuckDB's own Parquet reader over a log in object storage, through the log's pyarrow filesystem.

A log on ``s3://`` (or ``gs://``, ``abfs://``: whatever `pyarrow.fs.FileSystem.from_uri` opens)
used to be read as pyarrow datasets registered on the store's connection. What DuckDB holds of
such a scan does not spill: the 7-day outcome query over 10M calls failed at a 512 MiB and a
1 GiB bound and needed 5.8 GB unbounded (``docs/benchmarks.md``, round 6). ``read_parquet``
spills as it does for local files, but DuckDB's own S3 reader (``httpfs``) is an extension
downloaded at run time, which a pod may not reach. So each store registers a `SnapshotFS` on
its connection: an fsspec filesystem (DuckDB's documented hook for custom storage) under the
protocol ``stlog://`` that reads through the same pyarrow filesystem the writer uses.

The snapshot's files are immutable (a Delta table never rewrites a path) and their sizes are
in the Delta log, so the metadata DuckDB asks for per file (glob, exists, size, modified time)
is answered from that list without a request, and each file is opened once per store (an
open costs a HEAD request) and shared by its readers through positional reads: what is left
are the reads of footers and column chunks. With a constant modified time DuckDB's
Parquet metadata cache keeps the footers across queries.

>>> fs = SnapshotFS(pyarrow_fs)
>>> fs.know([("bucket/log/calls/date=2026-12-01/a.parquet", 1234)])
>>> con.register_filesystem(fs)
>>> con.sql("SELECT count(*) FROM read_parquet('stlog://bucket/log/calls/date=2026-12-01/a.parquet')")
"""

from __future__ import annotations

import datetime as dt
import io
import threading
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from fsspec.implementations.arrow import ArrowFSWrapper

PROTOCOL = "stlog"
_MTIME = 0.0  # the files never change under one path: one modified time for all
MAX_OPEN = 512
"""Open input files a store keeps (an open S3 object holds no connection, only its size)."""


def duckdb_path(uri: str) -> str:
    """The path DuckDB reads a snapshot file by: ``s3://b/k`` -> ``stlog://b/k``."""
    return f"{PROTOCOL}://{uri.split('://', 1)[-1]}"


class SnapshotFS(ArrowFSWrapper):  # type: ignore[misc]  # fsspec is untyped
    """The object store's files as DuckDB sees them: known files answered from their sizes,
    read through ``fs``; anything else is passed to ``fs`` as it is."""

    protocol = PROTOCOL
    root_marker = ""
    cachable = False  # one per store: fsspec's instance cache would share the known files

    def __init__(self, fs: pafs.FileSystem) -> None:
        super().__init__(fs)
        self._sizes: dict[str, int] = {}
        self._handles: dict[str, pa.NativeFile] = {}
        self._lock = threading.Lock()

    def know(self, files: Iterable[tuple[str, int]]) -> None:
        """Add files (``bucket/key`` or any URI of them, and their size in bytes) to the known ones."""
        with self._lock:
            self._sizes.update((self._strip_protocol(p), int(s)) for p, s in files)

    def forget(self, keep: Iterable[str]) -> None:
        """Keep only the files in ``keep`` (a new snapshot's: removed files are no longer known)."""
        kept = {self._strip_protocol(p) for p in keep}
        with self._lock:
            self._sizes = {p: s for p, s in self._sizes.items() if p in kept}
            gone = [p for p in self._handles if p not in kept]
            for p in gone:
                self._handles.pop(p).close()

    def _size_of(self, path: str) -> int | None:
        with self._lock:
            return self._sizes.get(self._strip_protocol(path))

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path[0] if isinstance(path, list) else path)
        return text.split("://", 1)[-1].lstrip("/")

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        size = self._size_of(path)
        if size is None:
            return dict(super().info(path, **kwargs))
        return {"name": self._strip_protocol(path), "size": size, "type": "file", "mtime": _MTIME}

    def exists(self, path: str, **kwargs: Any) -> bool:
        return self._size_of(path) is not None or bool(super().exists(path))

    def glob(self, path: str, **kwargs: Any) -> Any:
        if self._size_of(path) is not None:  # a listed file, not a pattern: no LIST request
            return [self._strip_protocol(path)]
        return super().glob(path, **kwargs)

    def size(self, path: str) -> int:
        size = self._size_of(path)
        return size if size is not None else int(super().size(path))

    def modified(self, path: str) -> Any:
        if self._size_of(path) is not None:
            return dt.datetime.fromtimestamp(_MTIME, dt.UTC)
        return super().modified(path)

    def _open(
        self, path: str, mode: str = "rb", block_size: int | None = None, seekable: bool = True, **kwargs: Any
    ) -> Any:
        size = self._size_of(path)
        if mode != "rb" or not seekable or size is None:
            return super()._open(path, mode, block_size, seekable, **kwargs)
        return _RangeFile(self._handle(self._strip_protocol(path)), size)

    def _handle(self, name: str) -> pa.NativeFile:
        """One open input file per known path, shared by every reader of it (positional reads):
        opening an object costs a HEAD request, and DuckDB opens a file twice per query."""
        with self._lock:
            handle = self._handles.pop(name, None)
            if handle is not None:
                self._handles[name] = handle  # most recently used last
                return handle
        handle = self.fs.open_input_file(name)
        with self._lock:
            self._handles[name] = handle
            while len(self._handles) > MAX_OPEN:
                self._handles.pop(next(iter(self._handles))).close()
        return handle


class _RangeFile(io.RawIOBase):
    """A reader's own position over a shared input file (``read_at``: safe across threads)."""

    def __init__(self, handle: pa.NativeFile, size: int) -> None:
        super().__init__()
        self._handle = handle
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        n = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        if n <= 0:
            return b""
        data: bytes = self._handle.read_at(n, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
