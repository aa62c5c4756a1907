"""Output drift as a guardrail: the latest finding on a route's candidate, for whoever must act on it.

`write_guardrail` (called when an output report is stored) writes
``<log_dir>/drift/<route>/outputs/guardrail.json`` in the format the retraining triggers read
from a policy's ``guardrail_file`` (``{"breached", "guardrails": [{"name", "breached", ...}],
"created_at"}``); `output_guardrail` returns the same record for the canary controller, which
rolls a canary back while its candidate writes what its input does not say.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from evals.drift.output import outputs_dir
from gateway.store.fileio import write_json_atomic

GUARDRAIL = "output_drift"


def guardrail_path(log_dir: str, route: str) -> Path:
    return outputs_dir(log_dir, route) / "guardrail.json"


def guardrail_record(report: dict[str, Any], variant: str = "candidate") -> dict[str, Any]:
    """The guardrail view of an output report: breached when ``variant`` has a finding."""
    findings = [f for f in report.get("findings") or () if f.get("variant") == variant]
    models = sorted(((report.get("variants") or {}).get(variant) or {}).get("models") or {})
    entry = {
        "name": GUARDRAIL,
        "breached": bool(findings),
        "variant": variant,
        "models": models,
        "findings": findings[:5],
        "reason": findings[0]["summary"] if findings else f"no output drift on the {variant}",
    }
    return {
        "breached": bool(findings),
        "guardrails": [entry],
        "report_id": report.get("report_id"),
        "route": report.get("route"),
        "created_at": report.get("created_at"),
    }


def write_guardrail(log_dir: str, report: dict[str, Any]) -> Path:
    path = guardrail_path(log_dir, str(report.get("route") or "_"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, guardrail_record(report))
    return path


def output_guardrail(
    log_dir: str, route: str, *, candidate: str | None = None, max_age_s: float | None = None
) -> dict[str, Any]:
    """The route's output-drift guardrail now: ``breached`` only for ``candidate`` (when given) and
    only from a report younger than ``max_age_s`` (when given); never breached without a report."""
    try:
        record: dict[str, Any] = json.loads(guardrail_path(log_dir, route).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"breached": False, "guardrails": [], "missing": True}
    entry = (record.get("guardrails") or [{}])[0]
    if candidate is not None and candidate not in (entry.get("models") or []):
        record["breached"] = False
        record["stale"] = f"the report is about {', '.join(entry.get('models') or []) or 'another model'}"
    created = record.get("created_at")
    if max_age_s is not None and created:
        age = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(str(created))).total_seconds()
        if age > max_age_s:
            record["breached"] = False
            record["stale"] = f"the report is {age:.0f}s old"
    record["reason"] = entry.get("reason")
    return record


def hold_canary(
    decision: Any, log_dir: str, route: str, candidate: str | None, *, max_age_s: float = 86_400
) -> Any:
    """The controller's `evals.decision.Decision`, turned into a rollback while the canary's
    candidate has a fresh output-drift finding (a rollback stays one)."""
    import dataclasses

    if decision.action not in ("advance", "wait") or not candidate:
        return decision
    guard = output_guardrail(log_dir, route, candidate=candidate, max_age_s=max_age_s)
    if not guard["breached"]:
        return decision
    reason = f"rollback at {decision.share_from:g}%: output drift guardrail: {guard['reason']}"
    return dataclasses.replace(decision, action="rollback", share_to=0.0, mode_to="shadow", reason=reason)
