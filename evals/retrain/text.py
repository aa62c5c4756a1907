"""The text forms of ``triggers status`` and ``triggers run``: rounded, one line per step, progress shown."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.progress import rounded


def _progress(p: Mapping[str, Any] | None) -> str:
    if not p:
        return ""
    done, total = p.get("done"), p.get("total")
    out = f"{p.get('label', '')} {done:g}/{total:g}" if total else f"{p.get('label', '')} {done:g}"
    if total:
        out += f" ({100 * float(done or 0) / float(total):.0f}%)"
    if p.get("loss") is not None:
        out += f" loss {p['loss']:.3g}"
    if p.get("eta_s") is not None:
        out += f" eta {p['eta_s']:.0f}s"
    return out


def _result(step: Mapping[str, Any]) -> str:
    if step.get("error"):
        return str(step["error"])[:160]
    res = step.get("result")
    if step.get("step") == "evaluate" and isinstance(res, Mapping):
        metric = str(res.get("metric") or "exact_match")
        new, cur, base = res.get("new") or {}, res.get("current") or {}, res.get("baseline") or {}
        parts = [f"new {new.get(metric, 0):.2f}", f"current {cur.get(metric, 0):.2f} ({cur.get('model')})"]
        if base.get(metric) is not None:
            parts.append(f"baseline {base[metric]:.2f}")
        elif base.get("error"):
            parts.append(f"baseline: {base['error'][:60]}")
        verdict = "  -> wins" if res.get("wins") else "  -> rejected"
        return (
            f"{metric.replace('_', ' ')} on {res.get('test_examples')} test examples: "
            + ", ".join(parts)
            + verdict
        )
    if step.get("step") == "train" and isinstance(res, Mapping):
        m = res.get("metrics") or {}
        return f"{res.get('version')}: {m.get('steps')} steps, loss {m.get('first_logged_loss', 0) or 0:.3g} -> {m.get('last_logged_loss', 0) or 0:.3g}"
    return json.dumps(rounded(res), default=str)[:140]


def format_run(r: Mapping[str, Any]) -> str:
    head = f"{r['route']}: {r['status']}" + (f" ({r['run_id']})" if r.get("run_id") else "")
    if r.get("duration_s") is not None:
        head += f" in {r['duration_s']:.0f}s"
    if r.get("kind") == "promote":
        return head + f"  auto canary of {r.get('candidate')}: {r.get('reason')}"
    lines = [head]
    lines.extend(f"  reason: {x}" for x in r.get("reasons") or ["no trigger fired"])
    sig = r.get("signals") or {}
    if sig.get("paused"):
        lines.append(f"  paused by {sig['paused'].get('by') or 'an operator'}")
    if sig.get("backoff"):
        lines.append(f"  backing off after a rejected run until {sig['backoff']['until'][:19]}")
    for p in r.get("plan") or ():
        verb = "would run" if r.get("would_run") else "step"
        lines.append(f"  {verb} {p['step']}: {p['target']}")
    for st in r.get("steps") or ():
        took = f"{st['duration_s']:>5.0f}s" if st.get("duration_s") is not None else "      "
        tail = _progress(st.get("progress")) if st.get("status") == "running" else _result(st)
        lines.append(f"  {st['step']:<14} {st['status']:<9} {took}  {tail}")
    return "\n".join(lines)


def format_status(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "no trigger policies (write <log_dir>/triggers/policies.yaml)"
    lines = []
    for e in entries:
        sig = e.get("signals") or {}
        state = e.get("state") or {}
        fire = "FIRE" if e.get("would_fire") else "PAUSED" if state.get("paused") else "idle"
        if sig.get("backoff"):
            fire = "BACKOFF"
        if (e.get("last_run") or {}).get("status") == "running":
            fire = "RUNNING"
        out = sig.get("output_drift") or {}
        lines.append(
            f"{e['route']}: {fire}  drift streak {sig.get('drift_streak', '-')}  new examples "
            f"{sig.get('new_examples', '-')}  output drift {'yes' if out.get('breached') else 'no'}  "
            f"last training {str(sig.get('last_training_at') or 'never')[:19]}  runs {e['runs']}"
        )
        lines.extend(f"  reason: {r}" for r in e.get("reasons") or ())
        if sig.get("waiting_for_data"):
            w = sig["waiting_for_data"]
            lines.append(f"  waiting for data: {w['new_examples']} new examples, need {w['need']}")
        if sig.get("backoff"):
            lines.append(
                f"  backing off until {sig['backoff']['until'][:19]} ({sig['backoff']['runs']} rejected in a row)"
            )
        if state.get("last_deployed_model"):
            promoted = (
                " (moved to canary)" if state.get("promoted_model") == state["last_deployed_model"] else ""
            )
            lines.append(f"  deployed: {state['last_deployed_model']}{promoted}")
        last = e.get("last_run")
        if last:
            lines.extend("  " + line for line in format_run(last).splitlines())
    return "\n".join(lines)
