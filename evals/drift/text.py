"""The text form of output-drift reports (``shadowtune drift check`` without ``--json``)."""

from __future__ import annotations

import json
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


def describe(c: Any) -> dict[str, Any]:
    """A drifted `evals.drift.output.OutputCheck` in words: variant, against, field, years, a summary."""
    out: dict[str, Any] = {
        "variant": c.variant,
        "against": c.against,
        "check": c.name,
        "field": c.field,
        "p_value": c.p_value,
    }
    if c.rate_current is not None:
        out.update(rate=round(c.rate_current, 3), rate_against=round(c.rate_against or 0.0, 3))
    pct = f"{100 * (c.rate_current or 0):.0f}%"
    other = f"{100 * (c.rate_against or 0):.0f}%"
    if c.name == "novel_years":
        years = sorted(c.details.get("years") or {})
        out["years"] = years
        out["input_years"] = sorted(c.details.get("input_years") or {})
        where = f" in field {c.field}" if c.field else ""
        out["summary"] = (
            f"{c.variant} writes year {', '.join(years) or '?'}{where}, absent from its input "
            f"(inputs say {', '.join(out['input_years']) or 'no year'}), in {pct} of {c.n_current} outputs; "
            f"{c.against}: {other}"
        )
    elif c.name == "novel_dates":
        out["dates"] = sorted(c.details.get("dates") or {})
        out["summary"] = (
            f"{c.variant} writes dates absent from its input in {pct} of outputs; {c.against}: {other}"
        )
    elif c.name in ("field_present", "field_type"):
        what = (
            "present" if c.name == "field_present" else "types " + json.dumps(c.details.get("types_current"))
        )
        out["summary"] = (
            f"{c.variant} field {c.field}: {what} {pct if c.name == 'field_present' else ''} vs {c.against} {other if c.name == 'field_present' else json.dumps(c.details.get('types_against'))}".strip()
        )
    elif c.name == "length":
        out["summary"] = (
            f"{c.variant} length median {c.details['median_current']:.0f} vs {c.against} "
            f"{c.details['median_against']:.0f} chars"
        )
    else:
        out["summary"] = f"{c.variant} {c.name.replace('is_json', 'JSON')} rate {pct} vs {c.against} {other}"
    return out
