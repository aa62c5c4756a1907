"""The call log: `LogWriter` (the gateway's only writer) and `LogStore` (read-only, for everyone).

Import-light on purpose: pyarrow, duckdb, orjson and deltalake (imported on first use) only,
so `trainer` and `evals` can read the log without importing the server.
"""

from gateway.store.layout import LogStoreError
from gateway.store.reader import LogStore
from gateway.store.schema import CALLS_SCHEMA, EVENTS_SCHEMA, SCHEMA_VERSION
from gateway.store.writer import LogWriter

__all__ = ["CALLS_SCHEMA", "EVENTS_SCHEMA", "SCHEMA_VERSION", "LogStore", "LogStoreError", "LogWriter"]
