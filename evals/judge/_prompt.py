"""What a judge is asked and how its answer is read: the rubric and criteria, the messages for
one order of the two answers, the verdict parser, and how a logged request and answer read."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evals.errors import JudgeError, SourceError
from evals.judge._client import _read_mapping

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
