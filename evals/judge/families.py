"""Model families for the judges' self-preference guard, from configuration only, never from names.

A judge tends to prefer answers of its own model family, so a judge of a contestant's family
is refused (`check_families`, `FamilyGuardError`) unless ``allow_same_family`` is set. Where a
model's family comes from (`resolve_families`, later sources win):

1. the model registry's lineage (`trainer.registry.Registry.families`): a registered version,
   by its name and its served model id, has its own recorded ``family`` or inherits its base
   model's (a configured family, or that of the registered version it was trained from);
2. each gateway upstream's ``family`` setting (``upstreams.<name>.family``), by upstream name and
   by its model id; a route has its baseline's family; an upstream with no ``family`` whose model
   is a registered version gets that version's family;
3. explicit ``MODEL=FAMILY`` overrides (``--family``).

A name none of these knows has **no** family: ``support-ft-7`` is not guessed from its letters.
Such names are reported (`FamilyCheck.unknown`, and a flag in the report), because the guard
cannot check them; it does not pass them silently.

`self_preference` measures, when the data allows, how much more often a judge votes for the
contestant of its own family than the jury's judges of other families do on the same items.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evals.errors import FamilyGuardError
from evals.judge.jury import ABSTAIN, ItemVerdict, Pair


def resolve_families(
    *,
    registry: Mapping[str, str] | None = None,
    upstream_families: Mapping[str, str] | None = None,
    upstream_models: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """One ``model name -> family`` map from the sources above (see the module doc)."""
    out = dict(registry or {})
    out.update(upstream_families or {})
    for name, model in (upstream_models or {}).items():
        if name not in out and model in out:
            out[name] = out[model]
    out.update(overrides or {})
    return out


def family_of(families: Mapping[str, str], *names: str | None) -> str | None:
    """The family of the first of ``names`` that ``families`` knows, by exact name only."""
    for name in names:
        if name and name in families:
            return families[name]
    return None


@dataclass
class FamilyCheck:
    """What the guard found: each model's family (None: unknown), refusals, and the report's flags."""

    families: dict[str, str | None] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


def _contestants(pairs: Iterable[Pair]) -> dict[str, tuple[str | None, ...]]:
    """Contestant display name -> the names to look its family up by (upstream first)."""
    out: dict[str, tuple[str | None, ...]] = {}
    for p in pairs:
        for upstream, model in (
            (p.baseline_upstream, p.baseline_model),
            (p.candidate_upstream, p.candidate_model),
        ):
            if upstream or model:
                out.setdefault(str(upstream or model), (upstream, model))
    return out


def check_families(
    pairs: Sequence[Pair], judges: Sequence[str], families: Mapping[str, str], *, allow_same_family: bool
) -> FamilyCheck:
    """Apply the guard: `FamilyGuardError` for a judge of a contestant's family (unless allowed).

    Models of unknown family, and pairs that name no contestant model, are reported in the flags.
    """
    check = FamilyCheck()
    contestants = _contestants(pairs)
    for judge in judges:
        check.families[judge] = family_of(families, judge)
    for name, keys in contestants.items():
        check.families[name] = family_of(families, *keys)
    check.unknown = sorted(m for m, f in check.families.items() if f is None)
    if check.unknown:
        check.flags.append(
            "family unknown for "
            + ", ".join(check.unknown)
            + ": the self-preference guard cannot check them (set upstreams.<name>.family, record the "
            "base model's family in the registry, or pass --family MODEL=FAMILY)"
        )
    unnamed = sum(1 for p in pairs if not (p.baseline_model or p.baseline_upstream)) + sum(
        1 for p in pairs if not (p.candidate_model or p.candidate_upstream)
    )
    if unnamed:
        check.flags.append(
            f"{unnamed} contestant answer(s) name no model: the self-preference guard cannot check them"
        )
    for judge in judges:
        fam = check.families[judge]
        if fam is None:
            continue
        for name in sorted(contestants):
            if check.families[name] == fam:
                check.conflicts.append((judge, name, fam))
    if check.conflicts:
        desc = "; ".join(f"judge {j} and contestant {m} are both {f}" for j, m, f in check.conflicts)
        if not allow_same_family:
            raise FamilyGuardError(
                f"self-preference risk: {desc} (pick judges of another family, or pass --allow-same-family)",
                conflicts=check.conflicts,
            )
        check.flags.append(f"same-family judge allowed by override: {desc}")
    return check


def _score(vote: str, own: str) -> float | None:
    """1 for a vote for ``own`` variant, 0 for the other, 0.5 for a tie; None for an abstention."""
    if vote == ABSTAIN:
        return None
    return 0.5 if vote == "tie" else float(vote == own)


def self_preference(
    pairs: Sequence[Pair],
    items: Sequence[ItemVerdict],
    judges: Sequence[str],
    families: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """Per judge of a contestant's family: its own-family preference against other-family judges.

    For every item where exactly one variant is of the judge's family and the judge and at least
    one judge of another known family voted, ``d = s_judge - mean(s_others)`` with ``s`` 1 for a
    vote for the own-family variant, 0 for the other and 0.5 for a tie. Reports the mean of
    ``d`` (``preference``, > 0: the judge favours its family more than the others do), its
    standard error, and the two rates; ``measurable: false`` with the reason otherwise.
    """
    by_item = {p.item_id: p for p in pairs}
    out: dict[str, dict[str, Any]] = {}
    for judge in judges:
        fam = families.get(judge)
        if fam is None:
            continue
        others = [j for j in judges if j != judge and families.get(j) not in (None, fam)]
        diffs: list[float] = []
        own_scores: list[float] = []
        other_scores: list[float] = []
        relevant = 0
        for item in items:
            pair = by_item.get(item.item_id)
            if pair is None or item.identical:
                continue
            b = family_of(families, pair.baseline_upstream, pair.baseline_model)
            c = family_of(families, pair.candidate_upstream, pair.candidate_model)
            if (b == fam) == (c == fam):
                continue
            relevant += 1
            own = "baseline" if b == fam else "candidate"
            mine = _score(item.votes.get(judge, ABSTAIN), own)
            theirs = [s for s in (_score(item.votes.get(o, ABSTAIN), own) for o in others) if s is not None]
            if mine is None or not theirs:
                continue
            own_scores.append(mine)
            other_scores.append(sum(theirs) / len(theirs))
            diffs.append(mine - other_scores[-1])
        if not relevant:
            continue
        if not others:
            out[judge] = {"family": fam, "measurable": False, "why": "no judge of another known family"}
            continue
        if not diffs:
            out[judge] = {
                "family": fam,
                "measurable": False,
                "why": "no item both it and another family voted on",
            }
            continue
        n = len(diffs)
        mean = sum(diffs) / n
        var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else float("nan")
        out[judge] = {
            "family": fam,
            "measurable": True,
            "n": n,
            "own_family_rate": sum(own_scores) / n,
            "other_judges_rate": sum(other_scores) / n,
            "preference": mean,
            "se": math.sqrt(var / n) if n > 1 else None,
        }
    return out
