"""From WAL records (what the request path appends) to Arrow tables (what Parquet holds).

The request path does as little as it can: it appends one JSON line per call holding the
raw request body, the raw upstream body (JSON, or the SSE text of a stream) and a few
numbers. Everything derived — the response assembled from a stream, output text, finish
reason, token counts, cost — is computed here, in batches, off the request path, by the
background writer (and by `LogStore` for the not-yet-flushed tail).

WAL record keys for ``calls`` are the column names of `CALLS_SCHEMA`, with these changes:
``ts`` is epoch microseconds; ``response_sse`` (raw SSE text) may stand instead of
``response`` (assembled into it; kept raw when its chunks cannot be assembled);
``price_in`` / ``price_out`` (USD per million tokens) feed ``cost_usd``; ``redact`` (the
route's redaction, `gateway.protocol.redact.log_spec`) is applied to the request, the
response (a stream once assembled, by `gateway.protocol.sse`) and the metadata before any
column is derived from them. The request path
appends `gateway.protocol.record.CallRecord.to_wal`, whose values fit their columns; the
upstream's body is checked here (a non-string id, a non-integer token count is left out),
and a record that still does not fit is quarantined by the writer (`convert`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pyarrow as pa

from gateway.protocol.redact import for_spec
from gateway.protocol.sse import assemble as sse_assemble
from gateway.store import surfaces
from gateway.store.schema import SCHEMA_VERSION, TABLES

_UTC = dt.UTC


def parse_lines(
    data: bytes,
    *,
    strict_tail: bool = False,
    bad: list[tuple[int, bytes]] | None = None,
    positions: list[int] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Parse WAL bytes into records; returns ``(records, corrupt_count)``.

    A line that does not parse (a torn write at a crash, a corrupt record) is skipped
    and counted (and appended to ``bad`` as ``(line_number, line)`` when given;
    ``positions`` receives each record's line number). The last line of a segment that is
    still being written may be incomplete: with ``strict_tail=False`` an unterminated last
    line is ignored silently.
    """
    records: list[dict[str, Any]] = []
    corrupt = 0
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when data ends with a newline
    if last and strict_tail:
        lines.append(last)
    for n, line in enumerate(lines):
        if not line:
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "_t" in rec:
            records.append(rec)
            if positions is not None:
                positions.append(n)
            continue
        corrupt += 1
        if bad is not None:
            bad.append((n, line))
    return records, corrupt


def _derive_call(rec: dict[str, Any]) -> dict[str, Any]:
    """Fill the derived columns of one call record (in place) and return it."""
    resp: Any = None
    sse = rec.pop("response_sse", None)
    spec = rec.pop("redact", None)
    if sse is not None:
        try:
            resp = sse_assemble(rec.get("endpoint"), sse)
            rec["response"] = orjson.dumps(resp).decode()
        except Exception:  # chunks of a shape no stream has: keep what came, as it came
            rec["response"] = sse
            resp = None
    if spec is not None:  # before anything is derived from the bodies (gateway.protocol.redact)
        redact = for_spec(spec)
        for key in ("request", "response", "metadata"):
            if isinstance(rec.get(key), str):
                rec[key] = redact(rec[key])
        resp = None
    if resp is None and rec.get("response"):
        try:
            resp = orjson.loads(rec["response"])
        except orjson.JSONDecodeError:
            resp = None
    if isinstance(resp, dict):
        _response_fields(rec, resp)
    _cost(rec)
    return rec


def _response_fields(rec: dict[str, Any], resp: dict[str, Any]) -> None:
    """The columns taken from the upstream's answer (id, output text, finish reason, tokens).

    The upstream's body is not ours either: each value must fit its column, or is left out.
    """
    rec.setdefault("response_id", _text(resp.get("id")))
    model = resp.get("model")
    rec["_response_model"] = model if isinstance(model, str) else None  # not a column: telemetry
    if rec.get("endpoint") in ("responses", "completions"):
        surfaces.derive(rec, resp)
    choices = resp.get("choices") or ()
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        msg = first.get("message") or {}
        if rec.get("output_text") is None and isinstance(msg, dict) and isinstance(msg.get("content"), str):
            rec["output_text"] = msg["content"]
        rec.setdefault("finish_reason", _text(first.get("finish_reason")))
    usage = resp.get("usage") or {}
    if isinstance(usage, dict):
        if rec.get("input_tokens") is None:
            rec["input_tokens"] = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        if rec.get("output_tokens") is None:
            rec["output_tokens"] = _count(usage.get("completion_tokens", usage.get("output_tokens")))


def _cost(rec: dict[str, Any]) -> None:
    """``cost_usd`` from the route's prices (USD per million tokens), unless the record has one."""
    price_in = rec.pop("price_in", None)
    price_out = rec.pop("price_out", None)
    if rec.get("cost_usd") is None and (price_in is not None or price_out is not None):
        rec["cost_usd"] = (
            (rec.get("input_tokens") or 0) * (price_in or 0.0)
            + (rec.get("output_tokens") or 0) * (price_out or 0.0)
        ) / 1e6


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else orjson.dumps(value).decode()


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value < 2**63 else None


def _ts(us: Any) -> dt.datetime:
    if isinstance(us, int | float):
        return dt.datetime.fromtimestamp(us / 1e6, tz=_UTC)
    return dt.datetime.fromisoformat(str(us))


_US_PER_DAY = 86_400_000_000
_EPOCH_DAY = dt.date(1970, 1, 1)
_DAYS: dict[int, str] = {}


def _day(n: int) -> str:
    """``YYYY-MM-DD`` of day ``n`` since the epoch (UTC), cached: a log spans few days."""
    day = _DAYS.get(n)
    if day is None:
        day = (_EPOCH_DAY + dt.timedelta(days=n)).isoformat()  # OverflowError out of range
        if len(_DAYS) < 4096:
            _DAYS[n] = day
    return day


def _ts_us(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1_000_000)
    return int(dt.datetime.fromisoformat(str(value)).timestamp() * 1_000_000)


def derive(table: str, rec: dict[str, Any], *, copy: bool = True) -> dict[str, Any]:
    """A copy of a WAL record with its derived columns filled (see the module docstring);
    ``copy=False``: the record itself, filled in place (a record nothing else holds)."""
    if table != "calls":
        return rec
    return _derive_call(dict(rec) if copy else rec)


def to_table(table: str, records: Iterable[dict[str, Any]], *, derived: bool = False) -> pa.Table:
    """Build an Arrow table of ``table``'s schema from WAL records (derived columns filled)."""
    schema = TABLES[table]
    rows = list(records) if derived else [derive(table, r) for r in records]
    fast = _struct_table(table, rows)
    if fast is not None:
        return fast
    cols: dict[str, Any] = {}
    for name in schema.names:
        if name == "ts":
            cols[name] = [_ts_us(r["ts"]) for r in rows]
        elif name == "schema_version":
            cols[name] = [r.get(name, SCHEMA_VERSION) for r in rows]
        else:
            cols[name] = [r.get(name) for r in rows]
    return pa.Table.from_pydict(cols, schema=schema)


_STRUCTS = {
    name: pa.struct([f for f in schema if f.name != "schema_version"]) for name, schema in TABLES.items()
}
_REQUIRED = {
    name: [f.name for f in schema if not f.nullable and f.name != "schema_version"]
    for name, schema in TABLES.items()
}


def _struct_table(table: str, rows: list[dict[str, Any]]) -> pa.Table | None:
    """`to_table` in one conversion of the rows as Arrow structs (the columns read from each dict
    in C++, about 3x faster than a Python list per column); None when the rows need the general
    path: a ``ts`` that is not epoch microseconds, a ``schema_version`` of their own, a missing
    required value, or a value the struct conversion refuses (the general path then says why)."""
    for r in rows:
        if type(r.get("ts")) is not int or "schema_version" in r:
            return None
    try:
        data = pa.Table.from_struct_array(pa.array(rows, type=_STRUCTS[table]))
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    if any(data.column(name).null_count for name in _REQUIRED[table]):
        return None
    version = pa.array([SCHEMA_VERSION] * len(rows), type=pa.int16())
    return data.add_column(0, TABLES[table].field("schema_version"), version)


Rejected = tuple[dict[str, Any], str]
"""A record that cannot become a row, and why (it goes to the quarantine)."""


def group_by_table_and_date(
    records: Iterable[dict[str, Any]], rejected: list[Rejected] | None = None
) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """Yield ``(table, "YYYY-MM-DD", records)`` groups, the unit of a Parquet file.

    A record of no known table or without a usable ``ts`` is left out (and appended to
    ``rejected`` with the reason when given).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        table = rec.get("_t")
        if table not in TABLES:
            if rejected is not None:
                rejected.append((rec, f"unknown table {table!r}"))
            continue
        try:
            ts = rec["ts"]
            day = _day(ts // _US_PER_DAY) if type(ts) is int else _ts(ts).date().isoformat()
        except Exception as exc:  # missing, of the wrong type, out of range
            if rejected is not None:
                rejected.append((rec, f"bad ts: {_reason(exc)}"))
            continue
        groups[(table, day)].append(rec)
    for (table, day), recs in sorted(groups.items()):
        yield table, day, recs


def convert(
    table: str, records: list[dict[str, Any]], rejected: list[Rejected]
) -> tuple[pa.Table | None, list[dict[str, Any]]]:
    """``records`` as an Arrow table plus their derived rows, whatever they hold.

    The whole batch is converted at once; if that fails, record by record, so that a
    record that cannot become a row (appended to ``rejected`` with the reason) never
    keeps the records around it out of the log. None when no record converts.
    """
    try:
        rows = [derive(table, r) for r in records]
        return to_table(table, rows, derived=True), rows
    except Exception:  # some record does not fit the schema: find it, keep the others
        rows = []
        for rec in records:
            try:
                row = derive(table, rec)
                to_table(table, [row], derived=True)
            except Exception as exc:
                rejected.append((rec, _reason(exc)))
                continue
            rows.append(row)
        return (to_table(table, rows, derived=True) if rows else None), rows


def redacted_line(rec: dict[str, Any], line: bytes) -> bytes:
    """A WAL line as the quarantine keeps it: redacted by its record's ``redact`` spec, if any."""
    spec = rec.get("redact")
    if spec is None:
        return line
    try:
        return for_spec(spec)(line.decode("utf-8", "replace")).encode()
    except ValueError:  # not a spec of ours: nothing to apply
        return line


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
