"""Pairwise LLM-as-judge: is the candidate's answer better than the baseline's?

One run judges a list of `Pair`s (the same input answered by the baseline and by the
candidate) with one judge model or a jury of several:

* **Order.** Each judge sees the two answers as "A" and "B". Which variant is "A" is drawn
  per item from ``random.Random(f"{seed}:{item_id}")``, so a judge that prefers a position
  cannot favour a variant, and a rerun with the same seed asks the same questions. With
  ``both_orders`` every item is asked in both orders; a judge whose two verdicts differ
  abstains on that item, which counts as position-inconsistent.
* **Identical answers** (equal after whitespace normalisation) are a tie without a call.
* **Jury.** Each judge votes candidate / baseline / tie per item, or abstains; the item's
  verdict is the option with strictly more votes than any other, abstentions left out, else a
  tie (`evals.judge.jury`, which documents the aggregation).
* **Family guard.** A judge of the same model family as either contestant prefers its
  own family's style (self-preference), so it is refused (`FamilyGuardError`) unless
  ``allow_same_family`` is set; the override is then written into the report's flags, and the
  judge's own-family preference is measured against the other judges when the jury allows
  (`evals.judge.families`). Families come from configuration (upstream ``family`` settings, the
  registry's lineage, overrides), never from model names; unknown ones are reported.
* **Cost.** Estimated before the run from a token estimate (characters / 4) and a price
  table, reported after from the usage the judges returned; cached calls cost nothing.
* **Cache.** Every judge answer is kept in a `ResponseCache` keyed on
  ``(judge, prompt messages, order)``, so a rerun of the same items costs nothing.

Judges are called over HTTP on an OpenAI-compatible ``/chat/completions`` endpoint,
normally the gateway's own (which routes judge model names to their upstreams). The client
and prices live in `evals.judge._client`, the prompt and verdict parser in
`evals.judge._prompt`; their names are re-exported here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from evals.errors import JudgeError, SourceError
from evals.judge._client import (
    DEFAULT_PRICES,
    DEFAULT_URL,
    ChatClient,
    Completion,
    CostEstimate,
    PriceTable,
    ResponseCache,
    estimate_tokens,
)
from evals.judge._prompt import (
    DEFAULT_RUBRIC,
    SYSTEM_PROMPT,
    Criteria,
    Criterion,
    answer_text,
    build_messages,
    parse_verdict,
    render_prompt,
)
from evals.judge.families import check_families, resolve_families, self_preference
from evals.judge.jury import ABSTAIN, ItemVerdict, Judgement, Order, Outcome, Pair, item_verdict
from evals.online.outcomes import wilson_interval
from gateway.store import LogStore, queries
from gateway.store.ids import new_id

__all__ = [
    "DEFAULT_PRICES",
    "DEFAULT_RUBRIC",
    "DEFAULT_URL",
    "SYSTEM_PROMPT",
    "ChatClient",
    "Completion",
    "CostEstimate",
    "Criteria",
    "Criterion",
    "ItemVerdict",
    "JudgeOptions",
    "JudgeReport",
    "Judgement",
    "Order",
    "Outcome",
    "Pair",
    "PriceTable",
    "ResponseCache",
    "ajudge",
    "answer_text",
    "build_messages",
    "estimate_tokens",
    "judge",
    "parse_verdict",
    "render_prompt",
    "report_rows",
    "resolve_families",
    "shadow_pairs",
]

_WS = re.compile(r"\s+")
_EXPECTED_OUTPUT_TOKENS = 120


# -- items, verdicts, reports --------------------------------------------------------------
@dataclass
class JudgeOptions:
    """How to judge: who, in which orders, against what, at what concurrency."""

    judges: tuple[str, ...]
    both_orders: bool = False
    seed: int = 0
    allow_same_family: bool = False
    families: Mapping[str, str] = field(default_factory=dict)
    """Model name -> family (`evals.judge.families.resolve_families`); names it lacks have no family."""
    criteria: Criteria = field(default_factory=Criteria)
    prices: PriceTable = field(default_factory=PriceTable)
    max_tokens: int = 400
    temperature: float = 0.0


@dataclass
class JudgeReport:
    """Everything a judge run produced; `summary` is what the CLI prints and stores."""

    run_id: str
    judges: tuple[str, ...]
    both_orders: bool
    seed: int
    items: list[ItemVerdict]
    judgements: list[Judgement]
    estimate: CostEstimate
    flags: list[str] = field(default_factory=list)
    families: dict[str, str | None] = field(default_factory=dict)
    self_preference: dict[str, dict[str, Any]] = field(default_factory=dict)
    route: str | None = None
    source: str | None = None
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    def summary(self) -> dict[str, Any]:
        decided = [i for i in self.items if i.outcome != "error"]
        counts = Counter(i.outcome for i in decided)
        n = len(decided)
        wins, ties, losses = counts["candidate"], counts["tie"], counts["baseline"]
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "route": self.route,
            "source": self.source,
            "created_at": self.created_at,
            "judges": list(self.judges),
            "both_orders": self.both_orders,
            "seed": self.seed,
            "n_items": len(self.items),
            "n_judged": n,
            "errors": len(self.items) - n,
            "identical": sum(i.identical for i in self.items),
        }
        for name, plural, k in (("win", "wins", wins), ("tie", "ties", ties), ("loss", "losses", losses)):
            out[plural] = k
            out[f"{name}_rate"] = k / n if n else 0.0
            out[f"{name}_ci"] = list(wilson_interval(k, n))
        decisive = wins + losses
        out["win_rate_decisive"] = wins / decisive if decisive else None
        out["win_rate_decisive_ci"] = list(wilson_interval(wins, decisive))
        out["candidate_wins"] = decisive > 0 and wilson_interval(wins, decisive)[0] > 0.5
        out["position_consistency"] = _consistency(self.items) if self.both_orders else None
        out["abstained_items"] = sum(i.abstained for i in self.items)
        out["per_judge"] = {j: self._judge_summary(j) for j in self.judges}
        if len(self.judges) > 1 and decided:
            cast = [[v for v in i.votes.values() if v != ABSTAIN] for i in decided if not i.identical]
            voted = [c for c in cast if len(c) > 1]
            agree = [c for c in voted if len(set(c)) == 1]
            out["jury_agreement"] = len(agree) / len(voted) if voted else None
        out["criteria"] = self._criteria_summary()
        calls = [j for j in self.judgements if j.error is None]
        costs = [j.cost_usd for j in calls if not j.cached]
        out["cost"] = {
            "estimated_usd": self.estimate.usd,
            "estimated_max_usd": self.estimate.max_usd,
            "actual_usd": sum(c for c in costs if c is not None),
            "calls": len([j for j in calls if not j.cached]),
            "cached_calls": len([j for j in calls if j.cached]),
            "input_tokens": sum(j.input_tokens for j in calls if not j.cached),
            "output_tokens": sum(j.output_tokens for j in calls if not j.cached),
            "unpriced": sorted({j.judge for j in calls if j.cost_usd is None and not j.cached}),
        }
        out["families"] = dict(self.families)
        out["unknown_families"] = sorted(m for m, f in self.families.items() if f is None)
        out["self_preference"] = dict(self.self_preference)
        out["flags"] = list(self.flags)
        return out

    def _judge_summary(self, judge: str) -> dict[str, Any]:
        votes = Counter(i.votes.get(judge) for i in self.items if judge in i.votes)
        errors = sum(1 for j in self.judgements if j.judge == judge and j.error)
        return {
            "wins": votes["candidate"],
            "ties": votes["tie"],
            "losses": votes["baseline"],
            "abstentions": votes[ABSTAIN],
            "errors": errors,
            "position_consistency": _consistency(self.items, judge) if self.both_orders else None,
        }

    def _criteria_summary(self) -> dict[str, dict[str, float]]:
        tally: dict[str, dict[str, list[bool]]] = {}
        for j in self.judgements:
            if j.error or not j.criteria:
                continue
            a, b = ("candidate", "baseline") if j.order == "candidate_first" else ("baseline", "candidate")
            for name, res in j.criteria.items():
                if isinstance(res, Mapping):
                    t = tally.setdefault(str(name), {"baseline": [], "candidate": []})
                    for pos, variant in (("A", a), ("B", b)):
                        if isinstance(res.get(pos), bool):
                            t[variant].append(res[pos])
        return {
            name: {v: sum(xs) / len(xs) for v, xs in t.items() if xs} for name, t in sorted(tally.items())
        }


def _consistency(items: Sequence[ItemVerdict], judge: str | None = None) -> dict[str, Any]:
    flags: list[bool] = []
    for item in items:
        for j, ok in item.consistency.items():
            if judge is None or j == judge:
                flags.append(ok)
    k = sum(flags)
    n = len(flags)
    return {
        "rate": k / n if n else None,
        "consistent": k,
        "inconsistent": n - k,
        "n": n,
        "ci": list(wilson_interval(k, n)),
    }


# -- the run -------------------------------------------------------------------------------
def first_order(seed: int, item_id: str) -> Order:
    """The order an item is asked in first: a seeded coin per item."""
    return "candidate_first" if random.Random(f"{seed}:{item_id}").random() < 0.5 else "baseline_first"


def _identical(a: str, b: str) -> bool:
    return _WS.sub(" ", a.strip()) == _WS.sub(" ", b.strip())


@dataclass(frozen=True)
class _Call:
    item: Pair
    judge: str
    order: Order
    messages: list[dict[str, str]]


def plan_calls(pairs: Sequence[Pair], options: JudgeOptions) -> list[_Call]:
    """Every judge call a run needs (identical answers need none)."""
    calls: list[_Call] = []
    for pair in pairs:
        if _identical(pair.baseline, pair.candidate):
            continue
        first = first_order(options.seed, pair.item_id)
        orders: list[Order] = [first]
        if options.both_orders:
            orders.append("baseline_first" if first == "candidate_first" else "candidate_first")
        for order in orders:
            a, b = (
                (pair.candidate, pair.baseline)
                if order == "candidate_first"
                else (pair.baseline, pair.candidate)
            )
            msgs = build_messages(pair.prompt, a, b, options.criteria)
            calls.extend(_Call(pair, judge, order, msgs) for judge in options.judges)
    return calls


def estimate_cost(calls: Sequence[_Call], client: ChatClient, options: JudgeOptions) -> CostEstimate:
    """Tokens and USD the uncached calls of a plan should cost."""
    est = CostEstimate()
    unpriced = set()
    for call in calls:
        if client.cache_key(call.judge, call.messages, call.order, _params(options)) in client.cache:
            est.cached_calls += 1
            continue
        est.calls += 1
        tokens_in = estimate_tokens(call.messages)
        est.input_tokens += tokens_in
        est.output_tokens += _EXPECTED_OUTPUT_TOKENS
        cost = options.prices.cost(call.judge, tokens_in, _EXPECTED_OUTPUT_TOKENS)
        top = options.prices.cost(call.judge, tokens_in, options.max_tokens)
        if cost is None or top is None:
            unpriced.add(call.judge)
        else:
            est.usd += cost
            est.max_usd += top
    est.unpriced = sorted(unpriced)
    return est


def _params(options: JudgeOptions) -> dict[str, Any]:
    return {"temperature": options.temperature, "max_tokens": options.max_tokens}


async def _ask(call: _Call, client: ChatClient, options: JudgeOptions) -> Judgement:
    j = Judgement(item_id=call.item.item_id, judge=call.judge, order=call.order, outcome="error")
    try:
        comp = await client.complete(call.judge, call.messages, tag=call.order, **_params(options))
        winner, reason, crit = parse_verdict(comp.content)
    except JudgeError as exc:
        j.error = str(exc)
        return j
    j.winner_position, j.reason, j.criteria, j.cached = winner, reason, crit, comp.cached
    j.input_tokens, j.output_tokens = comp.input_tokens, comp.output_tokens
    j.cost_usd = (
        0.0 if comp.cached else options.prices.cost(call.judge, comp.input_tokens, comp.output_tokens)
    )
    if winner == "tie":
        j.outcome = "tie"
    else:
        first_is_candidate = call.order == "candidate_first"
        j.outcome = "candidate" if (winner == "A") == first_is_candidate else "baseline"
    return j


async def ajudge(
    pairs: Sequence[Pair],
    options: JudgeOptions,
    client: ChatClient,
    *,
    on_progress: Callable[[int], None] | None = None,
    on_estimate: Callable[[CostEstimate], None] | None = None,
    route: str | None = None,
    source: str | None = None,
) -> JudgeReport:
    """Judge ``pairs``; ``on_estimate`` sees the cost estimate before any call is made (raise to stop)."""
    if not options.judges:
        raise JudgeError("no judge models given")
    if not pairs:
        raise SourceError("nothing to judge: no pairs")
    family_check = check_families(
        pairs, options.judges, options.families, allow_same_family=options.allow_same_family
    )
    calls = plan_calls(pairs, options)
    estimate = estimate_cost(calls, client, options)
    if on_estimate is not None:
        on_estimate(estimate)

    async def one(call: _Call) -> Judgement:
        j = await _ask(call, client, options)
        if on_progress is not None:
            on_progress(1)
        return j

    async with client:
        judgements = list(await asyncio.gather(*(one(c) for c in calls)))
    for judge in options.judges:
        mine = [j for j in judgements if j.judge == judge]
        if mine and all(j.error for j in mine):
            raise JudgeError(f"every call to judge {judge} failed: {mine[0].error}", judge=judge)
    by_item: dict[str, list[Judgement]] = {}
    for j in judgements:
        by_item.setdefault(j.item_id, []).append(j)
    items = []
    for pair in pairs:
        if _identical(pair.baseline, pair.candidate):
            items.append(
                ItemVerdict(pair.item_id, "tie", pair.call_id, pair.candidate_call_id, identical=True)
            )
        else:
            items.append(item_verdict(pair, by_item.get(pair.item_id, []), options.judges))
    return JudgeReport(
        run_id=new_id("eval"),
        judges=tuple(options.judges),
        both_orders=options.both_orders,
        seed=options.seed,
        items=items,
        judgements=judgements,
        estimate=estimate,
        flags=family_check.flags,
        families=family_check.families,
        self_preference=self_preference(pairs, items, options.judges, options.families),
        route=route,
        source=source,
    )


def judge(
    pairs: Sequence[Pair],
    options: JudgeOptions,
    client: ChatClient,
    **kwargs: Any,
) -> JudgeReport:
    """Synchronous `ajudge`."""
    return asyncio.run(ajudge(pairs, options, client, **kwargs))


# -- shadow pairs from the log -------------------------------------------------------------
def shadow_pairs(
    store: LogStore,
    route: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 500,
) -> list[Pair]:
    """Served baseline calls of ``route`` joined with their shadow candidate calls."""
    pairs = []
    for row in queries.shadow_pairs(store, route, since=since, until=until, limit=limit):
        try:
            request = json.loads(row["request"] or "{}")
        except json.JSONDecodeError:
            request = {}
        pairs.append(
            Pair(
                item_id=row["call_id"],
                prompt=render_prompt(request),
                baseline=answer_text(row["baseline_text"], row["baseline_response"]),
                candidate=answer_text(row["candidate_text"], row["candidate_response"]),
                baseline_model=row["baseline_model"],
                candidate_model=row["candidate_model"],
                call_id=row["call_id"],
                candidate_call_id=row["candidate_call_id"],
                baseline_upstream=row["baseline_upstream"],
                candidate_upstream=row["candidate_upstream"],
            )
        )
    return pairs


def report_rows(report: JudgeReport) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of the per-item verdicts and of the per-call judgements, ready for Parquet."""
    items = []
    for i in report.items:
        row = asdict(i)
        row["votes"] = json.dumps(row["votes"])
        row["reasons"] = json.dumps(row["reasons"])
        row["consistency"] = json.dumps(row["consistency"])
        items.append({"run_id": report.run_id, "route": report.route, **row})
    calls = []
    for j in report.judgements:
        row = asdict(j)
        row["criteria"] = json.dumps(row["criteria"])
        calls.append({"run_id": report.run_id, "route": report.route, **row})
    return items, calls
