"""SQuAD's answer metrics: normalised exact match and token F1 (as the official v1.1 script).

``normalize_answer`` lower-cases, removes punctuation, the articles ``a``/``an``/``the`` and
extra white space, so ``"Paris."`` and ``"paris"`` match. ``token_f1`` is the F1 of the bags of
normalised tokens (shared tokens counted with multiplicity); two empty answers score 1, one
empty answer against a non-empty one scores 0. Examples without a reference are left out.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str | None) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD v1.1)."""
    s = (text or "").lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def squad_exact_match(prediction: str | None, reference: str | None) -> bool:
    """Whether the normalised prediction equals the normalised reference."""
    if prediction is None or reference is None:
        return False
    return normalize_answer(prediction) == normalize_answer(reference)


def token_f1(prediction: str | None, reference: str | None) -> float:
    """F1 of the normalised tokens of a prediction against its reference."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match_metric(
    predictions: Sequence[str | None],
    references: Sequence[str | None],
    _examples: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    scored = [squad_exact_match(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
    return {"squad_exact_match": sum(scored) / len(scored) if scored else 0.0}


def token_f1_metric(
    predictions: Sequence[str | None],
    references: Sequence[str | None],
    _examples: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    scored = [token_f1(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
    return {"token_f1": sum(scored) / len(scored) if scored else 0.0}
