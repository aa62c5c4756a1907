"""Drift: does live traffic, and what each model writes, still look like what the model learned from?

* `check` (``shadowtune drift check``): the inputs of a window against a reference, by a
  domain classifier and per-feature tests (`evals.drift.check`);
* `output` (``shadowtune drift outputs``): what each variant writes, served and shadow alike,
  against the reference and against the other variant on the same inputs (`evals.drift.output`);
* `guardrail`: the latest output-drift finding as a record the controller and the retraining
  triggers read (`evals.drift.guardrail`).
"""

from evals.drift.check import check_drift
from evals.drift.classifier import domain_classifier
from evals.drift.features import count_numbers, detect_language, latest_year
from evals.drift.report import Check, DriftConfig, DriftReport, drift_scores, load_reports, save_report
from evals.drift.samples import (
    Sample,
    load_dataset_reference,
    load_window,
    parse_duration,
    sample_from_call,
    sample_from_messages,
)

__all__ = [
    "Check",
    "DriftConfig",
    "DriftReport",
    "Sample",
    "check_drift",
    "count_numbers",
    "detect_language",
    "domain_classifier",
    "drift_scores",
    "latest_year",
    "load_dataset_reference",
    "load_reports",
    "load_window",
    "parse_duration",
    "sample_from_call",
    "sample_from_messages",
    "save_report",
]
