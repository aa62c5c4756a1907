"""The jury's data and its aggregation: judgements of one item become the item's verdict.

How an item's verdict is reached (`item_verdict`):

1. **Each judge's vote.** A judge asked in one order votes its answer: ``candidate``,
   ``baseline`` or ``tie``. A judge asked in both orders votes that outcome when its two
   answers agree (a consistent ``tie`` is a vote for a tie); when they differ (it followed the
   position, not the answers) it **abstains**: its vote is ``abstain`` and counts for nothing.
   A judge whose calls all failed casts no vote.
2. **The verdict.** Among the votes cast (abstentions left out), the option with strictly more
   votes than any other wins; equal top counts are a ``tie``. When every judge abstained the
   item is a ``tie`` with ``abstained`` set (no judge could tell); when no judge answered at
   all it is an ``error``.

So position-biased jurors cannot out-vote an honest one: with two judges that always pick
the first (or the second) answer and one that reads them, the biased ones abstain on every item
asked in both orders and the honest juror's verdict stands. Asked in one order only, a biased
judge cannot be told from an honest one, which is why ``both_orders`` matters for juries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["candidate", "baseline", "tie", "error"]
Order = Literal["candidate_first", "baseline_first"]
Vote = Literal["candidate", "baseline", "tie", "abstain"]

ABSTAIN = "abstain"


@dataclass(frozen=True)
class Pair:
    """One input answered by both variants.

    ``*_model`` are the model ids that answered; ``*_upstream`` the gateway upstream names,
    when known (what the family guard looks up first).
    """

    item_id: str
    prompt: str
    baseline: str
    candidate: str
    baseline_model: str | None = None
    candidate_model: str | None = None
    call_id: str | None = None
    candidate_call_id: str | None = None
    baseline_upstream: str | None = None
    candidate_upstream: str | None = None


@dataclass
class Judgement:
    """One judge's answer for one item in one order."""

    item_id: str
    judge: str
    order: Order
    outcome: Outcome
    winner_position: str | None = None
    reason: str = ""
    criteria: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    error: str | None = None


@dataclass
class ItemVerdict:
    """The jury's verdict on one item."""

    item_id: str
    outcome: Outcome
    call_id: str | None = None
    candidate_call_id: str | None = None
    identical: bool = False
    position_consistent: bool | None = None
    votes: dict[str, str] = field(default_factory=dict)
    """Per judge: ``candidate``, ``baseline``, ``tie`` or ``abstain`` (inconsistent across orders)."""
    reasons: dict[str, str] = field(default_factory=dict)
    consistency: dict[str, bool] = field(default_factory=dict)
    """Per judge asked in both orders: whether its two verdicts agreed."""
    abstained: bool = False
    """Every judge that answered abstained: the item is a tie nobody could call."""


def item_verdict(pair: Pair, judgements: Sequence[Judgement], judges: Sequence[str]) -> ItemVerdict:
    """The verdict of ``judges`` on ``pair`` from their (error-free) ``judgements`` (see the module doc)."""
    item = ItemVerdict(pair.item_id, "tie", call_id=pair.call_id, candidate_call_id=pair.candidate_call_id)
    for judge in judges:
        mine = [j for j in judgements if j.judge == judge and j.error is None]
        if not mine:
            continue
        outcomes = {j.outcome for j in mine}
        if len(mine) > 1:
            item.consistency[judge] = len(outcomes) == 1
        item.votes[judge] = mine[0].outcome if len(outcomes) == 1 else ABSTAIN
        item.reasons[judge] = " | ".join(f"{j.order}: {j.reason}" for j in mine)
    if item.consistency:
        item.position_consistent = all(item.consistency.values())
    if not item.votes:
        item.outcome = "error"
        return item
    item.outcome = tally([v for v in item.votes.values()])
    item.abstained = all(v == ABSTAIN for v in item.votes.values())
    return item


def tally(votes: Sequence[str]) -> Outcome:
    """The option with strictly more votes than any other, abstentions left out; else ``tie``."""
    counts = Counter(v for v in votes if v != ABSTAIN).most_common()
    if not counts:
        return "tie"
    top, n = counts[0]
    if len(counts) > 1 and counts[1][1] == n:
        return "tie"
    return top  # type: ignore[return-value]
