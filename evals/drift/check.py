"""Drift: does live traffic still look like the data the model learned from?

`check_drift` compares a *reference* sample (a past window of the route's traffic, or the
dataset the model was trained on) with a *current* one (the last ``24h``, ``30m``, ...):

* **Domain classifier.** TF-IDF + logistic regression learns to tell current from
  reference texts; its cross-validated ROC-AUC is ~0.5 when they cannot be told apart.
  The alarm threshold is calibrated on the reference alone: ``calibration_rounds`` times,
  the reference is split into two disjoint pseudo-samples of exactly the sizes of the
  real comparison and the same cross-validated AUC is computed. The threshold is the
  ``k``-th largest of those AUCs with ``k = floor(alpha_i * (rounds + 1))``, so under no
  drift the real AUC exceeds it with probability at most ``alpha_i``. The words with the
  largest coefficients say what changed (``2024``, ``bitcoin``...).
* **Per-feature tests** on the inputs: prompt length (KS), language share (chi-square),
  tool use rate (Fisher's exact test), amount of numbers (KS), and years found in the
  text, as each prompt's latest year (chi-square); on the outputs: length (KS) and, for
  structured (JSON) outputs, each frequent field's values (KS for numbers, chi-square
  for categories).

Every check reports its statistic, threshold, verdict and examples. The false alarm rate
of the whole report is held at ``alpha`` by Bonferroni: the classifier gets ``alpha / 2``
and each of the ``m`` feature tests ``alpha / (2 m)`` (``alpha / m`` each when the
classifier cannot run). Reports are stored as JSON under ``<log_dir>/drift/<route>/``;
`drift_scores` flattens one for metrics exporters.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.drift.classifier import domain_classifier
from evals.drift.features import _chi2, _fisher, _ks, count_numbers, detect_language, latest_year
from evals.drift.report import Check, DriftConfig, DriftReport
from evals.drift.samples import Sample
from evals.errors import DriftError
from evals.golden.metrics import flatten, parse_json
from gateway.store.ids import new_id


def _require() -> None:
    try:
        import numpy  # noqa: F401
        import scipy  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DriftError(
            f"drift checks need the evals extra: pip install 'shadowtune[evals]' ({exc.name})"
        ) from exc


# -- the check -----------------------------------------------------------------------------
def _output_checks(
    reference: Sequence[Sample], current: Sequence[Sample], config: DriftConfig
) -> list[Check]:
    ref_out = [s.output for s in reference if s.output is not None]
    cur_out = [s.output for s in current if s.output is not None]
    if len(ref_out) < config.min_samples or len(cur_out) < config.min_samples:
        return []
    checks = [
        _ks("output_length", [len(o) for o in ref_out], [len(o) for o in cur_out], cur_out, config.examples)
    ]

    def objects(outs: Sequence[str]) -> list[dict[str, Any] | None]:
        parsed = [parse_json(o) for o in outs]
        return [dict(flatten(v)) if ok and isinstance(v, dict) else None for ok, v in parsed]

    ref_obj, cur_obj = objects(ref_out), objects(cur_out)
    if sum(o is not None for o in ref_obj) < 0.5 * len(ref_obj) or sum(
        o is not None for o in cur_obj
    ) < 0.5 * len(cur_obj):
        return checks
    freq: Counter[str] = Counter()
    for objs in (ref_obj, cur_obj):
        for o in objs:
            freq.update((o or {}).keys())
    fields = [f for f, n in freq.most_common() if n >= 0.1 * (len(ref_obj) + len(cur_obj))][
        : config.max_output_fields
    ]
    for f in fields:
        rv = [(o or {}).get(f, "<missing>") for o in ref_obj]
        cv = [(o or {}).get(f, "<missing>") for o in cur_obj]
        nums_r = [v for v in rv if isinstance(v, float)]
        nums_c = [v for v in cv if isinstance(v, float)]
        if len(nums_r) >= 0.9 * len(rv) and len(nums_c) >= 0.9 * len(cv) and len(set(nums_r + nums_c)) > 10:
            checks.append(_ks(f"output.{f}", nums_r, nums_c, [str(v) for v in nums_c], config.examples))
        else:
            checks.append(
                _chi2(f"output.{f}", [str(v) for v in rv], [str(v) for v in cv], cur_out, config.examples)
            )
    return checks


def check_drift(
    reference: Sequence[Sample],
    current: Sequence[Sample],
    config: DriftConfig | None = None,
    *,
    route: str | None = None,
    reference_label: str = "reference",
    current_label: str = "current",
    cache_dir: str | os.PathLike[str] | None = None,
) -> DriftReport:
    """Run every check; the report's ``drifted`` is true when any check is (Bonferroni-held at ``alpha``)."""
    _require()
    config = config or DriftConfig()
    if len(reference) < 2 * config.min_samples or len(current) < config.min_samples:
        raise DriftError(
            f"too little traffic to compare: {len(reference)} reference and {len(current)} current samples "
            f"(need {2 * config.min_samples} and {config.min_samples})"
        )
    ref_text = [s.text for s in reference]
    cur_text = [s.text for s in current]
    n = config.examples
    features = [
        _ks("prompt_length", [len(t) for t in ref_text], [len(t) for t in cur_text], cur_text, n),
        _chi2(
            "language",
            [detect_language(t) for t in ref_text],
            [detect_language(t) for t in cur_text],
            cur_text,
            n,
        ),
        _fisher("tool_use", [s.tools for s in reference], [s.tools for s in current], cur_text, n),
        _ks(
            "numbers", [count_numbers(t) for t in ref_text], [count_numbers(t) for t in cur_text], cur_text, n
        ),
        _chi2("years", [latest_year(t) for t in ref_text], [latest_year(t) for t in cur_text], cur_text, n),
    ]
    skipped: dict[str, str] = {}
    if not any(s.tools for s in reference) and not any(s.tools for s in current):
        features = [c for c in features if c.name != "tool_use"]
        skipped["tool_use"] = "no tool use in either sample"
    features.extend(_output_checks(reference, current, config))
    checks: list[Check] = []
    try:
        clf = domain_classifier(
            ref_text, cur_text, config, config.alpha / 2, Path(cache_dir) if cache_dir else None
        )
        checks.append(clf)
        alpha_feature = config.alpha / 2 / len(features)
    except DriftError as exc:
        skipped["domain_classifier"] = str(exc)
        alpha_feature = config.alpha / len(features)
    for c in features:
        c.threshold = alpha_feature
        c.drifted = c.p_value is not None and c.p_value <= alpha_feature
        checks.append(c)
    return DriftReport(
        report_id=new_id("drift"),
        route=route,
        reference=reference_label,
        current=current_label,
        n_reference=len(reference),
        n_current=len(current),
        alpha=config.alpha,
        drifted=any(c.drifted for c in checks),
        checks=checks,
        skipped=skipped,
    )
