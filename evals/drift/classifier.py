"""The domain classifier: can TF-IDF + logistic regression tell current texts from reference ones?"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.drift.report import Check, DriftConfig
from evals.errors import DriftError
from gateway.store.fileio import write_json_atomic

_CALIBRATION: dict[str, list[float]] = {}


def _vectorize(texts: Sequence[str]) -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    for min_df in (2, 1):
        vec = TfidfVectorizer(min_df=min_df, sublinear_tf=True, max_features=20000)
        try:
            return vec, vec.fit_transform(texts)
        except ValueError:  # empty vocabulary
            continue
    raise DriftError("the texts hold no words to classify")


def _cv_auc(a: Sequence[str], b: Sequence[str], folds: int, seed: int) -> tuple[float, Any, Any, Any]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    texts = list(a) + list(b)
    y = np.array([0] * len(a) + [1] * len(b))
    vec, x = _vectorize(texts)
    clf = LogisticRegression(C=1.0, solver="liblinear", class_weight="balanced")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba)), proba, vec, x


def _read_cache(path: Path) -> list[float] | None:
    """A cached calibration, or None when missing or unreadable (then it is recomputed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [float(x) for x in data]
    except (OSError, ValueError, TypeError):  # missing, half-written (JSONDecodeError), not a list
        return None


def _calibrate(
    reference: Sequence[str], n_r: int, n_c: int, config: DriftConfig, rounds: int, cache_dir: Path | None
) -> list[float]:
    import numpy as np

    digest = hashlib.sha256()
    for t in reference:
        digest.update(t.encode())
        digest.update(b"\0")
    key = f"{digest.hexdigest()[:24]}-{n_r}-{n_c}-{rounds}-{config.folds}-{config.seed}"
    if key in _CALIBRATION:
        return _CALIBRATION[key]
    path = cache_dir / f"{key}.json" if cache_dir else None
    null = _read_cache(path) if path is not None else None
    if null is None:
        rng = np.random.default_rng(config.seed + 1)
        null = []
        for b in range(rounds):
            idx = rng.permutation(len(reference))
            pseudo_ref = [reference[i] for i in idx[:n_r]]
            pseudo_cur = [reference[i] for i in idx[n_r : n_r + n_c]]
            null.append(_cv_auc(pseudo_ref, pseudo_cur, config.folds, config.seed + b)[0])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # whole or not at all: a crash mid-write, or a second worker reading while this one
            # writes, must never see a truncated file
            write_json_atomic(path, null, indent=None)
    _CALIBRATION[key] = null
    return null


def domain_classifier(
    reference: Sequence[str],
    current: Sequence[str],
    config: DriftConfig,
    alpha: float,
    cache_dir: Path | None = None,
) -> Check:
    """The classifier check at level ``alpha`` (threshold calibrated on ``reference``)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    n_c = min(len(current), config.max_current, len(reference) // 2)
    n_r = min(len(reference) - n_c, config.max_reference)
    rng = np.random.default_rng(config.seed)
    ref_idx = sorted(rng.choice(len(reference), n_r, replace=False).tolist())
    cur_idx = sorted(rng.choice(len(current), n_c, replace=False).tolist())
    ref_s = [reference[i] for i in ref_idx]
    cur_s = [current[i] for i in cur_idx]
    rounds = max(config.calibration_rounds, math.ceil(2 / alpha) - 1)
    null = sorted(_calibrate(reference, n_r, n_c, config, rounds, cache_dir), reverse=True)
    k = max(1, math.floor(alpha * (len(null) + 1)))
    threshold = null[k - 1]
    auc, proba, vec, x = _cv_auc(ref_s, cur_s, config.folds, config.seed)
    p_value = (1 + sum(v >= auc for v in null)) / (len(null) + 1)
    y = np.array([0] * n_r + [1] * n_c)
    coef = LogisticRegression(C=1.0, solver="liblinear", class_weight="balanced").fit(x, y).coef_[0]
    names = vec.get_feature_names_out()
    present = (x > 0).toarray() if hasattr(x, "toarray") else x > 0

    def token(i: int) -> dict[str, Any]:
        return {
            "token": str(names[i]),
            "weight": round(float(coef[i]), 4),
            "share_reference": round(float(present[:n_r, i].mean()), 4),
            "share_current": round(float(present[n_r:, i].mean()), 4),
        }

    order = np.argsort(coef)
    top_current = [token(int(i)) for i in order[::-1][: config.top_tokens] if coef[i] > 0]
    top_reference = [token(int(i)) for i in order[: config.top_tokens] if coef[i] < 0]
    best = np.argsort(-proba[n_r:])[: config.examples]
    return Check(
        "domain_classifier",
        "roc_auc",
        auc,
        float(threshold),
        "statistic",
        p_value,
        drifted=auc > threshold,
        details={
            "null_auc_mean": float(np.mean(null)),
            "null_auc_max": float(null[0]),
            "calibration_rounds": len(null),
            "n_reference": n_r,
            "n_current": n_c,
            "top_current_tokens": top_current,
            "top_reference_tokens": top_reference,
        },
        examples=[cur_s[int(i)] for i in best],
    )
