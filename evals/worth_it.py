"""Is the fine-tuned candidate worth it? The answer from a route's own traffic.

"Thou shalt not fine-tune — unless it pays." `worth_it_report` puts, per variant, what the log
knows about cost, speed and quality side by side, then projects the monthly difference at the
route's current candidate share and at 100 %:

* **usage, cost and the projection's cost and latency** are `gateway.store.usage.route_worth`'s,
  the computation the review dashboard's "Worth it?" panel shows too (see its definitions): every
  call of the route in the window, served or shadow; cost from the log's ``cost_usd``, else
  ``prices`` (the upstream settings now, per million tokens), else reported *missing*, never zero.
* **quality**: the slow eval (`evals.online.outcomes.outcomes_report`: outcome rates among the served
  calls with unit-level intervals, candidate minus baseline with always-valid intervals) and the
  fast evals stored under the log dir (the newest judge run of the route; the newest golden run
  of the candidate's model on the fixed test split, with its baseline beside it).
* **projection**: served calls per day over the observed part of the window, times 30, at the
  latest route-state version's observed candidate share and at 100 % (`gateway.store.usage`);
  the quality difference that comes with it is the measured difference (and its interval) on
  each outcome rate, scaled by the share of calls that would get the candidate.

Every figure that cannot be computed is ``None`` with a sentence in ``missing``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any

from evals import _reports
from evals.online.outcomes import outcomes_report
from gateway.durations import epoch_us
from gateway.store import usage

QUALITY_RATES = ("thumbs_up_rate", "thumbs_down_rate", "regeneration_rate", "error_rate", "flag_rate")

Prices = usage.Prices
DAYS_PER_MONTH = usage.DAYS_PER_MONTH
VARIANTS = usage.VARIANTS


def worth_it_report(
    store: Any,
    route: str,
    since: dt.datetime | float,
    until: dt.datetime | float | None = None,
    *,
    prices: Prices | None = None,
    log_dir: str | None = None,
    alpha: float = 0.05,
    now: float | None = None,
) -> dict[str, Any]:
    """The ``shadowtune report worth-it`` report as JSON-ready data (see the module docstring)."""
    now = time.time() if now is None else now
    lo = epoch_us(since)
    hi = epoch_us(until) if until is not None else epoch_us(now) + 1
    worth = usage.route_worth(store, route, lo, hi, prices)
    variants, missing = worth["variants"], worth["missing"]
    quality = _quality(store, route, since, until, alpha, variants, log_dir, missing)
    projection = worth["projection"]
    for at in (projection or {}).get("at", {}).values():
        if at is not None:
            at["quality"] = {m: _scaled(m, d, at["share"]) for m, d in quality.get("differences", {}).items()}
    return {
        "route": route,
        "since": _iso(lo),
        "until": _iso(hi),
        "definitions": {
            "cost_per_1k_usd": "USD per 1,000 answered calls (status < 400), shadow calls included",
            "latency": "end-to-end latency of answered calls, ms; time to first token on streamed calls",
            "outcome rates": "among the variant's served calls (thumbs-up rate = ups / served calls), "
            "the same definitions as `shadowtune eval outcomes`",
            "month": f"{DAYS_PER_MONTH} days of the window's served-call rate",
        },
        "variants": variants,
        "quality": quality,
        "current_share": worth["current_share"],
        "projection": projection,
        "missing": missing,
    }


def _quality(
    store: Any,
    route: str,
    since: dt.datetime | float,
    until: dt.datetime | float | None,
    alpha: float,
    variants: Mapping[str, Any],
    log_dir: str | None,
    missing: list[str],
) -> dict[str, Any]:
    slow = outcomes_report(store, route, since, until, alpha=alpha)
    period = slow["periods"][0] if slow["periods"] else {}
    rates: dict[str, dict[str, Any]] = {}
    for name, summary in period.get("variants", {}).items():
        rates[name] = {m: summary[m] for m in (*QUALITY_RATES, "rating") if m in summary}
    diffs = {
        d["metric"]: d for d in period.get("differences", []) if d["metric"] in (*QUALITY_RATES, "rating")
    }
    if "candidate" not in rates:
        missing.append(
            "slow eval: the candidate served no calls in the window (shadow only): no outcomes yet"
        )
    elif not any(m in rates["candidate"] and m not in ("error_rate",) for m in QUALITY_RATES):
        missing.append("slow eval: no outcome events (thumbs, ratings, regenerations) on served calls yet")
    out: dict[str, Any] = {"outcomes": rates, "differences": diffs, "unit": slow["unit"]}
    out["judge"] = _latest_judge(log_dir, route) if log_dir else None
    out["golden"] = _latest_golden(log_dir, variants) if log_dir else None
    if out["judge"] is None:
        missing.append(f"fast eval: no judge run stored for route {route!r} (shadowtune eval judge)")
    if out["golden"] is None:
        missing.append(
            "fast eval: no golden run of the candidate's model on the test split (shadowtune eval golden)"
        )
    return out


def _latest_judge(log_dir: str, route: str) -> dict[str, Any] | None:
    for run in _reports.list_runs(log_dir, "judge"):
        if run.get("route") == route:
            keys = (
                "run_id",
                "created_at",
                "n_judged",
                "win_rate",
                "tie_rate",
                "loss_rate",
                "win_ci",
                "loss_ci",
            )
            return {k: run.get(k) for k in keys}
    return None


def _latest_golden(log_dir: str, variants: Mapping[str, Any]) -> dict[str, Any] | None:
    """The newest golden run of the candidate's model with the baseline scored beside it."""
    model = (variants.get("candidate") or {}).get("model")
    for run in _reports.list_runs(log_dir, "golden"):
        if run.get("baseline") is not None and (model is None or run.get("model") == model):
            return {k: run.get(k) for k in ("model", "source", "n", "metrics", "baseline", "delta")}
    return None


def _scaled(metric: str, d: Mapping[str, Any], share: float) -> dict[str, Any]:
    """A difference as it would show at ``share``; a rate's interval is clipped to [-1, 1] first."""
    lo, hi = d["ci"]
    if metric != "rating":
        lo = max(-1.0, lo) if lo is not None else -1.0
        hi = min(1.0, hi) if hi is not None else 1.0
    ci = [share * x if x is not None else None for x in (lo, hi)]
    return {"diff": share * d["diff"], "ci": ci, "verdict": d["verdict"]}


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC).isoformat()


# -- text --------------------------------------------------------------------------------
def format_worth_it(r: Mapping[str, Any]) -> str:
    """The report as text: a table per variant, the quality, the projection, what is missing."""
    lines = [f"Worth it? route {r['route']}  {r['since'][:19]} → {r['until'][:19]} UTC", ""]
    rows: list[tuple[str, Callable[[Mapping[str, Any], str], str]]] = [
        ("calls (served / shadow)", lambda v, _: f"{v['calls']:,} ({v['served']:,} / {v['shadow']:,})"),
        ("error rate (all calls)", lambda v, _: _pct(v["error_rate"])),
        (
            "tokens in / out per call",
            lambda v, _: f"{_f(v['tokens_in_per_call'], 0)} / {_f(v['tokens_out_per_call'], 0)}",
        ),
        ("cost per 1,000 calls", lambda v, _: _usd(v["cost_per_1k_usd"])),
        ("latency p50 / p95", lambda v, _: f"{_f(v['latency_p50_ms'], 0)} / {_f(v['latency_p95_ms'], 0)} ms"),
        ("first token p50 / p95", lambda v, _: f"{_f(v['ttft_p50_ms'], 0)} / {_f(v['ttft_p95_ms'], 0)} ms"),
    ]
    names = [n for n in VARIANTS if n in r["variants"]]
    outcomes = r["quality"]["outcomes"]
    for metric in (*QUALITY_RATES, "rating"):
        if metric != "error_rate" and any(metric in outcomes.get(n, {}) for n in names):
            rows.append((metric.replace("_", " "), _outcome_cell(metric, outcomes)))
    width = max(len(label) for label, _ in rows)
    lines.append(f"{'':<{width}}  " + "  ".join(f"{n:>26}" for n in names))
    for label, cell in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{cell(r['variants'][n], n):>26}" for n in names))
    q = r["quality"]
    if q.get("judge"):
        j = q["judge"]
        lines.append(
            f"\njudge ({j['n_judged']} pairs): candidate wins {_pct(j['win_rate'])}, ties {_pct(j['tie_rate'])},"
            f" loses {_pct(j['loss_rate'])}"
        )
    if q.get("golden"):
        g = q["golden"]
        scores = ", ".join(f"{m} {_score(v)}" for m, v in (g.get("metrics") or {}).items())
        base = ", ".join(
            f"{m} {_score(v)}" for m, v in ((g.get("baseline") or {}).get("metrics") or {}).items()
        )
        lines.append(f"golden ({g['n']} test examples): {g['model']}: {scores}; baseline: {base}")
    p = r.get("projection")
    if p:
        lines.append(
            f"\nprojection: {p['monthly_calls']:,.0f} calls a month (from {_span(p['observed_days'])})"
        )
        for label, at in p["at"].items():
            if at is None:
                lines.append(f"  at the {label} share: unknown")
                continue
            head = f"  at {_pct(at['share'])} candidate ({label})"
            cost = (
                f"{_usd(at['monthly_cost_usd'])}/month, saves {_usd(at['monthly_saved_usd'])}"
                if at["monthly_cost_usd"] is not None
                else "cost unknown"
            )
            lat = at.get("latency_p50_ms_saved_per_call")
            lat_s = f"; p50 {_faster(lat)} per candidate call" if lat is not None else ""
            lines.append(f"{head}: {cost}{lat_s}")
            for m, d in at["quality"].items():
                lo, hi = d["ci"]
                fmt = _pp if m != "rating" else (lambda x: _f(x, 2))
                lines.append(
                    f"    {m.replace('_', ' ')}: {fmt(d['diff'])} [{fmt(lo)}, {fmt(hi)}] ({d['verdict']})"
                )
    if r["missing"]:
        lines.append("\nmissing:")
        lines.extend(f"  - {m}" for m in r["missing"])
    return "\n".join(lines)


def _outcome_cell(metric: str, outcomes: Mapping[str, Any]) -> Callable[[Mapping[str, Any], str], str]:
    def cell(_: Mapping[str, Any], name: str) -> str:
        s = outcomes.get(name, {}).get(metric)
        if not s or s.get("value") is None:
            return "n/a"
        if metric == "rating":
            return _f(s["value"], 2)
        lo, hi = s["ci"]
        return f"{_pct(s['value'])} [{_pct(lo)}, {_pct(hi)}]"

    return cell


def _score(v: Any) -> str:
    if isinstance(v, Mapping):
        x = v.get("mean", v.get("value", next(iter(v.values()), None)))
        return _f(x, 3)
    return _f(v, 3)


def _span(days: float) -> str:
    return f"{days:.1f} days" if days >= 1 else f"{24 * days:.1f} hours"


def _faster(saved_ms: float) -> str:
    """A latency saving as words: ``500 ms faster``, ``4,642 ms slower``."""
    return f"{_f(abs(saved_ms), 0)} ms {'faster' if saved_ms >= 0 else 'slower'}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pp"


def _usd(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def _f(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"
