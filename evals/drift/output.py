"""Output-side drift: what each variant writes, served and shadow alike.

Input drift says the traffic moved; it does not say whether a model followed. This module
looks at the answers. For every call it reads the input (the user's text) and the output
(the assistant's text) and measures:

* **novel years and dates**: years (``19xx``/``20xx``) and ISO dates in the output that appear
  nowhere in the input, with the JSON field they were written in (``text`` for prose). A
  date-extraction model trained on 2023 that keeps writing 2023 when the transcripts say 2024
  shows up here, whatever the input drift checks say;
* **JSON shape**: the share of outputs that parse as JSON, and for each frequent field
  (``a.b``, ``items[]``) how often it is present and which type it holds;
* **empty** and **refusal** rates ("I can't", "I'm sorry", ...), and the **length**.

Each variant of the window (``baseline`` served, ``candidate`` in shadow or canary) is compared
with the **reference** (the dataset the candidate learned from, or the variant's own past
window) and with **the other variant on the same inputs** (shadow pairs: the candidate call's
``parent_call_id`` is the served baseline call; without pairs, the other variant's calls of
the window). Rates use Fisher's exact test, length the KS test, a field's types chi-square;
Bonferroni holds the false alarm rate of a whole report at ``alpha``. Where a rate sits at
exactly zero in the comparison sample, a check only fires once the current rate is also at
least ``min_rate``, so a single odd answer never raises an alarm.

Reports are stored next to the input ones, ``<log_dir>/drift/<route>/outputs/<id>.json``;
`evals.drift.guardrail` reads the latest for the controller and the retraining triggers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any

from evals.drift.samples import message_text
from evals.drift.text import describe
from gateway.store import LogStore
from gateway.store.ids import new_id

_YEAR = re.compile(r"(?<!\d)(19[5-9]\d|20\d\d)(?!\d)")
_DATE = re.compile(r"(?<!\d)((?:19|20)\d\d)-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(?!\d)")
_REFUSAL = re.compile(
    r"^\s*(?:i(?:'m| am)? (?:sorry|unable|not able)|i can(?:'|no)t|sorry,|as an ai|i must decline)"
    r"|\bi (?:can(?:'|no)t|won't) (?:help|assist|comply|provide)",
    re.I,
)
_PAIR = re.compile(r'"([\w.\-]{1,64})"\s*:\s*"?([^",{}\[\]]{0,80})')
VARIANTS = ("baseline", "candidate")


# -- per call ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """One call's input text and what a variant wrote for it."""

    input: str
    output: str
    variant: str = "reference"
    call_id: str | None = None
    pair_of: str | None = None
    """The served call whose input this one shares (a shadow call's parent)."""
    served: bool = True
    model: str | None = None


@dataclass(frozen=True)
class Features:
    novel_years: tuple[str, ...]
    novel_dates: tuple[str, ...]
    year_fields: tuple[str, ...]
    is_json: bool
    fields: Mapping[str, str]
    """Field path -> JSON type (``string``, ``number``, ``bool``, ``null``, ``object``, ``array``)."""
    empty: bool
    refusal: bool
    length: int


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _leaves(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        if not obj:
            yield prefix or "$", obj
        for key, value in obj.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list):
        path = f"{prefix}[]"
        if not obj:
            yield path, obj
        for value in obj[:50]:
            yield from _leaves(value, path)
    else:
        yield prefix or "$", obj


def _parse(text: str) -> Any:
    """The first JSON object or array in ``text`` (after a code fence or a lead-in; text after it is ignored)."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").split("\n", 1)[-1] if "\n" in body else ""
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(body[min(starts) :])
    except (json.JSONDecodeError, RecursionError):
        return None
    return value


def features(item: Output) -> Features:
    """What drift measures on one output, relative to its own input."""
    text = item.output or ""
    in_years = set(_YEAR.findall(item.input))
    in_dates = {m.group(0) for m in _DATE.finditer(item.input)}
    out_years = _YEAR.findall(text)
    novel = tuple(sorted(set(out_years) - in_years))
    dates = tuple(sorted({m.group(0) for m in _DATE.finditer(text)} - in_dates))
    obj = _parse(text)
    fields: dict[str, str] = {}
    year_fields: set[str] = set()
    if isinstance(obj, dict | list):
        for path, value in _leaves(obj):
            fields.setdefault(path, _type(value))
            if novel and isinstance(value, str | int) and set(_YEAR.findall(str(value))) & set(novel):
                year_fields.add(path)
    elif novel:  # broken JSON (common in small models): the key written before the year
        for m in _PAIR.finditer(text):
            if set(_YEAR.findall(m.group(2))) & set(novel):
                year_fields.add(m.group(1))
        year_fields = year_fields or {"text"}
    return Features(
        novel_years=novel,
        novel_dates=dates,
        year_fields=tuple(sorted(year_fields)),
        is_json=isinstance(obj, dict | list),
        fields=fields,
        empty=not text.strip(),
        refusal=bool(_REFUSAL.search(text[:300])),
        length=len(text),
    )


# -- loading -------------------------------------------------------------------------------
OUTPUTS_SQL = """
SELECT call_id, parent_call_id, variant, served, upstream, request, output_text
FROM calls
WHERE route = $route AND coalesce(status, 200) < 400 AND ts >= $since AND ts < $until
  AND coalesce(endpoint, 'chat.completions') = 'chat.completions'
  AND NOT list_contains(coalesce(tags, []::VARCHAR[]), 'fast-eval')
ORDER BY ts DESC, call_id
LIMIT $limit
"""


def input_text(request: str | None) -> str:
    """The user and tool text of a logged chat request (system prompts are config, not traffic)."""
    try:
        req = json.loads(request or "{}")
    except json.JSONDecodeError:
        return ""
    messages = req.get("messages") if isinstance(req, dict) else None
    parts = []
    for msg in messages or ():
        if isinstance(msg, Mapping) and msg.get("role") not in ("system", "developer", "assistant"):
            text = message_text(msg.get("content"))
            if text:
                parts.append(text)
    return "\n".join(parts)


def load_outputs(
    store: LogStore, route: str, since: dt.datetime, until: dt.datetime, *, limit: int = 4000
) -> list[Output]:
    """Every variant's answers on ``route`` in ``[since, until)`` (newest ``limit``)."""
    rows = store.sql(OUTPUTS_SQL, {"route": route, "since": since, "until": until, "limit": limit})
    return [
        Output(
            input=input_text(r["request"]),
            output=r["output_text"] or "",
            variant=str(r["variant"] or "baseline"),
            call_id=r["call_id"],
            pair_of=r["parent_call_id"] if not r["served"] else None,
            served=bool(r["served"]),
            model=r["upstream"],
        )
        for r in rows
    ]


def dataset_outputs(log_dir: str, name: str) -> list[Output]:
    """The training split of a dataset as outputs: each example's input and reference answer."""
    from evals.golden.sets import read_dataset

    rows = read_dataset(log_dir, name, split="train", fallback_all=True)
    out = []
    for e in rows:
        text = "\n".join(
            message_text(m.get("content"))
            for m in e.messages
            if isinstance(m, Mapping) and m.get("role") not in ("system", "developer", "assistant")
        )
        out.append(Output(input=text, output=e.reference or "", call_id=e.example_id))
    return out


# -- the report ----------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputDriftConfig:
    alpha: float = 0.05
    min_samples: int = 20
    """Fewest outputs of a variant (and of the comparison) for its checks to run."""
    min_rate: float = 0.2
    """A rate that is zero in the comparison must reach this share to count as drift."""
    max_fields: int = 12
    examples: int = 3


@dataclass
class OutputCheck:
    variant: str
    against: str
    """``reference`` or the other variant's name."""
    name: str
    test: str
    statistic: float
    p_value: float
    rate_current: float | None = None
    rate_against: float | None = None
    n_current: int = 0
    n_against: int = 0
    threshold: float = 0.0
    drifted: bool = False
    field: str | None = None
    details: dict[str, Any] = _field(default_factory=dict)
    examples: list[str] = _field(default_factory=list)


@dataclass
class OutputDriftReport:
    report_id: str
    route: str | None
    reference: str
    current: str
    alpha: float
    drifted: bool
    variants: dict[str, dict[str, Any]]
    """Per variant: calls, served/shadow, models, rates."""
    checks: list[OutputCheck]
    findings: list[dict[str, Any]]
    """The drifted checks in words: variant, against, field, years, rates."""
    skipped: dict[str, str] = _field(default_factory=dict)
    kind: str = "outputs"
    created_at: str = _field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fisher(k1: int, n1: int, k2: int, n2: int) -> float:
    from scipy import stats

    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="two-sided")[1])


def _rate_check(
    variant: str,
    against: str,
    name: str,
    cur: Sequence[bool],
    ref: Sequence[bool],
    config: OutputDriftConfig,
    *,
    examples: Sequence[str] = (),
    fld: str | None = None,
) -> OutputCheck:
    k1, n1, k2, n2 = sum(cur), len(cur), sum(ref), len(ref)
    r1, r2 = k1 / n1, k2 / n2
    check = OutputCheck(
        variant, against, name, "fisher", abs(r1 - r2), _fisher(k1, n1, k2, n2), r1, r2, n1, n2, field=fld
    )
    check.details["needs_rate"] = config.min_rate if min(r1, r2) == 0.0 else 0.0
    check.examples = [e for e, hit in zip(examples, cur, strict=False) if hit == (r1 > r2)][: config.examples]
    return check


def _compare(
    variant: str,
    against: str,
    cur: Sequence[tuple[Output, Features]],
    ref: Sequence[tuple[Output, Features]],
    config: OutputDriftConfig,
) -> list[OutputCheck]:
    from scipy import stats

    cf = [f for _, f in cur]
    rf = [f for _, f in ref]
    texts = [o.output[:160] for o, _ in cur]
    checks = []
    years = _rate_check(
        variant,
        against,
        "novel_years",
        [bool(f.novel_years) for f in cf],
        [bool(f.novel_years) for f in rf],
        config,
        examples=texts,
    )
    written = Counter(y for f in cf for y in f.novel_years)
    where = Counter(p for f in cf for p in f.year_fields)
    inputs = Counter(y for o, _ in cur for y in _YEAR.findall(o.input))
    years.details.update(
        years=dict(written.most_common(5)),
        fields=dict(where.most_common(5)),
        input_years=dict(inputs.most_common(5)),
        against_years=dict(Counter(y for f in rf for y in f.novel_years).most_common(5)),
    )
    years.field = where.most_common(1)[0][0] if where else None
    checks.append(years)
    checks.append(
        _rate_check(
            variant,
            against,
            "novel_dates",
            [bool(f.novel_dates) for f in cf],
            [bool(f.novel_dates) for f in rf],
            config,
            examples=texts,
        )
    )
    checks[-1].details["dates"] = dict(Counter(d for f in cf for d in f.novel_dates).most_common(5))
    for name in ("empty", "refusal", "is_json"):
        flag = [bool(getattr(f, name)) for f in cf]
        base = [bool(getattr(f, name)) for f in rf]
        if any(flag) or any(base):
            checks.append(_rate_check(variant, against, name, flag, base, config, examples=texts))
    with warnings.catch_warnings():  # "exact calculation unsuccessful": scipy falls back to asymp
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ks_2samp([f.length for f in cf], [f.length for f in rf])
    checks.append(
        OutputCheck(
            variant,
            against,
            "length",
            "ks",
            float(res.statistic),
            float(res.pvalue),
            n_current=len(cf),
            n_against=len(rf),
            details={
                "median_current": _median([f.length for f in cf]),
                "median_against": _median([f.length for f in rf]),
            },
        )
    )
    checks.extend(_field_checks(variant, against, cf, rf, config))
    return checks


def _median(xs: Sequence[int]) -> float:
    s = sorted(xs)
    return float(s[len(s) // 2]) if s else 0.0


def _field_checks(
    variant: str, against: str, cf: Sequence[Features], rf: Sequence[Features], config: OutputDriftConfig
) -> list[OutputCheck]:
    from scipy import stats

    cj = [f for f in cf if f.is_json]
    rj = [f for f in rf if f.is_json]
    if len(cj) < config.min_samples or len(rj) < config.min_samples:
        return []
    freq: Counter[str] = Counter()
    for f in (*cj, *rj):
        freq.update(f.fields.keys())
    total = len(cj) + len(rj)
    paths = [p for p, n in freq.most_common() if n >= 0.1 * total][: config.max_fields]
    checks = []
    for path in paths:
        present = _rate_check(
            variant,
            against,
            "field_present",
            [path in f.fields for f in cj],
            [path in f.fields for f in rj],
            config,
            fld=path,
        )
        checks.append(present)
        ct = Counter(f.fields[path] for f in cj if path in f.fields)
        rt = Counter(f.fields[path] for f in rj if path in f.fields)
        kinds = sorted(ct.keys() | rt.keys())
        if len(kinds) < 2 or not ct or not rt:
            continue
        table = [[ct[k] for k in kinds], [rt[k] for k in kinds]]
        res = stats.chi2_contingency(table)
        checks.append(
            OutputCheck(
                variant,
                against,
                "field_type",
                "chi2",
                float(res.statistic),
                float(res.pvalue),
                n_current=sum(ct.values()),
                n_against=sum(rt.values()),
                field=path,
                details={"types_current": dict(ct), "types_against": dict(rt)},
            )
        )
    return checks


def check_outputs(
    current: Sequence[Output],
    reference: Sequence[Output] = (),
    config: OutputDriftConfig | None = None,
    *,
    route: str | None = None,
    reference_label: str = "reference",
    current_label: str = "current",
) -> OutputDriftReport:
    """Compare each variant of ``current`` with ``reference`` and with the other variant."""
    config = config or OutputDriftConfig()
    feats = [(o, features(o)) for o in current]
    ref = [(o, features(o)) for o in reference]
    by_variant: dict[str, list[tuple[Output, Features]]] = {}
    for o, f in feats:
        by_variant.setdefault(o.variant, []).append((o, f))
    served_by_id = {o.call_id: (o, f) for o, f in feats if o.served and o.call_id}
    checks: list[OutputCheck] = []
    skipped: dict[str, str] = {}
    variants: dict[str, dict[str, Any]] = {}
    for variant in sorted(by_variant, key=_rank):
        items = by_variant[variant]
        fs = [f for _, f in items]
        variants[variant] = {
            "calls": len(items),
            "served": sum(o.served for o, _ in items),
            "shadow": sum(not o.served for o, _ in items),
            "models": dict(Counter(o.model or "?" for o, _ in items).most_common(3)),
            "novel_year_rate": round(sum(bool(f.novel_years) for f in fs) / len(fs), 3),
            "empty_rate": round(sum(f.empty for f in fs) / len(fs), 3),
            "refusal_rate": round(sum(f.refusal for f in fs) / len(fs), 3),
            "json_rate": round(sum(f.is_json for f in fs) / len(fs), 3),
        }
        if len(items) < config.min_samples:
            skipped[variant] = f"{len(items)} outputs (need {config.min_samples})"
            continue
        if len(ref) >= config.min_samples:
            checks.extend(_compare(variant, "reference", items, ref, config))
        elif variant == VARIANTS[0]:
            skipped[f"{variant}/reference"] = f"{len(ref)} reference outputs (need {config.min_samples})"
        for other in by_variant:
            if other == variant or _rank(other) >= _rank(variant):
                continue  # one comparison per pair: the candidate against the baseline
            # the other variant on the same inputs: shadow pairs when there are enough
            mine, theirs = _paired(items, by_variant[other], served_by_id)
            if len(mine) < config.min_samples:
                mine, theirs = items, by_variant[other]
            else:
                variants[variant].setdefault("paired_with", {})[other] = len(mine)
            if len(theirs) >= config.min_samples:
                checks.extend(_compare(variant, other, mine, theirs, config))
    threshold = config.alpha / max(len(checks), 1)
    for c in checks:
        c.threshold = threshold
        c.drifted = c.p_value <= threshold and (
            c.rate_current is None
            or abs(c.rate_current - (c.rate_against or 0.0)) >= c.details.get("needs_rate", 0.0)
        )
    findings = [describe(c) for c in checks if c.drifted]
    findings.sort(
        key=lambda f: (
            f["check"] != "novel_years",
            f["variant"] != "candidate",
            f["against"] != "reference",
            f["p_value"],
        )
    )
    return OutputDriftReport(
        report_id=new_id("odrift"),
        route=route,
        reference=reference_label,
        current=current_label,
        alpha=config.alpha,
        drifted=bool(findings),
        variants=variants,
        checks=checks,
        findings=findings,
        skipped=skipped,
    )


def _rank(variant: str) -> int:
    return VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)


def _paired(
    items: Sequence[tuple[Output, Features]],
    others: Sequence[tuple[Output, Features]],
    served_by_id: Mapping[str, tuple[Output, Features]],
) -> tuple[list[tuple[Output, Features]], list[tuple[Output, Features]]]:
    """``items`` and the other variant's answers to the same requests (shadow parent/child)."""
    other_ids = {o.call_id for o, _ in others}
    mine, theirs = [], []
    children = {o.pair_of: (o, f) for o, f in others if o.pair_of}
    for o, f in items:
        if o.pair_of and o.pair_of in other_ids:  # a shadow call and its served parent
            mine.append((o, f))
            theirs.append(served_by_id[o.pair_of])
        elif o.call_id is not None and o.call_id in children:  # a served call and its shadow child
            mine.append((o, f))
            theirs.append(children[o.call_id])
    return mine, theirs


# -- storage -------------------------------------------------------------------------------
def outputs_dir(log_dir: str, route: str | None) -> Path:
    return Path(log_dir) / "drift" / (route or "_") / "outputs"


def save_output_report(log_dir: str, report: OutputDriftReport) -> Path:
    """Write ``<log_dir>/drift/<route>/outputs/<report_id>.json`` (atomically); returns the path."""
    path = outputs_dir(log_dir, report.route) / f"{report.report_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_output_reports(log_dir: str, route: str) -> list[dict[str, Any]]:
    """Stored output reports of a route, oldest first."""
    out = []
    for p in sorted(outputs_dir(log_dir, route).glob("odrift_*.json")):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return out
