"""Generated traffic for the evals tests: shadow pairs and drift scenarios, written through LogWriter."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from typing import Any

from gateway.store import LogWriter
from gateway.store.ids import new_id

HOUR_US = 3600 * 1_000_000


def now_us() -> int:
    return int(time.time() * 1e6)


def call_row(
    *,
    route: str,
    prompt: str,
    answer: str,
    variant: str = "baseline",
    served: bool = True,
    parent: str | None = None,
    ts: int | None = None,
    model: str = "base-model",
    tools: bool = False,
) -> dict[str, Any]:
    request: dict[str, Any] = {"model": route, "messages": [{"role": "user", "content": prompt}]}
    if tools:
        request["tools"] = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    response = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(answer) // 4},
    }
    return {
        "call_id": new_id("call"),
        "parent_call_id": parent,
        "ts": ts if ts is not None else now_us(),
        "endpoint": "chat.completions",
        "route": route,
        "variant": variant,
        "served": served,
        "mode": "shadow",
        "upstream_model": model,
        "request": json.dumps(request),
        "response": json.dumps(response),
        "status": 200,
        "latency_ms": 10.0,
    }


def write_shadow_pairs(
    log_dir: str,
    route: str,
    items: Sequence[tuple[str, str, str]],
    *,
    baseline_model: str = "gpt-4o-mini",
    candidate_model: str = "qwen2.5-0.5b-lora",
) -> list[str]:
    """Write ``(prompt, baseline_answer, candidate_answer)`` as served baselines with shadow candidates."""
    ids = []
    with LogWriter(log_dir) as w:
        t = now_us() - HOUR_US
        for i, (prompt, base, cand) in enumerate(items):
            b = call_row(route=route, prompt=prompt, answer=base, ts=t + i, model=baseline_model)
            c = call_row(
                route=route,
                prompt=prompt,
                answer=cand,
                variant="candidate",
                served=False,
                parent=b["call_id"],
                ts=t + i,
                model=candidate_model,
            )
            w.append("calls", b)
            w.append("calls", c)
            ids.append(b["call_id"])
    return ids


NAMES = ["Ann", "Bob", "Chen", "Dana", "Eve", "Femi", "Gus", "Hana"]
TOPICS = {
    "invoice": ["invoice", "payment", "amount due"],
    "meeting": ["meeting", "calendar", "agenda"],
    "flight": ["flight", "boarding", "airport"],
    "password": ["password", "login", "account"],
    "shipping": ["shipping", "parcel", "tracking"],
    "printer": ["printer", "toner", "paper jam"],
}
NEW_TOPIC = {"crypto": ["bitcoin", "wallet", "blockchain"]}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "September", "October"]


def prompt_text(rng: random.Random, *, year: int = 2023, topics: dict[str, list[str]] | None = None) -> str:
    topics = topics or TOPICS
    words = topics[rng.choice(sorted(topics))]
    a, b = rng.sample(words, 2)
    name = rng.choice(NAMES)
    style = rng.randrange(4)
    date = (
        f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {year}"
        if rng.random() < 0.5
        else f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    )
    if style == 0:
        return f"Hi, this is {name}. I have a question about my {a} from {date}. The {b} is not right."
    if style == 1:
        ref = rng.randint(100, 999)
        return f"Please summarise the {a} notes for {name}, dated {date}, and mention the {b} (ref {ref})."
    if style == 2:
        return f"Can you help {name} with the {a}? It started on {date} and the {b} keeps failing."
    return f"Extract the {a} details: customer {name}, date {date}, {b} number {rng.randint(1000, 9999)}."


def traffic(n: int, seed: int, *, year: int = 2023, new_topic_share: float = 0.0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < new_topic_share:
            out.append(prompt_text(rng, year=year, topics=NEW_TOPIC))
        else:
            out.append(prompt_text(rng, year=year))
    return out


def write_traffic(log_dir: str, route: str, prompts: Sequence[str], *, start_us: int, spread_us: int) -> None:
    with LogWriter(log_dir) as w:
        for i, p in enumerate(prompts):
            ts = start_us + (spread_us * i) // max(1, len(prompts))
            answer = json.dumps({"topic": p.split()[0].lower(), "year": 2023})
            w.append("calls", call_row(route=route, prompt=p, answer=answer, ts=ts))


# -- pipeline steps for trigger tests (plugged in as module:function, like the trainer's will be) --
def build_dataset_step(ctx: Any) -> str:
    return f"{ctx.route}-{ctx.run_id[-6:].lower()}"


def train_step(ctx: Any) -> dict[str, str]:
    return {"model": f"tiny-{ctx.results['build_dataset']}"}


def evaluate_wins_step(ctx: Any) -> dict[str, Any]:
    return {"wins": True, "win_rate": 0.7}


def evaluate_loses_step(ctx: Any) -> dict[str, Any]:
    return {"wins": False, "win_rate": 0.3}


def register_step(ctx: Any) -> str:
    return str(ctx.results["train"]["model"]) + "@v1"


def deploy_step(ctx: Any) -> dict[str, str]:
    return {"candidate": str(ctx.results["register"]), "mode": "shadow"}


def failing_train_step(ctx: Any) -> None:
    raise RuntimeError("out of memory")


def write_dataset(log_dir: str, name: str, rows: Sequence[tuple[str, str, str]]) -> None:
    """``(user, assistant, split)`` rows as a trainer-style dataset: Parquet with messages and split."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = os.path.join(log_dir, "datasets", name)
    os.makedirs(folder, exist_ok=True)
    table = pa.Table.from_pylist(
        [
            {
                "example_id": f"{name}-{i}",
                "messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                "split": s,
            }
            for i, (u, a, s) in enumerate(rows)
        ]
    )
    pq.write_table(table, os.path.join(folder, "part-0.parquet"))
