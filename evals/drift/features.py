"""Features of a text (language, years, numbers) and the two-sample tests drift runs on them."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from evals.drift.report import Check

_YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")
_WORD = re.compile(r"[^\W\d_]+", re.U)


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
