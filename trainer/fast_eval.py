"""Greedy answers for many examples at once: the fast eval's generation, batched.

Answering a test split one example at a time spends most of its time in per-call overhead
and, for a model that never stops, in the full token budget of each call. `greedy_answers`
left-pads a batch of prompts to one tensor and generates them together; a finished row
stops counting (``eos``), the batch stops when every row has, or at the largest budget of
the batch. Results equal one-at-a-time greedy decoding up to the padding (the attention
mask hides it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from gateway.progress import Bar


def greedy_answers(
    model: Any,
    examples: Sequence[Any],
    *,
    max_tokens: int | None = None,
    batch_size: int = 16,
    label: str | None = None,
) -> list[str]:
    """The greedy answer of ``model`` (a `trainer.serve.ChatModel`) to each example's messages."""
    import torch

    from trainer.serve import template_messages

    tok = model.tokenizer
    side = tok.padding_side
    answers: list[str] = []
    with Bar(len(examples), label or f"eval {model.name}", unit="ex") as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            budget = max_tokens or max(max(16, 2 * len(tok(e.answer)["input_ids"]) + 8) for e in batch)
            prompts = [
                tok.apply_chat_template(
                    template_messages(e.messages), add_generation_prompt=True, tokenize=False
                )
                for e in batch
            ]
            try:
                tok.padding_side = "left"
                enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            finally:
                tok.padding_side = side
            enc = {k: v.to(model.model.device) for k, v in enc.items()}
            width = int(enc["input_ids"].shape[1])
            with model._lock, torch.no_grad():
                out = model.model.generate(**enc, **model._gen_kwargs(budget, 0.0, 1.0, None))
            for row in out:
                answers.append(tok.decode(row[width:], skip_special_tokens=True))
            bar.update(len(batch))
    return answers


_PAIR = re.compile(r'"([^"\\]{1,64})"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null)')


def _fields(answer: str) -> dict[str, Any]:
    """The answer's first JSON object; for broken JSON, the ``"key": value`` pairs it does hold."""
    start = answer.find("{")
    if start >= 0:
        try:
            got, _ = json.JSONDecoder().raw_decode(answer[start:])
        except json.JSONDecodeError:
            got = None
        if isinstance(got, dict):
            return got
    out: dict[str, Any] = {}
    for m in _PAIR.finditer(answer):
        try:
            out.setdefault(m.group(1), json.loads(m.group(2)))
        except json.JSONDecodeError:
            continue
    return out


def field_match(answer: str, label: str) -> float:
    """Share of the label's JSON fields the answer has equal (exact text when the label is not JSON).

    The answer's fields are its first JSON object, or the ``"key": value`` pairs of broken JSON
    (small models often write most of an object right and break one field)."""
    try:
        want = json.loads(label)
    except (json.JSONDecodeError, TypeError):
        return float(answer.strip() == label.strip())
    if not isinstance(want, dict) or not want:
        return float(answer.strip() == label.strip())
    got = _fields(answer)
    return float(sum(got.get(k) == v for k, v in want.items()) / len(want))


def score(model: Any, examples: Sequence[Any], *, batch_size: int = 16) -> dict[str, float]:
    """``exact_match`` and ``field_match`` of ``model``'s greedy answers on ``examples`` (one pass)."""
    if not examples:
        return {"exact_match": 0.0, "field_match": 0.0}
    answers = greedy_answers(model, examples, batch_size=batch_size)
    return scores(answers, [e.answer for e in examples])


def scores(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    n = len(labels) or 1
    return {
        "exact_match": round(
            sum(a.strip() == b.strip() for a, b in zip(answers, labels, strict=True)) / n, 4
        ),
        "field_match": round(sum(field_match(a, b) for a, b in zip(answers, labels, strict=True)) / n, 4),
    }
