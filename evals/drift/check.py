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

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.errors import DriftError
from evals.metrics import flatten, parse_json
from gateway.store import LogStore
from gateway.store.ids import new_id

_YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")
_WORD = re.compile(r"[^\W\d_]+", re.U)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _require() -> None:
    try:
        import numpy  # noqa: F401
        import scipy  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DriftError(
            f"drift checks need the evals extra: pip install 'shadowtune[evals]' ({exc.name})"
        ) from exc


# -- inputs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One request as drift sees it: the user's text, whether tools were in play, the output."""

    text: str
    tools: bool = False
    output: str | None = None
    source_id: str | None = None


def sample_from_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: bool = False,
    output: str | None = None,
    source_id: str | None = None,
) -> Sample:
    """A `Sample` from chat messages: user and tool contents (system prompts are config, not traffic)."""
    parts = []
    for msg in messages:
        if not isinstance(msg, Mapping):
            continue
        role = msg.get("role")
        tools = tools or bool(msg.get("tool_calls")) or role == "tool"
        if role in ("system", "developer", "assistant"):
            continue
        content = msg.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        if content:
            parts.append(str(content))
    return Sample("\n".join(parts), tools, output, source_id)


def sample_from_call(
    request: str | None, output_text: str | None, response: str | None, call_id: str
) -> Sample:
    try:
        req = json.loads(request or "{}")
    except json.JSONDecodeError:
        req = {}
    tools = bool(req.get("tools") or req.get("functions"))
    output = output_text
    try:
        msg = json.loads(response or "{}")["choices"][0]["message"]
        tools = tools or bool(msg.get("tool_calls"))
        if output is None and msg.get("tool_calls"):
            output = json.dumps(msg["tool_calls"])
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        pass
    return sample_from_messages(req.get("messages") or (), tools=tools, output=output, source_id=call_id)


WINDOW_SQL = """
SELECT call_id, request, output_text, response FROM calls
WHERE route = $route AND served AND coalesce(status, 200) < 400 AND ts >= $since AND ts < $until
ORDER BY hash(call_id) LIMIT $limit
"""


def load_window(
    store: LogStore, route: str, since: dt.datetime, until: dt.datetime, *, limit: int = 5000
) -> list[Sample]:
    """Served calls of ``route`` in ``[since, until)`` (a deterministic pseudo-random sample of ``limit``)."""
    rows = store.sql(WINDOW_SQL, {"route": route, "since": since, "until": until, "limit": limit})
    return [sample_from_call(r["request"], r["output_text"], r["response"], r["call_id"]) for r in rows]


def load_dataset_reference(log_dir: str, name: str) -> list[Sample]:
    """The training split of a dataset (every row when it has no split column) as samples."""
    from evals.golden import read_dataset

    examples = read_dataset(log_dir, name, split="train", fallback_all=True)
    return [
        sample_from_messages(
            e.messages, tools=bool(e.meta.get("tools")), output=e.reference, source_id=e.example_id
        )
        for e in examples
    ]


def parse_duration(text: str) -> dt.timedelta:
    """``30m``, ``24h``, ``7d``, ``2w`` -> a timedelta."""
    m = _DURATION.match(text)
    if not m:
        raise DriftError(f"cannot read duration {text!r}: use a number and one of s, m, h, d, w (e.g. 24h)")
    return dt.timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


# -- report --------------------------------------------------------------------------------
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


# -- features ------------------------------------------------------------------------------
_SCRIPTS = (
    ("ja", (0x3040, 0x30FF)),
    ("zh", (0x4E00, 0x9FFF)),
    ("ko", (0xAC00, 0xD7AF)),
    ("cyrillic", (0x0400, 0x04FF)),
    ("ar", (0x0600, 0x06FF)),
    ("he", (0x0590, 0x05FF)),
    ("hi", (0x0900, 0x097F)),
    ("el", (0x0370, 0x03FF)),
    ("th", (0x0E00, 0x0E7F)),
)
_STOPWORD_TEXT = {
    "en": "the and is are to of in for with you my this that it on please can what how",
    "es": "el la los las es son de que y en por para con una un mi está cómo qué",
    "fr": "le la les est sont de des et en pour avec une un mon je vous ce qui comment",
    "de": "der die das ist sind und zu von mit für ein eine ich sie nicht wie was bitte",
    "pt": "o a os as é são de que e em para com uma um meu não você como",
    "it": "il lo la gli le è sono di che e per con una un mio non come sei",
    "nl": "de het een is zijn en van voor met ik je niet wat hoe",
}
_STOPWORDS = {lang: frozenset(words.split()) for lang, words in _STOPWORD_TEXT.items()}


def detect_language(text: str) -> str:
    """A rough language code: by script for non-Latin text, by stop words for Latin; ``und`` when unsure."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return "und"
    scripts: Counter[str] = Counter()
    for ch in letters:
        cp = ord(ch)
        for code, (lo, hi) in _SCRIPTS:
            if lo <= cp <= hi:
                scripts[code] += 1
                break
    if scripts and sum(scripts.values()) > 0.3 * len(letters):
        if scripts.get("ja"):
            return "ja"
        return scripts.most_common(1)[0][0]
    words = [w.lower() for w in _WORD.findall(text)]
    scores = {lang: sum(w in stops for w in words) for lang, stops in _STOPWORDS.items()}
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] > 0 else "und"


def latest_year(text: str) -> str:
    years = _YEAR.findall(text)
    return max(years) if years else "none"


def count_numbers(text: str) -> int:
    return len(_NUMBER.findall(text)) - len(_YEAR.findall(text))


# -- statistics ----------------------------------------------------------------------------
def _ks(
    name: str, ref: Sequence[float], cur: Sequence[float], cur_examples: Sequence[str], n_examples: int
) -> Check:
    from scipy import stats

    res = stats.ks_2samp(ref, cur)
    ref_med, cur_med = _median(ref), _median(cur)
    order = sorted(range(len(cur)), key=lambda i: cur[i], reverse=cur_med >= ref_med)
    return Check(
        name,
        "ks",
        float(res.statistic),
        0.0,
        "p_value",
        float(res.pvalue),
        details={
            "median_reference": ref_med,
            "median_current": cur_med,
            "n_reference": len(ref),
            "n_current": len(cur),
        },
        examples=[cur_examples[i] for i in order[:n_examples]],
    )


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return float(s[len(s) // 2]) if s else 0.0


def _chi2(
    name: str, ref: Sequence[str], cur: Sequence[str], cur_examples: Sequence[str], n_examples: int
) -> Check:
    from scipy import stats

    rc, cc = Counter(ref), Counter(cur)
    n_r, n_c = len(ref), len(cur)
    total = n_r + n_c
    min_row = min(n_r, n_c)

    def big(label: str) -> bool:
        return (rc[label] + cc[label]) * min_row / total >= 5

    labels = sorted(rc.keys() | cc.keys(), key=lambda k: -(rc[k] + cc[k]))
    keep = [k for k in labels if big(k)]
    rare = [k for k in labels if not big(k)]
    groups: dict[str, list[str]] = {k: [k] for k in keep}
    if rare:
        rare_total = sum(rc[k] + cc[k] for k in rare)
        if rare_total * min_row / total >= 5 or not keep:
            groups["other"] = rare
        else:
            groups[keep[-1]] = groups[keep[-1]] + rare
    table = [
        [sum(rc[k] for k in ks) for ks in groups.values()],
        [sum(cc[k] for k in ks) for ks in groups.values()],
    ]
    shares = {g: {"reference": table[0][i] / n_r, "current": table[1][i] / n_c} for i, g in enumerate(groups)}
    details: dict[str, Any] = {"shares": shares, "n_reference": n_r, "n_current": n_c}
    if len(groups) < 2:
        return Check(name, "chi2", 0.0, 0.0, "p_value", 1.0, details=details)
    res = stats.chi2_contingency(table)
    over = max(groups, key=lambda g: shares[g]["current"] - shares[g]["reference"])
    members = set(groups[over])
    examples = [t for t, label in zip(cur_examples, cur, strict=True) if label in members][:n_examples]
    details["over_represented"] = over
    details["dof"] = int(res.dof)
    return Check(
        name,
        "chi2",
        float(res.statistic),
        0.0,
        "p_value",
        float(res.pvalue),
        details=details,
        examples=examples,
    )


def _fisher(
    name: str, ref: Sequence[bool], cur: Sequence[bool], cur_examples: Sequence[str], n_examples: int
) -> Check:
    from scipy import stats

    a, b = sum(ref), len(ref) - sum(ref)
    c, d = sum(cur), len(cur) - sum(cur)
    res = stats.fisher_exact([[a, b], [c, d]])
    rate_r, rate_c = a / len(ref), c / len(cur)
    pick = rate_c >= rate_r
    examples = [t for t, v in zip(cur_examples, cur, strict=True) if v == pick][:n_examples]
    return Check(
        name,
        "fisher",
        abs(rate_c - rate_r),
        0.0,
        "p_value",
        float(res.pvalue),
        details={"rate_reference": rate_r, "rate_current": rate_c},
        examples=examples,
    )


# -- domain classifier ---------------------------------------------------------------------
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
    if path is not None and path.exists():
        null = [float(x) for x in json.loads(path.read_text())]
    else:
        rng = np.random.default_rng(config.seed + 1)
        null = []
        for b in range(rounds):
            idx = rng.permutation(len(reference))
            pseudo_ref = [reference[i] for i in idx[:n_r]]
            pseudo_cur = [reference[i] for i in idx[n_r : n_r + n_c]]
            null.append(_cv_auc(pseudo_ref, pseudo_cur, config.folds, config.seed + b)[0])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(null))
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
