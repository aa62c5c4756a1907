"""Examples with known answers: a dataset's test split or a golden file, and deterministic evals on them.

Two sources of `Example`s:

* `read_dataset`: ``<log_dir>/datasets/<name>/`` as written by the trainer: Parquet files
  (any depth, hive partitions allowed) with a ``messages`` column (a list of
  ``{role, content}`` or its JSON text) and a ``split`` column. The final assistant
  message, when there is one, is the reference answer. This adapter is the only code that
  knows the dataset layout.
* `read_golden`: a JSONL, JSON or YAML file of ``{"id", "messages" | "input", "expected"}``.

`generate` asks a model (through the gateway) to answer every example; `run_golden` scores
those answers with `evals.metrics`; `dataset_pairs` turns two models' answers into
`judge.Pair`s for the pairwise judge.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evals.errors import JudgeError, SourceError
from evals.judge import ChatClient, Pair, render_prompt
from evals.metrics import compute_metrics


@dataclass(frozen=True)
class Example:
    """A conversation up to the answer, and the reference answer when known."""

    example_id: str
    messages: list[dict[str, Any]]
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _split_reference(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    if messages and messages[-1].get("role") == "assistant":
        last = messages[-1]
        ref = last.get("content")
        if not ref and last.get("tool_calls"):
            ref = json.dumps(last["tool_calls"])
        return messages[:-1], ref if isinstance(ref, str) else None
    return messages, None


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, Mapping):
        value = value.get("messages", [])
    return [dict(m) for m in value or () if isinstance(m, Mapping)]


def _version_folder(root: Path, name: str) -> Path:
    """``<root>/<name>/v<N>`` for ``name@vN`` or the latest version; ``<root>/<name>`` if unversioned."""
    base, _, version = name.partition("@")
    folder = root / base
    if version:
        return folder / f"v{version.lstrip('v')}"
    versions = sorted(
        (int(p.name[1:]) for p in folder.glob("v*") if p.is_dir() and p.name[1:].isdigit()), reverse=True
    )
    return folder / f"v{versions[0]}" if versions else folder


def read_dataset(
    log_dir: str, name: str, *, split: str | None = "test", fallback_all: bool = False
) -> list[Example]:
    """Rows of ``<log_dir>/datasets/<name>/`` in ``split`` (all rows when ``split`` is None)."""
    import duckdb

    folder = _version_folder(Path(log_dir) / "datasets", name)
    examples = folder / "examples.parquet"
    if examples.exists():  # the trainer's layout: <name>/v<N>/examples.parquet (+ preferences, manifest)
        glob = str(examples).replace("'", "''")
    elif any(folder.rglob("*.parquet")):
        glob = str(folder / "**" / "*.parquet").replace("'", "''")
    else:
        raise SourceError(f"no dataset {name!r}: no Parquet files under {folder}")
    con = duckdb.connect(":memory:")
    try:
        rel = con.sql(f"SELECT * FROM read_parquet('{glob}', union_by_name = true)")
        columns = rel.columns
        if "messages" not in columns:
            raise SourceError(f"dataset {name!r} has no messages column (columns: {', '.join(columns)})")
        rows = rel.fetchall()
    except duckdb.Error as exc:
        raise SourceError(f"cannot read dataset {name!r}: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()
    records = [dict(zip(columns, r, strict=True)) for r in rows]
    if split is not None:
        if "split" in columns and any(r["split"] == split for r in records):
            records = [r for r in records if r["split"] == split]
        elif not fallback_all:
            raise SourceError(f"dataset {name!r} has no rows in split {split!r}")
    out = []
    for i, r in enumerate(records):
        msgs, ref = _split_reference(_messages(r["messages"]))
        ident = r.get("example_id") or r.get("id") or r.get("call_id") or f"{name}-{i}"
        meta = {
            k: v for k, v in r.items() if k not in ("messages",) and isinstance(v, str | int | float | bool)
        }
        if r.get("tools"):
            meta["tools"] = True
        out.append(Example(str(ident), msgs, ref, meta))
    return out


def read_golden(path: str | os.PathLike[str]) -> list[Example]:
    """A golden file: JSONL, a JSON list, or YAML (a list, or ``{examples: [...]}``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".jsonl":
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SourceError(f"cannot read golden file {path}: {exc}") from exc
    if isinstance(data, Mapping):
        data = data.get("examples")
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a list of examples")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, Mapping):
            raise SourceError(f"{path}: example {i} is not a mapping")
        if "messages" in rec:
            msgs, ref = _split_reference(_messages(rec["messages"]))
        elif "input" in rec:
            msgs, ref = [{"role": "user", "content": str(rec["input"])}], None
        else:
            raise SourceError(f"{path}: example {i} has neither messages nor input")
        expected = rec.get("expected", rec.get("reference", ref))
        if expected is not None and not isinstance(expected, str):
            expected = json.dumps(expected)
        meta = {k: v for k, v in rec.items() if k not in ("messages", "input", "expected", "reference")}
        out.append(Example(str(rec.get("id", i)), msgs, expected, meta))
    return out


async def generate(
    examples: Sequence[Example],
    model: str,
    client: ChatClient,
    *,
    on_progress: Callable[[int], None] | None = None,
    **params: Any,
) -> list[str | None]:
    """``model``'s answer to each example (``None`` where the call failed); cached like judge calls."""

    async def one(ex: Example) -> str | None:
        try:
            return (await client.complete(model, ex.messages, tag="generate", **params)).content
        except JudgeError:
            return None
        finally:
            if on_progress is not None:
                on_progress(1)

    return list(await asyncio.gather(*(one(e) for e in examples)))


async def dataset_pairs(
    examples: Sequence[Example],
    baseline_model: str,
    candidate_model: str,
    client: ChatClient,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> list[Pair]:
    """Both models' answers to each example, as pairs to judge (examples either model failed are left out)."""
    params = {"temperature": 0.0}
    async with client:
        base = await generate(examples, baseline_model, client, on_progress=on_progress, **params)
        cand = await generate(examples, candidate_model, client, on_progress=on_progress, **params)
    return [
        Pair(ex.example_id, render_prompt({"messages": ex.messages}), b, c, baseline_model, candidate_model)
        for ex, b, c in zip(examples, base, cand, strict=True)
        if b is not None and c is not None
    ]


@dataclass
class GoldenReport:
    """Scores of one model's answers on a set of examples."""

    model: str
    source: str
    n: int
    failed: int
    metrics: dict[str, dict[str, float]]
    rows: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source": self.source,
            "n": self.n,
            "failed": self.failed,
            "metrics": self.metrics,
        }


def score(
    examples: Sequence[Example],
    outputs: Sequence[str | None],
    metric_names: Sequence[str],
    *,
    model: str,
    source: str,
) -> GoldenReport:
    """Score answers already in hand (a call that failed scores as an empty answer)."""
    refs = [e.reference for e in examples]
    preds = [o if o is not None else "" for o in outputs]
    metas = [{"id": e.example_id, "messages": e.messages, **e.meta} for e in examples]
    metrics = compute_metrics(metric_names, preds, refs, metas)
    rows = [
        {"example_id": e.example_id, "output": o, "reference": e.reference}
        for e, o in zip(examples, outputs, strict=True)
    ]
    return GoldenReport(model, source, len(examples), sum(o is None for o in outputs), metrics, rows)


def run_golden(
    examples: Sequence[Example],
    model: str,
    metric_names: Sequence[str],
    client: ChatClient,
    *,
    source: str = "golden",
    on_progress: Callable[[int], None] | None = None,
) -> GoldenReport:
    """Generate ``model``'s answers and score them."""
    if not examples:
        raise SourceError("no examples to evaluate")

    async def go() -> list[str | None]:
        async with client:
            return await generate(examples, model, client, on_progress=on_progress, temperature=0.0)

    return score(examples, asyncio.run(go()), metric_names, model=model, source=source)
