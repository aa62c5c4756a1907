"""The call log: `LogWriter` (the gateway's only writer) and `LogStore` (read-only, for everyone).

Import-light on purpose: pyarrow, duckdb, orjson and deltalake (imported on first use) only,
so `trainer` and `evals` can read the log without importing the server. The names below are
loaded on first use, so a request worker can import `gateway.store.ids` and
`gateway.store.wal` without pyarrow or DuckDB (`tests/unit/test_import_boundaries.py`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.store.layout import LogStoreError
    from gateway.store.reader import LogStore
    from gateway.store.schema import CALLS_SCHEMA, EVENTS_SCHEMA, SCHEMA_VERSION
    from gateway.store.writer import LogWriter

_LAZY = {
    "LogStoreError": "gateway.store.layout",
    "LogStore": "gateway.store.reader",
    "CALLS_SCHEMA": "gateway.store.schema",
    "EVENTS_SCHEMA": "gateway.store.schema",
    "SCHEMA_VERSION": "gateway.store.schema",
    "LogWriter": "gateway.store.writer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["CALLS_SCHEMA", "EVENTS_SCHEMA", "SCHEMA_VERSION", "LogStore", "LogStoreError", "LogWriter"]
