"""``shadowtune train sweep``: the right model for the job, chosen on the route's own test split.

"Choose an appropriate model" — prefer small ones. `run_sweep` trains every base model and every
combination of a hyperparameter grid on **one** dataset version (sequentially, on this machine),
then measures each run on that version's fixed test split:

* quality: exact match of the adapter's answers with the labels on the test split, with a 95 %
  Wilson interval; next to it the baseline, whose own answers are the labels except where a
  reviewer relabelled them (the share of test labels that are the baseline's answer);
* adapter size on disk, training time, and serving latency (median time of one answer on this
  machine's device, a handful of test inputs); cost per 1,000 calls where a price is given.

Every run is a registry version with its lineage (dataset, base, hyperparameters) and the sweep
it belongs to (``metrics.sweep``); the sweep's table is kept at
``<log_dir>/models/_sweeps/<sweep_id>.json``. The best run (highest exact match, then the
smaller adapter, then the faster answer) deploys in one command:
``shadowtune models deploy sweep:<sweep_id> --route R --serve-url URL``.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store.fileio import write_json_atomic
from gateway.store.ids import new_id
from gateway.store.outcomes import wilson_interval
from trainer._examples import DatasetVersion, load_dataset
from trainer.errors import RegistryError, TrainingError
from trainer.registry import Registry

LATENCY_SAMPLES = 5
Z95 = 1.959963984540054


@dataclass(frozen=True)
class SweepRun:
    base: str
    params: dict[str, Any]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["lora_r=8,16", "learning_rate=5e-3"]`` → ``{"lora_r": [8, 16], "learning_rate": [0.005]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise TrainingError(f"--param {item!r}: write NAME=V1,V2 (e.g. lora_r=8,16)")
        grid[key.strip()] = [_value(v.strip()) for v in values.split(",") if v.strip()]
    return grid


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def plan(bases: Sequence[str], grid: Mapping[str, Sequence[Any]] | None = None) -> list[SweepRun]:
    """Every base with every combination of the grid, in a stable order."""
    if not bases:
        raise TrainingError("a sweep needs at least one --base")
    keys = sorted(grid or {})
    combos = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*((grid or {})[k] for k in keys))
    ]
    return [SweepRun(base, combo) for base in bases for combo in combos or [{}]]


def run_sweep(
    log_dir: str,
    dataset: str | DatasetVersion,
    bases: Sequence[str],
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    name: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    eval_limit: int = 100,
    price_per_1k_calls: Mapping[str, float] | None = None,
    progress: bool = True,
    on_run: Callable[[int, int, SweepRun], None] | None = None,
    train: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Train and measure every run of the sweep; returns the sweep's table (also stored)."""
    dv = dataset if isinstance(dataset, DatasetVersion) else load_dataset(log_dir, dataset)
    test = dv.examples("test")
    if not test:
        raise TrainingError(f"{dv.ref} has no test split: a sweep compares runs on it")
    runs = plan(bases, grid)
    if train is None:
        from trainer.lora import train_lora

        train = train_lora
    sweep_id = new_id("sweep")
    registry = Registry(log_dir)
    rows: list[dict[str, Any]] = []
    for i, run in enumerate(runs):
        if on_run is not None:
            on_run(i, len(runs), run)
        hp = {**(hyperparameters or {}), **run.params}
        t0 = time.perf_counter()
        mv = train(log_dir, run.base, dv, name=name or f"{dv.name}-sweep", hyperparameters=hp,
                   progress=progress, exact_match_limit=0)  # fmt: skip
        train_s = time.perf_counter() - t0
        row = _measure(mv, test[:eval_limit], train_s, run, (price_per_1k_calls or {}).get(run.base))
        lineage = {"id": sweep_id, "dataset": dv.ref, "base": run.base, "params": run.params}
        # merged into the record as it is now (`Registry.update`), not a copy read before training ended
        notes = {"sweep": lineage, "sweep_eval": row["quality"]}
        registry.update(mv.version, functools.partial(_merge_metrics, notes))
        rows.append(row)
    labels = [e.label_source for e in test[:eval_limit]]
    baseline_k = sum(1 for s in labels if s == "served")
    best = _best(rows)
    table = {
        "sweep_id": sweep_id,
        "dataset": dv.ref,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "test_examples": len(labels),
        "baseline": {
            "exact_match": baseline_k / len(labels),
            "ci": list(wilson_interval(baseline_k, len(labels), Z95)),
            "note": "the labels are the baseline's own answers, except relabelled ones",
        },
        "runs": rows,
        "best": best,
    }
    _save(log_dir, table)
    return table


def _merge_metrics(notes: dict[str, Any], mv: Any) -> None:
    mv.metrics.update(notes)


def _measure(
    mv: Any, test: Sequence[Any], train_s: float, run: SweepRun, price: float | None
) -> dict[str, Any]:
    from trainer.serve import ChatModel

    model = ChatModel.from_version(mv)
    k, times = 0, []
    for i, ex in enumerate(test):  # the rule of `trainer.lora.exact_match`, timed
        budget = max(16, 2 * len(model.tokenizer(ex.answer)["input_ids"]) + 8)
        t0 = time.perf_counter()
        answer = model.complete(ex.messages, max_tokens=budget, temperature=0.0).text
        if i < LATENCY_SAMPLES:
            times.append(time.perf_counter() - t0)
        k += answer.strip() == ex.answer.strip()
    n = len(test)
    return {
        "version": mv.version,
        "base": run.base,
        "params": run.params,
        "quality": {"exact_match": k / n if n else None, "ci": list(wilson_interval(k, n, Z95)), "n": n},
        "adapter_bytes": _size(mv.adapter_path),
        "train_s": round(train_s, 1),
        "latency_ms": round(1000 * statistics.median(times), 1) if times else None,
        "cost_per_1k_calls_usd": price,
    }


def _size(path: str | None) -> int | None:
    if not path or not os.path.isdir(path):
        return None
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _best(rows: Sequence[Mapping[str, Any]]) -> str | None:
    def key(r: Mapping[str, Any]) -> tuple[float, float, float]:
        em = r["quality"]["exact_match"]
        return (-(em if em is not None else -1), r["adapter_bytes"] or math.inf, r["latency_ms"] or math.inf)

    return min(rows, key=key)["version"] if rows else None


def _dir(log_dir: str) -> str:
    return Registry(log_dir).path("_sweeps")


def _save(log_dir: str, table: Mapping[str, Any]) -> None:
    folder = _dir(log_dir)
    os.makedirs(folder, exist_ok=True)
    write_json_atomic(os.path.join(folder, f"{table['sweep_id']}.json"), table)


def load_sweep(log_dir: str, sweep_id: str) -> dict[str, Any]:
    path = os.path.join(_dir(log_dir), f"{sweep_id}.json")
    try:
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        raise RegistryError(f"no sweep {sweep_id!r} in {_dir(log_dir)}") from None
    return data


def resolve_version(log_dir: str, version: str) -> str:
    """``sweep:<id>`` → the best run of that sweep; any other name is returned as it is."""
    if not version.startswith("sweep:"):
        return version
    best = load_sweep(log_dir, version.removeprefix("sweep:")).get("best")
    if not best:
        raise RegistryError(f"{version} has no finished run to deploy")
    return str(best)


def format_sweep(table: Mapping[str, Any]) -> str:
    """The comparison table as text."""
    head = ("run", "base", "params", "exact match [95% CI]", "adapter", "train", "latency", "$/1k calls")
    b = table["baseline"]
    lines = [f"sweep {table['sweep_id']} on {table['dataset']} ({table['test_examples']} test examples)", ""]
    body = [
        (
            r["version"] + (" *" if r["version"] == table["best"] else ""),
            os.path.basename(r["base"].rstrip("/")) or r["base"],
            ",".join(f"{k}={v}" for k, v in r["params"].items()) or "-",
            _em(r["quality"]["exact_match"], r["quality"]["ci"]),
            _bytes(r["adapter_bytes"]),
            f"{r['train_s']:.0f} s",
            f"{r['latency_ms']:.0f} ms" if r["latency_ms"] is not None else "n/a",
            f"{r['cost_per_1k_calls_usd']:.4f}" if r["cost_per_1k_calls_usd"] is not None else "n/a",
        )
        for r in table["runs"]
    ]
    body.append(("baseline", "-", "-", _em(b["exact_match"], b["ci"]), "-", "-", "-", "-"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    for row in (head, *body):
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    lines.append(f"\n* best: {table['best']} — deploy it in shadow with:")
    lines.append(f"  shadowtune models deploy sweep:{table['sweep_id']} --route ROUTE --serve-url URL")
    lines.append(f"(baseline: {b['note']})")
    return "\n".join(lines)


def _em(value: float | None, ci: Sequence[float]) -> str:
    return "n/a" if value is None else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"
