"""A tiny causal LM and a learnable synthetic task, built on the spot (no download).

`build_tiny_model(path)` trains a byte-level BPE tokenizer on the task's own text, gives it a
ChatML chat template, and saves it next to a randomly initialised two-layer Llama. The
tokenizer keeps spaces and punctuation as tokens of their own, so a word is the same token in
the user's text and inside the JSON answer: the task is then about copying, which a LoRA
adapter on a small random model can learn on CPU in about a minute.

`extraction_example(rng)` makes one example of the task: a short order message in, the
fields as JSON out, e.g. ``Order from Alice: 3 lamp to Paris.`` ->
``{"name": "Alice", "qty": 3, "item": "lamp", "city": "Paris"}``.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]
ITEMS = ["lamp", "chair", "desk", "mug", "book", "pen"]
CITIES = ["Paris", "Lima", "Oslo", "Rome", "Cairo", "Tokyo"]
TEMPLATES = ["Order from {name}: {qty} {item} to {city}."]  # a fixed format: learnable in seconds
SYSTEM = "Extract the order as JSON."

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


LORA_HP = {
    "epochs": 8,
    "learning_rate": 5e-3,
    "lora_r": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.0,
    "batch_size": 8,
}
"""LoRA settings that make the tiny model learn the extraction task in seconds on a CPU."""


def extraction_fields(rng: random.Random) -> dict[str, Any]:
    return {
        "name": rng.choice(NAMES),
        "qty": rng.randint(1, 9),
        "item": rng.choice(ITEMS),
        "city": rng.choice(CITIES),
    }


def extraction_example(rng: random.Random) -> tuple[list[dict[str, str]], str]:
    """``(messages, answer)``: the request's messages and the JSON answer that labels it."""
    fields = extraction_fields(rng)
    text = rng.choice(TEMPLATES).format(**fields)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return messages, json.dumps(fields)


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages, answer = extraction_example(rng)
        out.extend([m["content"] for m in messages] + [answer, "user", "assistant", "system"])
    out.append(" ".join(NAMES + ITEMS + CITIES + [str(i) for i in range(10)]))
    return out


def build_tiny_tokenizer(path: str) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^A-Za-z0-9]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_tiny_model(path: str, *, seed: int = 0, layers: int = 2, hidden: int = 64) -> str:
    """Save a tokenizer and a random Llama of ``layers`` x ``hidden`` at ``path``; returns ``path``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    os.makedirs(path, exist_ok=True)
    tokenizer = build_tiny_tokenizer(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.1,  # frozen random embeddings need some scale for the tied head to be decisive
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(path)
    return path


def call_record(
    messages: list[dict[str, Any]],
    answer: str | None,
    *,
    call_id: str | None = None,
    ts_us: int | None = None,
    route: str = "extract",
    variant: str = "baseline",
    served: bool = True,
    status: int = 200,
    tags: list[str] | None = None,
    regenerate_of: str | None = None,
    choices: list[str] | None = None,
) -> dict[str, Any]:
    """A ``calls`` WAL record as the gateway writes it for a chat completion."""
    import time

    from gateway.store.ids import new_id

    call_id = call_id or new_id("call")
    texts = choices if choices is not None else [answer]
    response = None
    if status == 200:
        response = {
            "id": "chatcmpl-" + call_id[-12:],
            "object": "chat.completion",
            "created": 0,
            "model": "baseline-model",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
    return {
        "schema_version": 1,
        "call_id": call_id,
        "ts": ts_us if ts_us is not None else int(time.time() * 1_000_000),
        "endpoint": "chat.completions",
        "route": route,
        "variant": variant,
        "served": served,
        "mode": "off",
        "upstream": "baseline",
        "upstream_model": "baseline-model",
        "tags": tags,
        "stream": False,
        "request": json.dumps({"model": route, "messages": messages}),
        "response": json.dumps(response) if response else None,
        "status": status,
        "error_type": None if status == 200 else "upstream_error",
        "regenerate_of": regenerate_of,
    }


def event_record(
    call_id: str,
    kind: str,
    value: str | None = None,
    *,
    value_num: float | None = None,
    data: dict[str, Any] | None = None,
    ts_us: int | None = None,
) -> dict[str, Any]:
    import time

    from gateway.store.ids import new_id

    return {
        "schema_version": 1,
        "event_id": new_id("evt"),
        "call_id": call_id,
        "ts": ts_us if ts_us is not None else int(time.time() * 1_000_000),
        "kind": kind,
        "value": value,
        "value_num": value_num,
        "source": "api",
        "data": json.dumps(data) if data else None,
    }


def write_log(log_dir: str, calls: list[dict[str, Any]], events: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
    """Append records with the store's own writer and flush them to Parquet."""
    from gateway.store import LogWriter

    with LogWriter(log_dir, compact_interval=0) as writer:
        for rec in calls:
            writer.append("calls", dict(rec))
        for rec in events:
            writer.append("events", dict(rec))


def log_extraction_task(
    log_dir: str, n: int, *, seed: int = 0, start_us: int = 1_700_000_000_000_000, route: str = "extract"
) -> list[dict[str, Any]]:
    """Log ``n`` served baseline calls of the extraction task (one second apart); returns the records."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        messages, answer = extraction_example(rng)
        records.append(call_record(messages, answer, ts_us=start_us + i * 1_000_000, route=route))
    write_log(log_dir, records)
    return records


_SHARED: dict[str, str] = {}


def shared_tiny_model() -> str:
    """The tiny model, built once per test process in a temporary directory (removed at exit)."""
    if "path" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="shadowtune-tiny-model-")
        atexit.register(shutil.rmtree, folder, True)
        _SHARED["path"] = build_tiny_model(folder)
    return _SHARED["path"]


class ThreadServer:
    """An ASGI app served by uvicorn in a thread on 127.0.0.1, port 0 (``base_url`` ends in ``/v1``)."""

    def __init__(self, app: Any) -> None:
        import threading
        import time

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
