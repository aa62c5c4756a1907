"""Bulk relabel: corrected answers for many calls from one JSONL or CSV file.

``shadowtune dataset relabel --file corrections.jsonl``: one correction per line,

* JSONL: ``{"call_id": "call_...", "answer": "...", "comment": "..."}`` (``comment`` optional);
* CSV: a header row naming ``call_id`` and ``answer`` (``comment`` optional), any order.

Every line is checked first (a call id and a non-empty answer of at most `MAX_ANSWER`
characters, the call in the log); a bad line is reported with its line number. By default
nothing is written when any line is bad; with ``skip_invalid`` the good lines are. The
events (``relabel``, ``source = 'cli'``) go through one `LogWriter`, so 10,000 corrections
take one process and one flush instead of 10,000 (`trainer.dataset.relabel` per call).
A call named twice keeps the last line's answer (the latest relabel wins when datasets are
built).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.store import LogStore, LogWriter
from gateway.store import windows as win
from gateway.store.ids import new_id
from gateway.store.schema import SCHEMA_VERSION
from trainer.errors import DatasetError

MAX_ANSWER = 100_000
MAX_COMMENT = 2_000
_CHUNK = 5_000


@dataclass
class Correction:
    line: int
    call_id: str
    answer: str
    comment: str | None = None


@dataclass
class BulkResult:
    written: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    """``(line number, what is wrong)``."""
    lines: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "lines": self.lines,
            "errors": [{"line": n, "error": e} for n, e in self.errors],
        }


def parse(text: str, *, fmt: str | None = None) -> tuple[list[Correction], list[tuple[int, str]]]:
    """The corrections of a JSONL or CSV text (``fmt``: ``jsonl``, ``csv`` or None to detect)."""
    body = text.lstrip("\ufeff")
    kind = fmt or ("jsonl" if body.lstrip().startswith("{") else "csv")
    rows: list[tuple[int, Any]] = []
    errors: list[tuple[int, str]] = []
    if kind == "jsonl":
        for n, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except ValueError as exc:
                errors.append((n, f"not valid JSON ({exc})"))
    elif kind == "csv":
        reader = csv.DictReader(io.StringIO(body, newline=""))
        names = set(reader.fieldnames or ())
        if not {"call_id", "answer"} <= names:
            return [], [(1, "the CSV header must name call_id and answer (and optionally comment)")]
        try:
            for row in reader:
                rows.append((reader.line_num, row))
        except csv.Error as exc:
            errors.append((reader.line_num, f"not valid CSV ({exc})"))
    else:
        raise DatasetError(f"unknown relabel file format {fmt!r} (jsonl or csv)")
    out = []
    for n, obj in rows:
        problem = _check(obj)
        if problem:
            errors.append((n, problem))
            continue
        comment = obj.get("comment")
        answer = str(obj["answer"]).replace("\r\n", "\n")
        out.append(
            Correction(n, obj["call_id"].strip(), answer, (str(comment).strip() or None) if comment else None)
        )
    return out, errors


def _check(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return "each line must be an object with call_id and answer"
    call_id, answer, comment = obj.get("call_id"), obj.get("answer"), obj.get("comment")
    if not isinstance(call_id, str) or not call_id.strip():
        return "call_id is missing or not a string"
    if not isinstance(answer, str) or not answer.strip():
        return "answer is missing or empty"
    if len(answer) > MAX_ANSWER:
        return f"answer is longer than {MAX_ANSWER} characters"
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        return f"comment must be a string of at most {MAX_COMMENT} characters"
    return None


def known_calls(store: LogStore, ids: list[str]) -> set[str]:
    """Which of ``ids`` are calls in the log, reading only the days their ids name where possible."""
    found: set[str] = set()
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        spans = [w for w in (win.id_window(c) for c in chunk) if w is not None]
        lo = min(w[0] for w in spans) if len(spans) == len(chunk) else None
        hi = max(w[1] for w in spans) if len(spans) == len(chunk) else None
        rows = store.sql(
            f"SELECT DISTINCT call_id FROM {win.source(store, 'calls', lo, hi)} WHERE list_contains($ids, call_id)",
            {"ids": chunk},
        )
        found.update(r["call_id"] for r in rows)
    return found


def relabel_file(
    log_dir: str,
    path: str | Path,
    *,
    fmt: str | None = None,
    user: str | None = None,
    skip_invalid: bool = False,
    dry_run: bool = False,
) -> BulkResult:
    """Check every correction of ``path`` and record them as ``relabel`` events."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if fmt is None and str(path).lower().endswith((".jsonl", ".ndjson")):
        fmt = "jsonl"
    elif fmt is None and str(path).lower().endswith(".csv"):
        fmt = "csv"
    corrections, errors = parse(text, fmt=fmt)
    result = BulkResult(lines=len(corrections) + len(errors))
    with LogStore.open(log_dir) as store:
        known = known_calls(store, sorted({c.call_id for c in corrections}))
    good = []
    for c in corrections:
        if c.call_id in known:
            good.append(c)
        else:
            errors.append((c.line, f"no call {c.call_id} in the log"))
    result.errors = sorted(errors)
    if (errors and not skip_invalid) or dry_run or not good:
        return result
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as writer:
        for k, c in enumerate(good):
            writer.append(
                "events",
                {
                    "schema_version": SCHEMA_VERSION,
                    "event_id": new_id("evt"),
                    "call_id": c.call_id,
                    "ts": now + k,  # in file order: a call named twice keeps its last answer
                    "kind": "relabel",
                    "value": c.answer,
                    "comment": c.comment,
                    "user": user,
                    "source": "cli",
                    "data": json.dumps({"file": str(path), "line": c.line}),
                },
            )
    result.written = len(good)
    return result


def run_cli(
    log_dir: str,
    path: str | None,
    *,
    call_id: str | None,
    user: str | None,
    skip_invalid: bool,
    as_json: bool,
) -> None:
    """``dataset relabel --file``: check, write, print the summary; exit 1 when lines were bad."""
    import click

    if path is None or call_id is not None:
        raise click.UsageError("give either CALL_ID (with --answer or stdin) or --file FILE, not both")
    result = relabel_file(log_dir, path, user=user, skip_invalid=skip_invalid)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        for line, error in result.errors:
            click.echo(f"{path}:{line}: {error}", err=True)
        if result.errors and not skip_invalid:
            click.echo(
                f"{len(result.errors)} bad line(s): nothing written (fix them, or --skip-invalid)", err=True
            )
        else:
            skipped = f", {len(result.errors)} bad line(s) skipped" if result.errors else ""
            click.echo(f"relabelled {result.written} call(s) from {path}{skipped}")
    if result.errors:
        raise SystemExit(1)
