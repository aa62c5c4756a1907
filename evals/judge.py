"""Pairwise LLM-as-judge: is the candidate's answer better than the baseline's?

One run judges a list of `Pair`s (the same input answered by the baseline and by the
candidate) with one judge model or a jury of several:

* **Order.** Each judge sees the two answers as "A" and "B". Which variant is "A" is drawn
  per item from ``random.Random(f"{seed}:{item_id}")``, so a judge that prefers a position
  cannot favour a variant, and a rerun with the same seed asks the same questions. With
  ``both_orders`` every item is asked in both orders; when the two verdicts differ the
  judge's vote is a tie and the item counts as position-inconsistent.
* **Identical answers** (equal after whitespace normalisation) are a tie without a call.
* **Jury.** Each judge votes candidate / baseline / tie per item; the item's verdict is
  the option with strictly more votes than any other, else a tie.
* **Family guard.** A judge of the same model family as either contestant prefers its
  own family's style (self-preference), so it is refused (`FamilyGuardError`) unless
  ``allow_same_family`` is set; the override is then written into the report's flags.
* **Cost.** Estimated before the run from a token estimate (characters / 4) and a price
  table, reported after from the usage the judges returned; cached calls cost nothing.
* **Cache.** Every judge answer is kept in a `ResponseCache` keyed on
  ``(judge, prompt messages, order)``, so a rerun of the same items costs nothing.

Judges are called over HTTP on an OpenAI-compatible ``/chat/completions`` endpoint,
normally the gateway's own (which routes judge model names to their upstreams).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from evals.errors import FamilyGuardError, JudgeError, SourceError
from evals.outcomes import wilson_interval
from gateway.store import LogStore
from gateway.store.ids import new_id

DEFAULT_URL = "http://127.0.0.1:8000/v1"
"""The local gateway, which routes judge model names to their upstreams."""

Outcome = Literal["candidate", "baseline", "tie", "error"]
Order = Literal["candidate_first", "baseline_first"]

_WS = re.compile(r"\s+")
_EXPECTED_OUTPUT_TOKENS = 120


# -- prices and cost -----------------------------------------------------------------------
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-1.5-flash": (0.075, 0.30),
}
"""Approximate USD per million (input, output) tokens; override or extend with a prices file."""


@dataclass(frozen=True)
class PriceTable:
    """USD per million input and output tokens, by model name (longest prefix wins)."""

    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        """Read ``{model: {input: USD/M, output: USD/M}}`` (YAML or JSON) over the defaults."""
        data = _read_mapping(path)
        prices = dict(DEFAULT_PRICES)
        for model, entry in data.items():
            if not isinstance(entry, Mapping):
                raise SourceError(f"{path}: price of {model} must be a mapping with input and output")
            prices[str(model)] = (float(entry.get("input", 0.0)), float(entry.get("output", 0.0)))
        return cls(prices)

    def lookup(self, model: str) -> tuple[float, float] | None:
        name = model.rsplit("/", 1)[-1]
        best = max(
            (k for k in self.prices if name.startswith(k) or model.startswith(k)), key=len, default=None
        )
        return self.prices[best] if best is not None else None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        price = self.lookup(model)
        if price is None:
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1e6


def estimate_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Rough prompt tokens: four characters a token, plus a few per message."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 4 * len(messages) + 3


@dataclass
class CostEstimate:
    """What a run should cost before it starts (uncached calls only)."""

    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    max_usd: float = 0.0
    unpriced: list[str] = field(default_factory=list)


# -- the HTTP client and its cache ---------------------------------------------------------
class ResponseCache:
    """Answers of judge and generation calls, one JSON line each, keyed on a hash of the question.

    Kept at ``<log_dir>/evals/cache/responses.jsonl``; append-only, so concurrent runs at
    worst ask the same question twice.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "key" in rec:
                    self._data[rec["key"]] = rec

    @classmethod
    def for_log_dir(cls, log_dir: str) -> ResponseCache:
        return cls(Path(log_dir) / "evals" / "cache" / "responses.jsonl")

    @staticmethod
    def key(model: str, messages: Sequence[Mapping[str, Any]], tag: str, params: Mapping[str, Any]) -> str:
        blob = json.dumps([model, list(messages), tag, dict(params)], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        rec = {"key": key, **record}
        self._data[key] = rec
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def __contains__(self, key: str) -> bool:
        return key in self._data


@dataclass
class Completion:
    """One chat completion's text and usage."""

    content: str
    input_tokens: int
    output_tokens: int
    cached: bool


class ChatClient:
    """OpenAI-compatible ``/chat/completions`` over httpx: bounded concurrency, retries, a cache."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 3,
        cache: ResponseCache | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.cache = cache or ResponseCache(None)
        self._http: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None

    def cache_key(
        self, model: str, messages: Sequence[Mapping[str, Any]], tag: str, params: Mapping[str, Any]
    ) -> str:
        return ResponseCache.key(model, messages, tag, params)

    async def __aenter__(self) -> ChatClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout)
        self._sem = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def complete(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, tag: str, **params: Any
    ) -> Completion:
        """Ask ``model``; answered from the cache when the same question was asked before."""
        key = self.cache_key(model, messages, tag, params)
        hit = self.cache.get(key)
        if hit is not None:
            return Completion(hit["content"], hit.get("input_tokens", 0), hit.get("output_tokens", 0), True)
        if self._http is None or self._sem is None:
            raise JudgeError("ChatClient used outside `async with`", judge=model)
        body = {"model": model, "messages": list(messages), **params}
        async with self._sem:
            data = await self._post(model, body)
        try:
            content = data["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise JudgeError(f"{model}: response has no choices[0].message", judge=model) from exc
        usage = data.get("usage") or {}
        in_tok = int(usage.get("prompt_tokens") or estimate_tokens(messages))
        out_tok = int(usage.get("completion_tokens") or len(content) // 4)
        self.cache.put(
            key,
            {
                "model": model,
                "tag": tag,
                "content": content,
                "input_tokens": in_tok,
                "output_tokens": out_tok,
            },
        )
        return Completion(content, in_tok, out_tok, False)

    async def _post(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        delay = 0.25
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = await self._http.post("/chat/completions", json=body)
            except httpx.TransportError as exc:
                if last:
                    raise JudgeError(f"{model}: cannot reach {self.url}: {exc!r}", judge=model) from exc
            else:
                if resp.status_code < 400:
                    try:
                        data: dict[str, Any] = resp.json()
                    except ValueError as exc:
                        raise JudgeError(f"{model}: response is not JSON", judge=model) from exc
                    return data
                if (resp.status_code not in (408, 409, 429) and resp.status_code < 500) or last:
                    raise JudgeError(
                        f"{model}: HTTP {resp.status_code}: {_error_message(resp)}",
                        judge=model,
                        status_code=resp.status_code,
                    )
                retry_after = resp.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), 10.0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise JudgeError(f"{model}: no answer", judge=model)  # pragma: no cover


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (ValueError, AttributeError):
        pass
    return resp.text[:200]


# -- family guard --------------------------------------------------------------------------
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("openai", ("gpt", "chatgpt", "davinci", "o1", "o3", "o4")),
    ("anthropic", ("claude",)),
    ("google", ("gemini", "gemma", "palm", "bison")),
    ("meta", ("llama",)),
    ("mistral", ("mistral", "mixtral", "ministral", "codestral", "pixtral", "magistral")),
    ("qwen", ("qwen", "qwq")),
    ("deepseek", ("deepseek",)),
    ("microsoft", ("phi",)),
    ("cohere", ("command", "aya")),
    ("xai", ("grok",)),
    ("amazon", ("nova", "titan")),
)
_PROVIDER_TOKENS = {
    "openai",
    "anthropic",
    "bedrock",
    "vertex",
    "vertex_ai",
    "azure",
    "ft",
    "models",
    "hf",
    "local",
}


def model_family(model: str, overrides: Mapping[str, str] | None = None) -> str:
    """The model family of a model name (``gpt-4o-mini`` -> ``openai``; a fine-tune keeps its base's family).

    Names the table does not know fall back to their first word; ``overrides`` maps exact
    model names to families.
    """
    if overrides and model in overrides:
        return overrides[model]
    tokens = [t for t in re.split(r"[/:._\-\s@]+", model.lower()) if t]
    for family, prefixes in _FAMILIES:
        for tok in tokens:
            if any(tok == p or (len(p) > 2 and tok.startswith(p)) for p in prefixes):
                return family
    words = [t for t in tokens if t not in _PROVIDER_TOKENS and t.isalpha()]
    return words[0] if words else model.lower()


def family_conflicts(
    judges: Sequence[str], contestants: Sequence[str], overrides: Mapping[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """``(judge, contestant, family)`` for each judge of the same family as a contestant."""
    out = []
    for judge in judges:
        fam = model_family(judge, overrides)
        for model in sorted(set(contestants)):
            if model_family(model, overrides) == fam:
                out.append((judge, model, fam))
    return out


# -- criteria and prompt -------------------------------------------------------------------
DEFAULT_RUBRIC = (
    "Judge which answer better serves the user's request: correct, complete, following every instruction "
    "and format the request asks for, without invented facts. Length is not a merit in itself."
)


@dataclass(frozen=True)
class Criterion:
    """A pass/fail check the judge applies to each answer."""

    name: str
    description: str


@dataclass(frozen=True)
class Criteria:
    """Task-specific judging instructions: a rubric and optional pass/fail criteria.

    File format (YAML or JSON)::

        rubric: Prefer the answer that extracts every invoice field correctly.
        criteria:
          - name: valid_json
            description: The answer is a single JSON object.
          - name: iso_dates
            description: Every date is written as YYYY-MM-DD.
    """

    rubric: str = DEFAULT_RUBRIC
    checks: tuple[Criterion, ...] = ()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Criteria:
        data = _read_mapping(path)
        checks = []
        for entry in data.get("criteria") or ():
            if isinstance(entry, str):
                checks.append(Criterion(re.sub(r"\W+", "_", entry.lower()).strip("_")[:40], entry))
            elif isinstance(entry, Mapping) and entry.get("name"):
                checks.append(Criterion(str(entry["name"]), str(entry.get("description") or entry["name"])))
            else:
                raise SourceError(f"{path}: each criterion needs a name (got {entry!r})")
        return cls(rubric=str(data.get("rubric") or DEFAULT_RUBRIC).strip(), checks=tuple(checks))


def _read_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a mapping at the top level")
    return data


SYSTEM_PROMPT = """You are an impartial judge comparing two answers to the same request.
Do not let the order of the answers, their length or their style sway you.
{rubric}
Reply with one JSON object and nothing else:
{{"reason": "<one or two sentences>",{criteria_schema} "winner": "A" | "B" | "tie"}}"""


def build_messages(prompt: str, answer_a: str, answer_b: str, criteria: Criteria) -> list[dict[str, str]]:
    """The judge's messages for one order: answer A is shown first."""
    schema = ""
    parts = [
        f"<request>\n{prompt}\n</request>",
        f"<answer_a>\n{answer_a}\n</answer_a>",
        f"<answer_b>\n{answer_b}\n</answer_b>",
    ]
    if criteria.checks:
        schema = ' "criteria": {"<name>": {"A": true|false, "B": true|false}, ...},'
        listing = "\n".join(f"- {c.name}: {c.description}" for c in criteria.checks)
        parts.append(
            f"<criteria>\nFor each criterion, say whether each answer passes.\n{listing}\n</criteria>"
        )
    system = SYSTEM_PROMPT.format(rubric=criteria.rubric, criteria_schema=schema)
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


_WINNER_RE = re.compile(r"""winner["']?\s*[:=]\s*["']?(answer[ _]?)?(a|b|tie)\b""", re.I)
_BRACKET_RE = re.compile(r"\[\[(A|B|tie|C)\]\]", re.I)


def parse_verdict(content: str) -> tuple[str, str, dict[str, Any]]:
    """``(winner, reason, criteria)`` from a judge's reply; winner is ``A``, ``B`` or ``tie``."""
    start, end = content.find("{"), content.rfind("}")
    if start != -1 and end > start:
        try:
            obj = json.loads(content[start : end + 1])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "winner" in obj:
            winner = _norm_winner(str(obj.get("winner")))
            if winner:
                crit = obj.get("criteria")
                return winner, str(obj.get("reason") or ""), crit if isinstance(crit, dict) else {}
    m = _WINNER_RE.search(content) or _BRACKET_RE.search(content)
    if m:
        winner = _norm_winner(m.group(m.lastindex or 1))
        if winner:
            return winner, content.strip()[:500], {}
    raise JudgeError(f"unreadable verdict: {content[:120]!r}")


def _norm_winner(value: str) -> str | None:
    v = value.strip().strip("\"'").lower().removeprefix("answer").strip(" _")
    return {"a": "A", "1": "A", "b": "B", "2": "B", "tie": "tie", "c": "tie", "draw": "tie"}.get(v)


# -- items, verdicts, reports --------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One input answered by both variants."""

    item_id: str
    prompt: str
    baseline: str
    candidate: str
    baseline_model: str | None = None
    candidate_model: str | None = None
    call_id: str | None = None
    candidate_call_id: str | None = None


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
    reasons: dict[str, str] = field(default_factory=dict)
    consistency: dict[str, bool] = field(default_factory=dict)
    """Per judge asked in both orders: whether its two verdicts agreed."""


@dataclass
class JudgeOptions:
    """How to judge: who, in which orders, against what, at what concurrency."""

    judges: tuple[str, ...]
    both_orders: bool = False
    seed: int = 0
    allow_same_family: bool = False
    family_overrides: Mapping[str, str] = field(default_factory=dict)
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
        out["per_judge"] = {j: self._judge_summary(j) for j in self.judges}
        if len(self.judges) > 1 and decided:
            agree = [i for i in decided if not i.identical and len(set(i.votes.values())) == 1]
            voted = [i for i in decided if not i.identical]
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
        out["flags"] = list(self.flags)
        return out

    def _judge_summary(self, judge: str) -> dict[str, Any]:
        votes = Counter(i.votes.get(judge) for i in self.items if judge in i.votes)
        errors = sum(1 for j in self.judgements if j.judge == judge and j.error)
        return {
            "wins": votes["candidate"],
            "ties": votes["tie"],
            "losses": votes["baseline"],
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


def check_families(pairs: Sequence[Pair], options: JudgeOptions) -> list[str]:
    """Apply the family guard; the flags to report when it is overridden."""
    contestants = [m for p in pairs for m in (p.baseline_model, p.candidate_model) if m]
    conflicts = family_conflicts(options.judges, contestants, options.family_overrides)
    if not conflicts:
        return []
    desc = "; ".join(f"judge {j} and contestant {m} are both {f}" for j, m, f in conflicts)
    if not options.allow_same_family:
        raise FamilyGuardError(
            f"self-preference risk: {desc} (pick judges of another family, or pass --allow-same-family)",
            conflicts=conflicts,
        )
    return [f"same-family judge allowed by override: {desc}"]


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


def _item_verdict(pair: Pair, judgements: Sequence[Judgement], judges: Sequence[str]) -> ItemVerdict:
    item = ItemVerdict(pair.item_id, "tie", call_id=pair.call_id, candidate_call_id=pair.candidate_call_id)
    consistency = item.consistency
    for judge in judges:
        mine = [j for j in judgements if j.judge == judge and j.error is None]
        if not mine:
            continue
        outcomes = {j.outcome for j in mine}
        if len(mine) > 1:
            consistency[judge] = len(outcomes) == 1
        item.votes[judge] = mine[0].outcome if len(outcomes) == 1 else "tie"
        item.reasons[judge] = " | ".join(f"{j.order}: {j.reason}" for j in mine)
    if consistency:
        item.position_consistent = all(consistency.values())
    if not item.votes:
        item.outcome = "error"
        return item
    tally = Counter(item.votes.values()).most_common()
    top = tally[0]
    item.outcome = top[0] if len(tally) == 1 or tally[1][1] < top[1] else "tie"  # type: ignore[assignment]
    return item


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
    flags = check_families(pairs, options)
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
            items.append(_item_verdict(pair, by_item.get(pair.item_id, []), options.judges))
    return JudgeReport(
        run_id=new_id("eval"),
        judges=tuple(options.judges),
        both_orders=options.both_orders,
        seed=options.seed,
        items=items,
        judgements=judgements,
        estimate=estimate,
        flags=flags,
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
SHADOW_PAIRS_SQL = """
SELECT b.call_id, c.call_id AS candidate_call_id, b.request,
       b.output_text AS baseline_text, b.response AS baseline_response,
       c.output_text AS candidate_text, c.response AS candidate_response,
       coalesce(b.upstream_model, json_extract_string(b.request, '$.model')) AS baseline_model,
       coalesce(c.upstream_model, json_extract_string(c.request, '$.model')) AS candidate_model
FROM calls b JOIN calls c ON c.parent_call_id = b.call_id
WHERE b.route = $route AND b.variant = 'baseline' AND b.served
  AND c.variant = 'candidate' AND NOT coalesce(c.served, false)
  AND coalesce(b.status, 200) < 400 AND coalesce(c.status, 200) < 400
  AND b.ts >= $since AND b.ts < $until
ORDER BY b.ts, b.call_id
LIMIT $limit
"""


def render_prompt(request: Mapping[str, Any]) -> str:
    """A chat request as the judge reads it: one ``role: content`` block per message, tools listed."""
    lines = []
    for msg in request.get("messages") or ():
        if not isinstance(msg, Mapping):
            continue
        content = msg.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        if msg.get("tool_calls"):
            content = f"{content or ''} {json.dumps(msg['tool_calls'])}".strip()
        lines.append(f"{msg.get('role', 'user')}: {content or ''}")
    if request.get("tools"):
        names = [t.get("function", {}).get("name") for t in request["tools"] if isinstance(t, Mapping)]
        lines.append(f"(tools available: {', '.join(str(n) for n in names)})")
    return "\n\n".join(lines)


def answer_text(output_text: str | None, response: str | None) -> str:
    """The answer as the judge reads it: the text, or the tool calls when there is no text."""
    if output_text:
        return output_text
    try:
        msg = json.loads(response or "{}")["choices"][0]["message"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        return output_text or ""
    if msg.get("tool_calls"):
        return json.dumps(msg["tool_calls"], ensure_ascii=False)
    return str(msg.get("content") or "")


def shadow_pairs(
    store: LogStore,
    route: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 500,
) -> list[Pair]:
    """Served baseline calls of ``route`` joined with their shadow candidate calls."""
    rows = store.sql(
        SHADOW_PAIRS_SQL,
        {
            "route": route,
            "since": since or dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
            "until": until or dt.datetime(9999, 1, 1, tzinfo=dt.UTC),
            "limit": limit,
        },
    )
    pairs = []
    for row in rows:
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
