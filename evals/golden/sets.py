"""Examples with known answers: a dataset's test split or a golden file, and deterministic evals on them.

Two sources of `Example`s:

* `read_dataset`: a dataset under ``<log_dir>/datasets/<name>/``. A trainer dataset (a
  ``v<N>/manifest.json`` layout) is read with the trainer's own reader
  (`trainer.dataset.load_dataset`); its label, the ``completion`` kept apart from the
  messages, is the reference. Any other folder of Parquet files (any depth, hive partitions
  allowed) with a ``messages`` column (a list of ``{role, content}`` or its JSON text), an
  optional ``split`` and an optional ``completion`` column is read too; without a
  ``completion`` the final assistant message, when there is one, is the reference.
* `read_golden`: a JSONL, JSON or YAML file of ``{"id", "messages" | "input", "expected"}``.

`generate` asks a model (through the gateway) to answer every example; `run_golden` scores
those answers with `evals.golden.metrics`, and the baseline's answers on the same examples next to
them (the point of a fast eval: know what you are improving on); it refuses a set in which no
example has a reference. `dataset_pairs` turns two models' answers into `judge.Pair`s for the
pairwise judge.
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
from evals.golden.metrics import compute_metrics
from evals.judge.pairwise import ChatClient, Pair, render_prompt
from gateway.store.layout import datasets_root


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


def _completion_text(completion: Any) -> str | None:
    """A label (an assistant message, or its JSON text) as reference text: its content, else its tool calls."""
    if isinstance(completion, str):
        text: str = completion
        try:
            completion = json.loads(text)
        except json.JSONDecodeError:
            return text
    if not isinstance(completion, Mapping):
        return None
    content = completion.get("content")
    if not content and completion.get("tool_calls"):
        return json.dumps(completion["tool_calls"])
    return str(content) if isinstance(content, str) else None


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
    """Examples of dataset ``name`` (``name@vN`` for a version) in ``split`` (every split when None)."""
    folder = _version_folder(Path(datasets_root(log_dir)), name)
    if (folder / "manifest.json").exists():
        return _trainer_examples(log_dir, name, split, fallback_all)
    return _parquet_examples(folder, name, split, fallback_all)


def _trainer_examples(log_dir: str, name: str, split: str | None, fallback_all: bool) -> list[Example]:
    from trainer.dataset import load_dataset
    from trainer.errors import DatasetError

    try:
        dv = load_dataset(log_dir, name)
        rows = dv.examples()
    except (DatasetError, OSError, ValueError) as exc:
        raise SourceError(f"cannot read dataset {name!r}: {exc}") from exc
    if split is not None:
        if any(e.split == split for e in rows):
            rows = [e for e in rows if e.split == split]
        elif not fallback_all:
            raise SourceError(f"dataset {name!r} has no rows in split {split!r}")
    out = []
    for e in rows:
        meta: dict[str, Any] = {
            "call_id": e.call_id,
            "split": e.split,
            "label_source": e.label_source,
            "input_hash": e.input_hash,
            "dataset": dv.ref,
        }
        if e.tools:
            meta["tools"] = True
        out.append(Example(e.example_id, list(e.messages), _completion_text(e.completion), meta))
    return out


def _parquet_examples(folder: Path, name: str, split: str | None, fallback_all: bool) -> list[Example]:
    import duckdb

    examples = folder / "examples.parquet"
    if examples.exists():
        glob = str(examples).replace("'", "''")
    elif folder.is_dir() and any(folder.rglob("*.parquet")):
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
        if r.get("completion") is not None:  # the label kept apart from the messages
            msgs, ref = _messages(r["messages"]), _completion_text(r["completion"])
        ident = r.get("example_id") or r.get("id") or r.get("call_id") or f"{name}-{i}"
        meta = {
            k: v
            for k, v in r.items()
            if k not in ("messages", "completion") and isinstance(v, str | int | float | bool)
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
    no_reference: int = 0
    baseline: GoldenReport | None = None
    """The baseline's scores on the same examples, when it was asked."""
    baseline_note: str | None = None
    """Why there is no baseline (``--no-baseline``), when there is none."""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "source": self.source,
            "n": self.n,
            "failed": self.failed,
            "no_reference": self.no_reference,
            "metrics": self.metrics,
        }
        if self.baseline is not None:
            base = self.baseline
            out["baseline"] = {"model": base.model, "failed": base.failed, "metrics": base.metrics}
            out["delta"] = {
                metric: {
                    k: v - base.metrics[metric][k]
                    for k, v in scores.items()
                    if k in base.metrics.get(metric, {})
                }
                for metric, scores in self.metrics.items()
                if metric in base.metrics
            }
        else:
            out["baseline"] = None
            out["baseline_note"] = self.baseline_note
        return out


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
        {"example_id": e.example_id, "model": model, "output": o, "reference": e.reference}
        for e, o in zip(examples, outputs, strict=True)
    ]
    failed = sum(o is None for o in outputs)
    missing = sum(r is None for r in refs)
    return GoldenReport(model, source, len(examples), failed, metrics, rows, no_reference=missing)


def check_references(examples: Sequence[Example], source: str) -> None:
    """`SourceError` when no example has a reference answer: every score would be a meaningless 0."""
    if examples and all(e.reference is None for e in examples):
        raise SourceError(
            f"{source}: none of the {len(examples)} examples has a reference answer (no label, no "
            "final assistant message, no 'expected'): nothing to score against"
        )


def run_golden(
    examples: Sequence[Example],
    model: str,
    metric_names: Sequence[str],
    client: ChatClient,
    *,
    source: str = "golden",
    baseline: str | None = None,
    baseline_note: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> GoldenReport:
    """Generate ``model``'s answers (and ``baseline``'s, on the same examples) and score them.

    Raises:
        SourceError: no examples, or none with a reference answer.
    """
    if not examples:
        raise SourceError("no examples to evaluate")
    check_references(examples, source)

    async def go() -> tuple[list[str | None], list[str | None] | None]:
        async with client:
            mine = await generate(examples, model, client, on_progress=on_progress, temperature=0.0)
            theirs = (
                await generate(examples, baseline, client, on_progress=on_progress, temperature=0.0)
                if baseline is not None
                else None
            )
        return mine, theirs

    mine, theirs = asyncio.run(go())
    report = score(examples, mine, metric_names, model=model, source=source)
    if theirs is not None and baseline is not None:
        report.baseline = score(examples, theirs, metric_names, model=baseline, source=source)
        report.rows.extend(report.baseline.rows)
    else:
        report.baseline_note = baseline_note or "no baseline given"
    return report
