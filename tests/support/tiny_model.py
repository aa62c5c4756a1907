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

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Oscar"]
ITEMS = ["lamp", "chair", "desk", "mug", "book", "pen", "sofa", "rug", "clock", "vase"]
CITIES = ["Paris", "Lima", "Oslo", "Rome", "Cairo", "Tokyo", "Quito", "Berlin"]
TEMPLATES = [
    "Order from {name}: {qty} {item} to {city}.",
    "Ship {qty} {item} to {city} for {name}.",
    "{name} wants {qty} {item} in {city}.",
    "Please send {name} {qty} {item}, city {city}.",
]
SYSTEM = "Extract the order as JSON."

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


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
