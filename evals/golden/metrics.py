"""Deterministic metrics over model outputs, and the statistics the eval reports share.

Every metric takes the predictions and the references (same length, ``None`` where an
example has no reference) and returns a flat ``{name: value}`` dict, so reports can put
metrics of different kinds side by side:

* ``exact_match``: share of predictions equal to their reference (whitespace and case
  normalised).
* ``squad_exact_match``, ``token_f1``: SQuAD's normalised exact match and token F1
  (`evals.golden.squad`: punctuation and articles ignored, so ``"Paris."`` matches ``"Paris"``).
* ``json_valid``: share of predictions that parse as JSON (a Markdown code fence around
  the JSON is accepted).
* ``json_fields``: field-level precision / recall / F1 of structured outputs (micro over
  every ``path = value`` pair; nested objects give dotted paths, lists of scalars are
  compared as multisets), plus per-field F1.
* ``classification``: accuracy and macro-F1 of labels (normalised text).
* a plug-in ``module:function`` metric, called once per example as
  ``function(prediction, reference, example) -> float | bool | dict[str, float]`` and
  averaged over the examples.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evals.errors import MetricError
from evals.golden.squad import squad_exact_match_metric, token_f1_metric

MetricFn = Callable[
    [Sequence[str | None], Sequence[str | None], Sequence[Mapping[str, Any]]], dict[str, float]
]

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```\s*$", re.S)
_WS = re.compile(r"\s+")


def normalize_text(text: str | None) -> str:
    """Collapse whitespace and case-fold, for comparisons that ignore formatting."""
    return _WS.sub(" ", (text or "").strip()).casefold()


def exact_match(prediction: str | None, reference: str | None, *, normalize: bool = True) -> bool:
    """Whether a prediction equals its reference."""
    if prediction is None or reference is None:
        return False
    if normalize:
        return normalize_text(prediction) == normalize_text(reference)
    return prediction == reference


def parse_json(text: str | None) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` (optionally inside a code fence) is JSON, else ``(False, None)``."""
    if text is None:
        return (False, None)
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    try:
        return (True, json.loads(body))
    except (json.JSONDecodeError, TypeError, RecursionError):
        # RecursionError: a model looping on "[" or '{"a":' nests past Python's limit; not JSON, not a crash
        return (False, None)


def json_valid(text: str | None) -> bool:
    """Whether ``text`` parses as JSON."""
    return parse_json(text)[0]


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``path = value`` pairs: ``a.b`` in objects, ``a[0].b`` in lists of objects, ``a[]`` for scalars."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(obj, list):
        if all(not isinstance(v, dict | list) for v in obj):
            out.extend((f"{prefix}[]", _norm_value(v)) for v in obj)
        else:
            for i, value in enumerate(obj):
                out.extend(flatten(value, f"{prefix}[{i}]"))
    else:
        out.append((prefix or "$", _norm_value(obj)))
    return out


def _norm_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return normalize_text(value)
    return json.dumps(value, sort_keys=True)


@dataclass
class FieldCounts:
    """True positives, false positives and false negatives of ``path = value`` pairs."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: FieldCounts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def scores(self) -> dict[str, float]:
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}


def field_counts(prediction: Any, reference: Any) -> dict[str, FieldCounts]:
    """Per-path counts of one structured prediction against its reference."""
    pred = Counter(flatten(prediction)) if prediction is not None else Counter()
    ref = Counter(flatten(reference)) if reference is not None else Counter()
    out: dict[str, FieldCounts] = {}
    for pair in pred.keys() | ref.keys():
        c = out.setdefault(pair[0], FieldCounts())
        both = min(pred[pair], ref[pair])
        c.tp += both
        c.fp += pred[pair] - both
        c.fn += ref[pair] - both
    return out


def json_fields(
    predictions: Sequence[str | None],
    references: Sequence[str | None],
    _examples: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    """Micro precision / recall / F1 over ``path = value`` pairs, and per-field F1 (``f1.<path>``)."""
    total = FieldCounts()
    per_field: dict[str, FieldCounts] = {}
    for pred_text, ref_text in zip(predictions, references, strict=True):
        ok_ref, ref = parse_json(ref_text)
        if not ok_ref:
            continue
        ok_pred, pred = parse_json(pred_text)
        for path, c in field_counts(pred if ok_pred else None, ref).items():
            total.add(c)
            per_field.setdefault(path, FieldCounts()).add(c)
    out = total.scores()
    for path in sorted(per_field):
        out[f"f1.{path}"] = per_field[path].scores()["f1"]
    return out


def accuracy(predicted: Sequence[str], actual: Sequence[str]) -> float:
    """Share of labels predicted right."""
    if not actual:
        return 0.0
    return sum(p == a for p, a in zip(predicted, actual, strict=True)) / len(actual)


def macro_f1(predicted: Sequence[str], actual: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over every label seen in either sequence."""
    labels = set(predicted) | set(actual)
    if not labels:
        return 0.0
    total = 0.0
    for label in labels:
        tp = sum(p == label and a == label for p, a in zip(predicted, actual, strict=True))
        fp = sum(p == label and a != label for p, a in zip(predicted, actual, strict=True))
        fn = sum(p != label and a == label for p, a in zip(predicted, actual, strict=True))
        total += 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return total / len(labels)


def _label(text: str | None) -> str:
    return normalize_text(text).rstrip(".!")


def classification(
    predictions: Sequence[str | None],
    references: Sequence[str | None],
    _examples: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    """Accuracy and macro-F1 of normalised labels (examples without a reference are skipped)."""
    pairs = [(_label(p), _label(r)) for p, r in zip(predictions, references, strict=True) if r is not None]
    pred = [p for p, _ in pairs]
    true = [r for _, r in pairs]
    return {"accuracy": accuracy(pred, true), "macro_f1": macro_f1(pred, true)}


def _exact_match(
    predictions: Sequence[str | None],
    references: Sequence[str | None],
    _examples: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    scored = [exact_match(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
    return {"exact_match": sum(scored) / len(scored) if scored else 0.0}


def _json_valid(
    predictions: Sequence[str | None],
    _references: Sequence[str | None],
    _examples: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    return {"json_valid": sum(json_valid(p) for p in predictions) / len(predictions) if predictions else 0.0}


METRICS: dict[str, MetricFn] = {
    "exact_match": _exact_match,
    "json_valid": _json_valid,
    "json_fields": json_fields,
    "classification": classification,
    "squad_exact_match": squad_exact_match_metric,
    "token_f1": token_f1_metric,
}
"""Built-in metrics by name."""


def load_metric(spec: str) -> MetricFn:
    """A built-in metric by name, or a user metric ``package.module:function`` (called per example)."""
    if spec in METRICS:
        return METRICS[spec]
    if ":" not in spec:
        raise MetricError(f"unknown metric {spec!r}: use one of {', '.join(METRICS)} or module:function")
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise MetricError(f"cannot load metric {spec}: {exc}") from exc
    if not callable(fn):
        raise MetricError(f"metric {spec} is not callable")
    name = attr

    def per_example(
        predictions: Sequence[str | None],
        references: Sequence[str | None],
        examples: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, float]:
        sums: dict[str, float] = {}
        exs = list(examples) or [{} for _ in predictions]
        for pred, ref, ex in zip(predictions, references, exs, strict=True):
            value = fn(pred, ref, ex)
            items = value.items() if isinstance(value, Mapping) else [(name, value)]
            for key, v in items:
                if not isinstance(v, int | float):
                    raise MetricError(
                        f"metric {spec} returned {type(v).__name__} for {key!r}, expected a number"
                    )
                sums[key] = sums.get(key, 0.0) + float(v)
        n = len(predictions)
        return {k: v / n for k, v in sums.items()} if n else {}

    return per_example


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[str | None],
    references: Sequence[str | None],
    examples: Sequence[Mapping[str, Any]] = (),
) -> dict[str, dict[str, float]]:
    """Run each named metric; ``{metric: {score_name: value}}``."""
    if len(predictions) != len(references):
        raise MetricError(f"{len(predictions)} predictions for {len(references)} references")
    return {name: load_metric(name)(predictions, references, examples) for name in names}
