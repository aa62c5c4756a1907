"""``shadowtune logs import FILE.jsonl``: traffic from before Shadowtune, into the call log.

One JSON object a line, in either shape:

* **Shadowtune's**: ``{"ts": ..., "request": <chat request>, "response": <chat.completion>,
  "user"?: ..., "metadata"?: {...}}``. ``ts`` is ISO 8601 (``2024-03-14T09:30:00Z``; no
  offset means UTC) or epoch seconds (milliseconds and microseconds are recognised by size).
  Optional ``latency_ms`` (a number) and ``status`` (an integer, default 200) are kept too.
* **OpenAI's stored completions** (``GET /v1/chat/completions``, each item of ``data``, or
  a whole list page on one line): a ``chat.completion`` object with ``created``, ``model``,
  ``metadata`` and the choices, plus its input messages as ``"messages"``, a list or the
  page ``GET /v1/chat/completions/{id}/messages`` returns (``{"object": "list", "data":
  [...]}``; the stored messages' ``id`` and ``content_parts`` are dropped). OpenAI keeps the
  input messages apart from the completion, so a line without them is reported.

Rows are marked as imported: ``mode = 'import'``, ``upstream = 'import'`` and the tag
``imported`` (no new column: every reader keeps working), ``variant = 'baseline'``,
``served = true``, the route from ``--route`` or else the model. ``user``, ``metadata``,
``metadata.session_id`` and ``metadata.tags`` follow the log's record rules
(`gateway.protocol.record`): a value that is not a string is kept as its JSON text.

A line that is not JSON or not of either shape is reported with its line number and
skipped. Nothing is half-imported: the rows are written as Parquet files that no reader
sees until one Delta commit adds them all (`gateway.store.table.commit_files`), recorded as
the app transaction ``(import id, 1)``, where the import id is a hash of the file's bytes
and the route. A kill at any moment leaves 0 rows or all of them; running the same file
again adds nothing (the files of a killed run are rewritten under the same names, and
vacuum removes what was never committed). Call ids are derived from the import id and the
line, so they are the same on every run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from gateway.protocol.record import CallRecord, json_text
from gateway.store import layout
from gateway.store import table as tables
from gateway.store.schema import CALLS_SCHEMA, SCHEMA_VERSION

CHUNK_ROWS = 50_000
"""Rows per data file written (memory stays bounded by one chunk, whatever the file's size)."""
OPERATION = "import"
TAG = "imported"
_I = {name: i for i, name in enumerate(CALLS_SCHEMA.names)}
_TEMPLATE: tuple[Any, ...] = tuple(
    {
        "schema_version": SCHEMA_VERSION,
        "endpoint": "chat.completions",
        "variant": "baseline",
        "served": True,
        "mode": "import",
        "upstream": "import",
    }.get(name)
    for name in CALLS_SCHEMA.names
)
_PAIRS = [a + b for a in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" for b in "0123456789ABCDEFGHJKMNPQRSTVWXYZ"]


class BadRecord(ValueError):
    """A line that cannot become a call (the message says why)."""


@dataclass
class BadLine:
    line: int
    """1-based, as editors count."""
    reason: str


@dataclass
class ImportResult:
    import_id: str
    rows: int = 0
    files: int = 0
    bad: list[BadLine] = field(default_factory=list)
    already: bool = False
    """This file was imported before: nothing was added."""
    seconds: float = 0.0

    def as_dict(self, max_bad: int = 100) -> dict[str, Any]:
        return {
            "import_id": self.import_id,
            "rows": self.rows,
            "files": self.files,
            "already_imported": self.already,
            "bad_lines": len(self.bad),
            "bad": [{"line": b.line, "reason": b.reason} for b in self.bad[:max_bad]],
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows / self.seconds) if self.seconds and self.rows else None,
        }


def import_id_of(path: str, route: str | None) -> str:
    """``import-<hash of the file's bytes and the route>``: the same file imports once."""
    h = hashlib.sha256((route or "").encode() + b"\0")
    with open(path, "rb") as f:
        while chunk := f.read(4 * 2**20):
            h.update(chunk)
    return "import-" + h.hexdigest()[:24]


def import_file(
    log_dir: str, path: str, *, route: str | None = None, chunk_rows: int = CHUNK_ROWS
) -> ImportResult:
    """Import ``path`` into the log at ``log_dir`` in one atomic commit (see the module docstring)."""
    t0 = time.perf_counter()
    layout.ensure_store(log_dir)
    result = ImportResult(import_id_of(path, route))
    calls = tables.DeltaLog.for_log(log_dir, "calls")
    if calls.committed_seq(result.import_id) >= 1:
        result.already = True
        result.seconds = time.perf_counter() - t0
        return result
    salt = int(result.import_id.rsplit("-", 1)[1][:12], 16)  # 48 bits of the import id
    actions: list[Any] = []
    pending: dict[str, list[list[Any]]] = {}
    pending_rows = 0
    chunk = 0

    def flush() -> None:
        nonlocal pending_rows, chunk
        for day, rows in sorted(pending.items()):
            columns = [list(c) for c in zip(*rows, strict=True)]
            data = pa.Table.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(columns, CALLS_SCHEMA, strict=True)],
                schema=CALLS_SCHEMA,
            )
            stem = f"{result.import_id}.{chunk:06d}"
            actions.append(tables.write_data_file(log_dir, "calls", day, stem, data))
            chunk += 1
        pending.clear()
        pending_rows = 0

    for n, line in _lines(path):
        try:
            day, row = _row(line, n, salt, route)
        except BadRecord as exc:
            result.bad.append(BadLine(n, str(exc)))
            continue
        pending.setdefault(day, []).append(row)
        result.rows += 1
        pending_rows += 1
        if pending_rows >= chunk_rows:
            flush()
    flush()
    result.files = len(actions)
    if actions and not tables.commit_files(
        log_dir, "calls", result.import_id, 1, actions, operation=OPERATION
    ):
        result.already, result.rows, result.files = True, 0, 0  # another run of this file won
    result.seconds = time.perf_counter() - t0
    return result


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                yield n, line


def _row(line: bytes, n: int, salt: int, route: str | None) -> tuple[str, list[Any]]:
    """One line as ``(day, values in CALLS_SCHEMA order)``, or `BadRecord`."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRecord("not a JSON object")
    if obj.get("object") == "chat.completion":
        obj = _from_openai_stored(obj)
    request, response = obj.get("request"), obj.get("response")
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        raise BadRecord('"request" must be a chat request (an object with a "messages" list)')
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        raise BadRecord('"response" must be a chat.completion (an object with a "choices" list)')
    if "ts" not in obj:
        raise BadRecord('no "ts"')
    ts = _ts(obj["ts"])
    rec = CallRecord.begin(_call_id(salt, n, ts), 0, "chat.completions")
    rec.annotate(
        {
            "user": obj["user"] if "user" in obj else request.get("user"),
            "metadata": obj["metadata"] if "metadata" in obj else request.get("metadata"),
        },
        {},
    )
    choices = response["choices"]
    first: dict[str, Any] = choices[0] if choices and isinstance(choices[0], dict) else {}
    msg: dict[str, Any] = first["message"] if isinstance(first.get("message"), dict) else {}
    usage: dict[str, Any] = response["usage"] if isinstance(response.get("usage"), dict) else {}
    model = response.get("model") if isinstance(response.get("model"), str) else None
    req_model = request.get("model") if isinstance(request.get("model"), str) else None
    status = obj.get("status", 200)
    latency = obj.get("latency_ms")
    row = list(_TEMPLATE)
    row[_I["call_id"]] = rec.call_id
    row[_I["ts"]] = ts
    row[_I["route"]] = route or req_model or model
    row[_I["upstream_model"]] = model or req_model
    row[_I["user"]] = rec.user
    row[_I["session_id"]] = rec.session_id
    row[_I["tags"]] = [TAG, *rec.tags] if rec.tags else [TAG]
    row[_I["stream"]] = request.get("stream") is True
    row[_I["request"]] = orjson.dumps(request).decode()
    row[_I["response"]] = orjson.dumps(response).decode()
    row[_I["response_id"]] = _text(response.get("id"))
    content = msg.get("content")
    row[_I["output_text"]] = content if isinstance(content, str) else None
    row[_I["finish_reason"]] = _text(first.get("finish_reason"))
    row[_I["status"]] = status if type(status) is int and 0 <= status < 2**31 else 200
    row[_I["latency_ms"]] = float(latency) if type(latency) in (int, float) else None
    row[_I["input_tokens"]] = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    row[_I["output_tokens"]] = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    row[_I["metadata"]] = rec.metadata
    return ts.date().isoformat(), row


def _from_openai_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """A stored completion (its input messages as ``messages``) in Shadowtune's shape."""
    messages = obj.get("messages", obj.get("input_messages"))
    if isinstance(messages, dict) and isinstance(messages.get("data"), list):
        messages = messages["data"]
    if not isinstance(messages, list) or not messages:
        raise BadRecord(
            'a stored chat.completion without its input messages: add them as "messages" '
            "(GET /v1/chat/completions/{id}/messages)"
        )
    clean = []
    for m in messages:
        if not isinstance(m, dict):
            raise BadRecord('"messages" must be a list of message objects')
        m = {k: v for k, v in m.items() if k not in ("id", "content_parts")} | (
            {"content": m["content_parts"]} if m.get("content") is None and m.get("content_parts") else {}
        )
        clean.append(m)
    request: dict[str, Any] = {"model": obj.get("model"), "messages": clean}
    for key in ("temperature", "top_p", "seed", "tool_choice", "tools", "presence_penalty",
                "frequency_penalty", "service_tier"):  # fmt: skip
        if obj.get(key) is not None:
            request[key] = obj[key]
    response = {k: v for k, v in obj.items() if k not in ("messages", "input_messages", "metadata")}
    out: dict[str, Any] = {"ts": obj.get("created"), "request": request, "response": response}
    if obj.get("created") is None:
        out.pop("ts")
    if "metadata" in obj:
        out["metadata"] = obj["metadata"]
    return out


def _ts(value: Any) -> dt.datetime:
    try:
        if type(value) in (int, float):
            x = float(value)
            seconds = x / 1e6 if x > 1e14 else x / 1e3 if x > 1e11 else x
            return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise BadRecord(f'"ts" {value!r} is not a time: {exc}') from None
    raise BadRecord(f'"ts" must be ISO 8601 text or epoch seconds, not {json_text(value)[:40]}')


def _call_id(salt: int, n: int, ts: dt.datetime) -> str:
    """``call_<26>`` laid out like `gateway.store.ids.new_id` (48 bits of milliseconds, then 80
    bits: the import id's 48 and the line number's 32), the same on every run of the file."""
    ms = max(0, min(int(ts.timestamp() * 1000), 2**48 - 1))
    value = ((ms << 80) | (salt << 32) | (n & 0xFFFFFFFF)) << 2  # 130 bits: 26 characters
    pairs = _PAIRS
    return "call_" + "".join([pairs[(value >> (10 * i)) & 1023] for i in range(12, -1, -1)])


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json_text(value)


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value < 2**63 else None


def run_cli(file: str, log_dir: str, *, route: str | None, as_json: bool) -> None:
    """``shadowtune logs import``: import, then report (bad lines by number)."""
    import json

    import click

    try:
        result = import_file(log_dir, file, route=route)
    except (OSError, layout.LogStoreError, tables.TableCommitError) as exc:
        raise click.ClickException(f"import failed, nothing was imported: {exc}") from None
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=1))
        return
    for bad in result.bad[:100]:
        click.echo(f"{file}:{bad.line}: skipped: {bad.reason}", err=True)
    if len(result.bad) > 100:
        click.echo(f"... and {len(result.bad) - 100} more bad lines", err=True)
    if result.already:
        click.echo(f"{file} was imported before ({result.import_id}): nothing added")
        return
    rate = f" ({result.rows / result.seconds:,.0f} rows/s)" if result.seconds and result.rows else ""
    click.echo(
        f"imported {result.rows:,} calls from {file} in {result.seconds:.2f} s{rate}, one commit "
        f"({result.import_id}); {len(result.bad)} bad line(s) skipped"
    )
