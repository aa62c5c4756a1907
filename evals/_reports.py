"""Where eval results are stored under the log dir, and how the CLI prints them.

::

    <log_dir>/evals/judge/<run_id>/summary.json       rates, intervals, consistency, cost, flags
    <log_dir>/evals/judge/<run_id>/verdicts.parquet   one row per item (jury verdict, votes, reasons)
    <log_dir>/evals/judge/<run_id>/judgements.parquet one row per judge call (order, winner, reason, cost)
    <log_dir>/evals/golden/<run_id>/summary.json      metrics of one model on one example set
    <log_dir>/evals/golden/<run_id>/outputs.parquet   one row per example

All of it reads with DuckDB, e.g.
``SELECT * FROM read_parquet('<log_dir>/evals/judge/*/verdicts.parquet')``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from evals.golden.sets import GoldenReport
from evals.judge.pairwise import JudgeReport, report_rows
from gateway.store.fileio import write_json_atomic
from gateway.store.ids import new_id
from gateway.store.layout import eval_runs_dir


def _write_parquet(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path, compression="zstd")


def save_judge_report(log_dir: str, report: JudgeReport) -> Path:
    """Store a judge run; returns its folder."""
    folder = Path(eval_runs_dir(log_dir, "judge")) / report.run_id
    items, calls = report_rows(report)
    _write_parquet(folder / "verdicts.parquet", items)
    _write_parquet(folder / "judgements.parquet", calls)
    write_json_atomic(folder / "summary.json", report.summary())
    return folder


def save_golden_report(log_dir: str, report: GoldenReport) -> tuple[str, Path]:
    """Store a golden run; returns ``(run_id, folder)``."""
    run_id = new_id("eval")
    folder = Path(eval_runs_dir(log_dir, "golden")) / run_id
    _write_parquet(folder / "outputs.parquet", [{"run_id": run_id, **r} for r in report.rows])
    write_json_atomic(folder / "summary.json", {"run_id": run_id, **report.summary()})
    return run_id, folder


def list_runs(log_dir: str, kind: str = "judge") -> list[dict[str, Any]]:
    """Stored run summaries of one kind, newest first."""
    out = []
    for p in sorted(Path(eval_runs_dir(log_dir, kind)).glob("*/summary.json"), reverse=True):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]"


def format_judge_summary(s: Mapping[str, Any]) -> str:
    lines = [
        f"run {s['run_id']}  route {s.get('route') or '-'}  source {s.get('source') or '-'}",
        f"judges: {', '.join(s['judges'])}  both orders: {'yes' if s['both_orders'] else 'no'}"
        f"  seed {s['seed']}",
        f"items: {s['n_items']} judged {s['n_judged']} (identical {s['identical']}, errors {s['errors']})",
        f"candidate wins  {s['wins']:>5}  {_pct(s['win_rate']):>6}  {_ci(s['win_ci'])}",
        f"ties            {s['ties']:>5}  {_pct(s['tie_rate']):>6}  {_ci(s['tie_ci'])}",
        f"candidate loses {s['losses']:>5}  {_pct(s['loss_rate']):>6}  {_ci(s['loss_ci'])}",
        f"win rate among decisive: {_pct(s['win_rate_decisive'])} {_ci(s['win_rate_decisive_ci'])}"
        f"  -> {'candidate better' if s['candidate_wins'] else 'not shown better'}",
    ]
    pc = s.get("position_consistency")
    if pc:
        lines.append(
            f"position consistency: {_pct(pc['rate'])} ({pc['inconsistent']} inconsistent of {pc['n']})"
        )
    if s.get("jury_agreement") is not None:
        lines.append(f"jury agreement: {_pct(s['jury_agreement'])}")
    for name, rates in (s.get("criteria") or {}).items():
        lines.append(
            f"criterion {name}: baseline {_pct(rates.get('baseline'))},"
            f" candidate {_pct(rates.get('candidate'))}"
        )
    c = s["cost"]
    lines.append(
        f"cost: ${c['actual_usd']:.4f} ({c['calls']} calls, {c['cached_calls']} cached;"
        f" estimated ${c['estimated_usd']:.4f})"
        + (f"; no price for {', '.join(c['unpriced'])}" if c["unpriced"] else "")
    )
    lines.extend(f"flag: {f}" for f in s.get("flags") or ())
    return "\n".join(lines)


def format_golden_summary(s: Mapping[str, Any]) -> str:
    lines = [
        f"run {s['run_id']}  model {s['model']}  source {s['source']}  n {s['n']} (failed {s['failed']})"
    ]
    if s.get("no_reference"):
        lines.append(f"warning: {s['no_reference']} example(s) without a reference are not scored")
    base = s.get("baseline")
    if base:
        lines.append(f"baseline {base['model']} on the same examples (failed {base['failed']})")
        lines.append(f"{'score':<28} {'candidate':>10} {'baseline':>10} {'delta':>8}")
    for metric, scores in s["metrics"].items():
        if base:
            for k, v in scores.items():
                if k.startswith("f1."):
                    continue
                b = (base["metrics"].get(metric) or {}).get(k)
                shown_b = "n/a" if b is None else f"{b:.3f}"
                delta = "" if b is None else f"{v - b:+.3f}"
                lines.append(
                    f"{metric + '.' + k if k != metric else k:<28} {v:>10.3f} {shown_b:>10} {delta:>8}"
                )
        else:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if not k.startswith("f1."))
            lines.append(f"{metric}: {shown}")
    if not base:
        lines.append(f"baseline: not scored ({s.get('baseline_note') or 'none given'})")
    return "\n".join(lines)


def format_drift_report(r: Mapping[str, Any]) -> str:
    verdict = "DRIFT" if r["drifted"] else "no drift"
    lines = [
        f"{verdict}  route {r.get('route') or '-'}  report {r['report_id']}  alpha {r['alpha']}",
        f"reference: {r['reference']} ({r['n_reference']})  current: {r['current']} ({r['n_current']})",
    ]
    for c in r["checks"]:
        mark = "DRIFT" if c["drifted"] else "ok"
        if c["threshold_on"] == "statistic":
            rule = f"{c['statistic']:.3f} vs threshold {c['threshold']:.3f}"
        else:
            rule = f"stat {c['statistic']:.3f}, p {c['p_value']:.2g} vs {c['threshold']:.2g}"
        lines.append(f"  {mark:<5} {c['name']:<22} {c['test']:<8} {rule}")
        tokens = c["details"].get("top_current_tokens")
        if tokens:
            lines.append("        current-leaning words: " + ", ".join(t["token"] for t in tokens[:8]))
        if c["drifted"] and c["examples"]:
            lines.append(f"        e.g. {c['examples'][0][:100]!r}")
    for name, why in (r.get("skipped") or {}).items():
        lines.append(f"  skip  {name}: {why}")
    return "\n".join(lines)
