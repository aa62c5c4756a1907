"""The text form of output-drift reports (``shadowtune drift check`` without ``--json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_output_report(r: Mapping[str, Any] | None) -> str:
    if not r:
        return "outputs: not checked"
    if r.get("error"):
        return f"outputs: not checked ({r['error']})"
    verdict = "OUTPUT DRIFT" if r["drifted"] else "no output drift"
    lines = [f"{verdict}  report {r['report_id']}  reference {r['reference']}  alpha {r['alpha']}"]
    for name, v in (r.get("variants") or {}).items():
        where = f"{v['served']} served, {v['shadow']} shadow"
        models = ", ".join(v.get("models") or {}) or "?"
        lines.append(
            f"  {name:<10} {v['calls']:>5} calls ({where}; {models})  novel years {100 * v['novel_year_rate']:.0f}%"
            f"  empty {100 * v['empty_rate']:.0f}%  refusals {100 * v['refusal_rate']:.0f}%"
            f"  JSON {100 * v['json_rate']:.0f}%"
        )
    for f in r.get("findings") or ():
        lines.append(f"  DRIFT {f['summary']}  (p {f['p_value']:.2g})")
    for name, why in (r.get("skipped") or {}).items():
        lines.append(f"  skip  {name}: {why}")
    return "\n".join(lines)
