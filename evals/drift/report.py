"""Drift reports: the config of a check, its result, and where results are stored."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DriftConfig:
    """How sensitive a check is and how much work it does."""

    alpha: float = 0.05
    """False alarm rate of a whole report (all checks together) under no drift."""
    calibration_rounds: int = 99
    """Reference split-halves used to calibrate the classifier threshold (raised to at least 2 / alpha)."""
    folds: int = 5
    max_reference: int = 1000
    max_current: int = 500
    min_samples: int = 30
    top_tokens: int = 12
    max_output_fields: int = 8
    examples: int = 3
    seed: int = 0


@dataclass
class Check:
    """One test: its statistic against its threshold, and what drove it."""

    name: str
    test: str
    statistic: float
    threshold: float
    threshold_on: str
    """``statistic`` (drift when above) or ``p_value`` (drift when at or below)."""
    p_value: float | None = None
    drifted: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


@dataclass
class DriftReport:
    """The result of one `check_drift`."""

    report_id: str
    route: str | None
    reference: str
    current: str
    n_reference: int
    n_current: int
    alpha: float
    drifted: bool
    checks: list[Check]
    skipped: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def drift_scores(report: DriftReport | Mapping[str, Any]) -> dict[str, float]:
    """A flat ``{metric_name: value}`` view of a report, for OpenTelemetry gauges (route as an attribute)."""
    data = report.to_dict() if isinstance(report, DriftReport) else dict(report)
    out = {
        "drift.detected": float(bool(data["drifted"])),
        "drift.checks_drifted": float(sum(bool(c["drifted"]) for c in data["checks"])),
        "drift.n_current": float(data["n_current"]),
    }
    for c in data["checks"]:
        key = "drift." + re.sub(r"[^a-zA-Z0-9_.]+", "_", c["name"])
        out[f"{key}.statistic"] = float(c["statistic"])
        out[f"{key}.threshold"] = float(c["threshold"])
        out[f"{key}.drifted"] = float(bool(c["drifted"]))
        if c.get("p_value") is not None:
            out[f"{key}.p_value"] = float(c["p_value"])
    return out


def save_report(log_dir: str, report: DriftReport) -> Path:
    """Write ``<log_dir>/drift/<route>/<report_id>.json``; returns the path."""
    path = Path(log_dir) / "drift" / (report.route or "_") / f"{report.report_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_reports(log_dir: str, route: str) -> list[dict[str, Any]]:
    """Stored reports of a route, oldest first."""
    folder = Path(log_dir) / "drift" / route
    out = []
    for p in sorted(folder.glob("drift_*.json")):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return out
