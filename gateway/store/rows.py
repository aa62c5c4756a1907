"""From WAL records (what the request path appends) to Arrow tables (what Parquet holds).

The request path does as little as it can: it appends one JSON line per call holding the
raw request body, the raw upstream body (JSON, or the SSE text of a stream) and a few
numbers. Everything derived — the response assembled from a stream, output text, finish
reason, token counts, cost — is computed here, in batches, off the request path, by the
background writer (and by `LogStore` for the not-yet-flushed tail).

WAL record keys for ``calls`` are the column names of `CALLS_SCHEMA`, with these changes:
``ts`` is epoch microseconds; ``response_sse`` (raw SSE text) may stand instead of
``response``; ``price_in`` / ``price_out`` (USD per million tokens) feed ``cost_usd``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pyarrow as pa

from gateway.store.schema import SCHEMA_VERSION, TABLES

_UTC = dt.UTC


def parse_lines(data: bytes, *, strict_tail: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Parse WAL bytes into records; returns ``(records, corrupt_count)``.

    A line that does not parse (a torn write at a crash, a corrupt record) is skipped
    and counted. The last line of a segment that is still being written may be
    incomplete: with ``strict_tail=False`` an unterminated last line is ignored silently.
    """
    records: list[dict[str, Any]] = []
    corrupt = 0
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when data ends with a newline
    if last and strict_tail:
        lines.append(last)
    for line in lines:
        if not line:
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            corrupt += 1
            continue
        if isinstance(rec, dict) and "_t" in rec:
            records.append(rec)
        else:
            corrupt += 1
    return records, corrupt


def assemble_stream(sse: str) -> dict[str, Any]:
    """Rebuild a ``chat.completion`` object from the SSE text of a streamed completion.

    Concatenates content and tool-call argument deltas per choice, keeps the finish
    reasons, the usage chunk (``stream_options.include_usage``) and logprobs.
    """
    base: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    error = None
    for block in sse.split("\n\n"):
        for line in block.split("\n"):
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == "[DONE]":
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                error = chunk["error"]
                continue
            if not base:
                base = {k: chunk.get(k) for k in ("id", "model", "created", "system_fingerprint")}
            if chunk.get("usage"):
                usage = chunk["usage"]
            for ch in chunk.get("choices") or ():
                _merge_choice(choices, ch)
    out: dict[str, Any] = {
        "id": base.get("id"),
        "object": "chat.completion",
        "created": base.get("created"),
        "model": base.get("model"),
        "choices": [_finish_choice(choices[i]) for i in sorted(choices)],
    }
    if base.get("system_fingerprint"):
        out["system_fingerprint"] = base["system_fingerprint"]
    if usage is not None:
        out["usage"] = usage
    if error is not None:
        out["error"] = error
    return out


def _merge_choice(choices: dict[int, dict[str, Any]], ch: dict[str, Any]) -> None:
    idx = ch.get("index", 0)
    acc = choices.setdefault(idx, {"index": idx, "role": None, "content": [], "tools": {}, "finish": None})
    delta = ch.get("delta") or {}
    if delta.get("role"):
        acc["role"] = delta["role"]
    if delta.get("content"):
        acc["content"].append(delta["content"])
    if delta.get("refusal"):
        acc.setdefault("refusal", []).append(delta["refusal"])
    for tc in delta.get("tool_calls") or ():
        slot = acc["tools"].setdefault(
            tc.get("index", 0), {"id": None, "type": "function", "name": [], "arguments": []}
        )
        if tc.get("id"):
            slot["id"] = tc["id"]
        if tc.get("type"):
            slot["type"] = tc["type"]
        fn = tc.get("function") or {}
        if fn.get("name"):
            slot["name"].append(fn["name"])
        if fn.get("arguments"):
            slot["arguments"].append(fn["arguments"])
    if ch.get("logprobs"):
        lp = acc.setdefault("logprobs", {"content": []})
        lp["content"].extend((ch["logprobs"] or {}).get("content") or ())
    if ch.get("finish_reason"):
        acc["finish"] = ch["finish_reason"]


def _finish_choice(acc: dict[str, Any]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": acc["role"] or "assistant", "content": "".join(acc["content"]) or None}
    if acc.get("refusal"):
        msg["refusal"] = "".join(acc["refusal"])
    if acc["tools"]:
        msg["tool_calls"] = [
            {
                "id": t["id"],
                "type": t["type"],
                "function": {"name": "".join(t["name"]), "arguments": "".join(t["arguments"])},
            }
            for _, t in sorted(acc["tools"].items())
        ]
    out = {"index": acc["index"], "message": msg, "finish_reason": acc["finish"]}
    if acc.get("logprobs"):
        out["logprobs"] = acc["logprobs"]
    return out


def _derive_call(rec: dict[str, Any]) -> dict[str, Any]:
    """Fill the derived columns of one call record (in place) and return it."""
    resp: Any = None
    sse = rec.pop("response_sse", None)
    if sse is not None:
        resp = assemble_stream(sse)
        rec["response"] = orjson.dumps(resp).decode()
    elif rec.get("response"):
        try:
            resp = orjson.loads(rec["response"])
        except orjson.JSONDecodeError:
            resp = None
    if isinstance(resp, dict):
        rec.setdefault("response_id", resp.get("id"))
        rec["_response_model"] = resp.get("model")  # not a column: for telemetry
        choices = resp.get("choices") or ()
        if choices and isinstance(choices[0], dict):
            first = choices[0]
            msg = first.get("message") or {}
            if rec.get("output_text") is None and isinstance(msg.get("content"), str):
                rec["output_text"] = msg["content"]
            rec.setdefault("finish_reason", first.get("finish_reason"))
        usage = resp.get("usage") or {}
        if isinstance(usage, dict):
            if rec.get("input_tokens") is None:
                rec["input_tokens"] = usage.get("prompt_tokens", usage.get("input_tokens"))
            if rec.get("output_tokens") is None:
                rec["output_tokens"] = usage.get("completion_tokens", usage.get("output_tokens"))
    price_in = rec.pop("price_in", None)
    price_out = rec.pop("price_out", None)
    if rec.get("cost_usd") is None and (price_in is not None or price_out is not None):
        rec["cost_usd"] = (
            (rec.get("input_tokens") or 0) * (price_in or 0.0)
            + (rec.get("output_tokens") or 0) * (price_out or 0.0)
        ) / 1e6
    return rec


def _ts(us: Any) -> dt.datetime:
    if isinstance(us, int | float):
        return dt.datetime.fromtimestamp(us / 1e6, tz=_UTC)
    return dt.datetime.fromisoformat(str(us))


def derive(table: str, rec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a WAL record with its derived columns filled (see the module docstring)."""
    return _derive_call(dict(rec)) if table == "calls" else rec


def to_table(table: str, records: Iterable[dict[str, Any]], *, derived: bool = False) -> pa.Table:
    """Build an Arrow table of ``table``'s schema from WAL records (derived columns filled)."""
    schema = TABLES[table]
    cols: dict[str, list[Any]] = {name: [] for name in schema.names}
    for rec in records:
        if not derived:
            rec = derive(table, rec)
        for name, col in cols.items():
            if name == "ts":
                col.append(_ts(rec["ts"]))
            elif name == "schema_version":
                col.append(rec.get(name, SCHEMA_VERSION))
            else:
                col.append(rec.get(name))
    return pa.Table.from_pydict(cols, schema=schema)


def group_by_table_and_date(records: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """Yield ``(table, "YYYY-MM-DD", records)`` groups, the unit of a Parquet file."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        table = rec.get("_t")
        if table not in TABLES:
            continue
        day = _ts(rec["ts"]).date().isoformat()
        groups[(table, day)].append(rec)
    for (table, day), recs in sorted(groups.items()):
        yield table, day, recs
