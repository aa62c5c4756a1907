"""From the dashboard's numbers (`gateway.web._series`) to its tables and SVG charts.

Per route: traffic per variant, error rate, latency p50/p95, the outcome rates with their
95 % intervals, the canary's share with the controller's decisions marked, the judge's
win rate; drift scores from the reports ``drift check`` writes (``<log_dir>/drift/<route>/``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from markupsafe import Markup

from gateway.store import layout
from gateway.web._charts import Marker, Point, Series, line_chart
from gateway.web._common import ms, pct
from gateway.web._series import DEFINITIONS, RATE_METRICS

VARIANTS = ("baseline", "candidate")
MAX_DRIFT_REPORTS = 200


def _when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _pct_axis(v: float) -> str:
    return f"{100 * v:.0f}%" if v >= 0.01 or v == 0 else f"{100 * v:.1f}%"


def route_charts(
    route: str, data: dict[str, Any], x_range: tuple[int, int], decisions: list[dict[str, Any]]
) -> dict[str, Markup]:
    """The route's charts, by name."""
    by: dict[tuple[str, bool], list[dict[str, Any]]] = defaultdict(list)
    for r in data["traffic"]:
        by[(r["variant"] or "", bool(r["served"]))].append(r)
    slug = "".join(ch if ch.isalnum() else "-" for ch in route)
    traffic, errors, p50, p95 = [], [], [], []
    for (variant, served), rows in sorted(by.items()):
        name = variant + ("" if served else " (shadow)")
        css = f"{variant}{'' if served else ' shadow'}"
        traffic.append(
            Series(
                name,
                css,
                [Point(r["t"], r["calls"], f"{name} {_when(r['t'])}: {r['calls']:,} calls") for r in rows],
            )
        )
        errors.append(
            Series(
                name,
                css,
                [
                    Point(
                        r["t"],
                        r["errors"] / r["calls"],
                        f"{name} {_when(r['t'])}: {pct(r['errors'] / r['calls'])} ({r['errors']}/{r['calls']})",
                    )
                    for r in rows
                ],
            )
        )
        p50.append(
            Series(
                name + " p50",
                css,
                [
                    Point(r["t"], r["p50_ms"] or 0, f"{name} p50 {_when(r['t'])}: {ms(r['p50_ms'])}")
                    for r in rows
                ],
            )
        )
        p95.append(
            Series(
                name + " p95",
                css + " p95",
                [
                    Point(r["t"], r["p95_ms"] or 0, f"{name} p95 {_when(r['t'])}: {ms(r['p95_ms'])}")
                    for r in rows
                ],
            )
        )
    charts = {
        "traffic": line_chart(
            f"traffic-{slug}", f"{route}: calls per bucket", traffic, x_range, y_fmt=lambda v: f"{v:,.0f}"
        ),
        "errors": line_chart(f"errors-{slug}", f"{route}: error rate", errors, x_range, y_fmt=_pct_axis),
        "latency": line_chart(
            f"latency-{slug}", f"{route}: latency p50 and p95", p50 + p95, x_range, y_fmt=lambda v: ms(v)
        ),
    }
    rates = data["rate_series"]
    for metric in ("thumbs_up_rate", "thumbs_down_rate", "regeneration_rate"):
        series = []
        for variant in VARIANTS:
            pts = []
            for (t, v, m), r in sorted(rates.items(), key=lambda kv: kv[0][0] or 0):
                if v != variant or m != metric or t is None or r.value is None:
                    continue
                tip = f"{variant} {_when(t)}: {pct(r.value)} [{pct(r.lo)}, {pct(r.hi)}] ({r.count:.0f}/{r.n:.0f} calls)"
                pts.append(Point(t, r.value, tip, r.lo, r.hi))
            if pts:
                series.append(Series(variant, variant, pts))
        if series:
            charts[metric] = line_chart(
                f"{metric}-{slug}", f"{route}: {DEFINITIONS[metric]}", series, x_range, y_fmt=_pct_axis
            )
    if any(s > 0 for _, s, _, _ in data["canary_share"]) or decisions:
        pts = [
            Point(t, s, f"{_when(t)}: candidate served {s:.1f} % ({c:,}/{n:,})")
            for t, s, c, n in data["canary_share"]
        ]
        marks = [_decision_marker(d) for d in decisions if d.get("ts")]
        charts["canary"] = line_chart(
            f"canary-{slug}",
            f"{route}: candidate's share of served calls, with the controller's decisions",
            [Series("candidate share", "candidate", pts)],
            x_range,
            y_fmt=lambda v: f"{v:.0f}%",
            markers=marks,
        )
    return charts


def _decision_marker(d: dict[str, Any]) -> Marker:
    action = str(d.get("action") or "?")
    bits = [f"{action} at {_when(int(float(d['ts']) * 1e6))}"]
    for k in ("from_share", "to_share", "share", "reason", "actor"):
        if d.get(k) not in (None, ""):
            bits.append(f"{k}: {d[k]}")
    stats = d.get("observation") or d.get("stats")
    if isinstance(stats, dict):
        bits.extend(f"{k}: {v}" for k, v in list(stats.items())[:8])
    return Marker(int(float(d["ts"]) * 1e6), action, " · ".join(bits), css=f"decision {action}")


def rate_table(route: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The route's per-variant outcome rates over the whole period (``eval outcomes``' numbers)."""
    out = []
    for variant in VARIANTS:
        row: dict[str, Any] = {"route": route, "variant": variant}
        for metric in RATE_METRICS:
            row[metric] = data["rates"].get((None, variant, metric))
        up, rated = row["thumbs_up_rate"], row["rated_rate"]
        row["up_among_rated"] = up.value / rated.value if up and rated and rated.value else None
        if row["error_rate"] is not None:
            out.append(row)
    return out


def judge_chart(rows: list[dict[str, Any]], x_range: tuple[int, int]) -> Markup | None:
    by: dict[str, list[Point]] = defaultdict(list)
    for r in rows:
        decided = r["wins"] + r["losses"]
        if not decided:
            continue
        rate = r["wins"] / decided
        tip = f"{r['route']} {_when(r['t'])}: candidate won {r['wins']}, lost {r['losses']}, ties {r['ties']} ({pct(rate)} of decided)"
        by[str(r["route"])].append(Point(r["t"], rate, tip))
    if not by:
        return None
    series = [Series(route, f"route-{i % 4}", pts) for i, (route, pts) in enumerate(sorted(by.items()))]
    return line_chart(
        "judge-win-rate",
        "judge: the candidate's win rate among decided items, per day",
        series,
        x_range,
        y_fmt=_pct_axis,
        y_max=1.0,
    )


def drift_charts(log_dir: str, routes: list[str], x_range: tuple[int, int]) -> dict[str, Markup]:
    """Per route: each drift check's statistic over time, relative to its threshold (1 = threshold)."""
    if layout.is_remote(log_dir):
        return {}
    out = {}
    for route in routes:
        folder = Path(layout.local_path(log_dir)) / "drift" / route
        if not folder.is_dir():
            continue
        series: dict[str, list[Point]] = defaultdict(list)
        paths = sorted(folder.glob("*.json"), key=os.path.getmtime)[-MAX_DRIFT_REPORTS:]
        for path in paths:
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
                at = int(dt.datetime.fromisoformat(report["created_at"]).timestamp() * 1e6)
                checks = report.get("checks") or []
            except (OSError, ValueError, KeyError, TypeError):
                continue
            for c in checks:
                try:
                    stat, thr = float(c["statistic"]), float(c["threshold"])
                    on_p = c.get("threshold_on") == "p_value"
                    score = (
                        (thr / max(float(c["p_value"]), 1e-12))
                        if on_p and c.get("p_value") is not None
                        else (stat / thr if thr else stat)
                    )
                except (KeyError, TypeError, ValueError):
                    continue
                tip = f"{c.get('name')} {_when(at)}: statistic {stat:.4g}, threshold {thr:.4g}{' — DRIFT' if c.get('drifted') else ''}"
                series[str(c.get("name"))].append(Point(at, score, tip))
        if series:
            slug = "".join(ch if ch.isalnum() else "-" for ch in route)
            lines = [
                Series(name, f"route-{i % 4}", pts) for i, (name, pts) in enumerate(sorted(series.items()))
            ]
            out[route] = line_chart(
                f"drift-{slug}",
                f"{route}: drift score per check (1 = its threshold)",
                lines,
                x_range,
                y_fmt=lambda v: f"{v:.1f}",
            )
    return out
