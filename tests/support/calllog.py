"""Reading the call log back in tests: the Parquet rows through `LogStore`, after a flush."""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.store import LogStore


def rows(gw: Any, log_dir: str, where: str = "TRUE", params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Flush the gateway's writer, then the ``calls`` rows matching ``where`` (oldest first)."""
    gw.flush()
    with LogStore.open(log_dir) as store:
        return store.sql(f"SELECT * FROM calls WHERE {where} ORDER BY ts, call_id", params or [])


def row(gw: Any, log_dir: str, call_id: str) -> dict[str, Any]:
    """The one row of ``call_id`` (fails unless there is exactly one)."""
    found = rows(gw, log_dir, "call_id = ?", [call_id])
    assert len(found) == 1, f"{call_id}: {len(found)} rows"
    return found[0]


def wait_for_rows(gw: Any, log_dir: str, where: str, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll until ``n`` rows match (calls logged after the response, such as disconnects)."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(gw, log_dir, where)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def response(r: dict[str, Any]) -> dict[str, Any]:
    return json.loads(r["response"])


def request(r: dict[str, Any]) -> dict[str, Any]:
    return json.loads(r["request"])
