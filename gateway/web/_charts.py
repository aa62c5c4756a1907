"""Server-rendered SVG time-series charts: no JavaScript, no CDN.

`line_chart` draws one or more series over a time axis, each point a circle whose
``<title>`` is its tooltip (the browser shows it on hover) and whose ``data-x`` /
``data-y`` carry the raw numbers (for tests and scrapers); an optional band per series
draws its interval, and vertical markers (the controller's decisions) carry their own
tooltips. Every piece of text is escaped (`markupsafe.escape`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

W, H = 640, 200
PAD_L, PAD_R, PAD_T, PAD_B = 56, 12, 14, 26


@dataclass
class Point:
    x: int
    """Epoch microseconds."""
    y: float
    tip: str
    lo: float | None = None
    hi: float | None = None


@dataclass
class Series:
    name: str
    css: str
    points: list[Point] = field(default_factory=list)


@dataclass
class Marker:
    x: int
    label: str
    tip: str
    css: str = "decision"


def _time_label(us: int, span_us: int) -> str:
    t = dt.datetime.fromtimestamp(us / 1e6, dt.UTC)
    return t.strftime("%H:%M") if span_us <= 2 * 86_400_000_000 else t.strftime("%m-%d")


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    x_range: tuple[int, int],
    *,
    y_fmt: Callable[[float], str] = lambda v: f"{v:g}",
    y_max: float | None = None,
    markers: Sequence[Marker] = (),
) -> Markup:
    lo_x, hi_x = x_range
    span = max(1, hi_x - lo_x)
    ys = [v for s in series for p in s.points for v in (p.y, p.hi) if v is not None]
    top = y_max if y_max is not None else (max(ys) * 1.1 if ys and max(ys) > 0 else 1.0)
    top = top or 1.0
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x: int) -> float:
        return PAD_L + iw * (x - lo_x) / span

    def py(y: float) -> float:
        return PAD_T + ih * (1 - min(max(y, 0.0), top) / top)

    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for k in range(4):  # horizontal grid and y labels
        v = top * k / 3
        y = py(v)
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(y_fmt(v))}</text>'
        )
    for k in range(5):  # time labels
        tx = lo_x + span * k // 4
        anchor = "start" if k == 0 else ("end" if k == 4 else "middle")
        parts.append(
            f'<text class="axis" x="{px(tx):.1f}" y="{H - 8}" text-anchor="{anchor}">'
            f"{escape(_time_label(tx, span))}</text>"
        )
    for m in markers:
        if not lo_x <= m.x <= hi_x:
            continue
        x = px(m.x)
        parts.append(
            f'<g class="marker {escape(m.css)}" data-x="{m.x}" data-label="{escape(m.label)}">'
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" y2="{PAD_T + ih}"/>'
            f'<rect x="{x - 4:.1f}" y="{PAD_T}" width="8" height="8"/>'
            f"<title>{escape(m.tip)}</title></g>"
        )
    for s in series:
        pts = sorted((p for p in s.points if lo_x <= p.x <= hi_x), key=lambda p: p.x)
        band = [p for p in pts if p.lo is not None and p.hi is not None]
        if len(band) > 1:
            upper = " ".join(f"{px(p.x):.1f},{py(p.hi or 0):.1f}" for p in band)
            lower = " ".join(f"{px(p.x):.1f},{py(p.lo or 0):.1f}" for p in reversed(band))
            parts.append(f'<polygon class="band {escape(s.css)}" points="{upper} {lower}"/>')
        if len(pts) > 1:
            line = " ".join(f"{px(p.x):.1f},{py(p.y):.1f}" for p in pts)
            parts.append(f'<polyline class="line {escape(s.css)}" points="{line}"/>')
        parts.append(f'<g class="points {escape(s.css)}" data-series="{escape(s.name)}">')
        for p in pts:
            extra = (
                f' data-lo="{p.lo:.6g}" data-hi="{p.hi:.6g}"' if p.lo is not None and p.hi is not None else ""
            )
            parts.append(
                f'<circle cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="3" data-x="{p.x}" data-y="{p.y:.6g}"{extra}>'
                f"<title>{escape(p.tip)}</title></circle>"
            )
        parts.append("</g>")
    legend = " ".join(f'<tspan class="legend {escape(s.css)}">■ {escape(s.name)}</tspan>' for s in series)
    parts.append(f'<text class="legend" x="{PAD_L}" y="{PAD_T - 2}">{legend}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
