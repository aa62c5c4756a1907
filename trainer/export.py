"""Exports of a dataset version to the formats fine-tuning tools read.

=============  =====================================================================================
format         files written in the output directory
=============  =====================================================================================
``openai``     ``train.jsonl``, ``test.jsonl`` (and ``golden.jsonl``): OpenAI chat fine-tuning,
               one ``{"messages": [...], "tools"?: [...]}`` per line, the label as the last message
``openai-dpo`` ``train.jsonl``, ``test.jsonl``: OpenAI preference fine-tuning, one
               ``{"input": {"messages", "tools"?}, "preferred_output": [...],
               "non_preferred_output": [...]}`` per line
``hf``         ``train.jsonl``, ``test.jsonl`` in TRL's conversational format
               (``{"messages": [...]}``) and a ``README.md`` dataset card whose ``configs`` lets
               ``datasets.load_dataset(DIR)`` find both splits
``axolotl``    the ``hf`` files plus ``axolotl.yaml`` (``type: chat_template``, loss on the assistant
               turns only, ``test_datasets`` on the test split, LoRA defaults)
=============  =====================================================================================

The test and golden splits never appear in a training file; every export writes
``export.json`` naming the dataset version, its content hash and the line counts.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from gateway.store.fileio import atomic_file, write_atomic
from trainer.dataset import DatasetVersion, Example, PreferencePair
from trainer.errors import ExportError

FORMATS = ("openai", "openai-dpo", "hf", "axolotl")


def chat_record(e: Example) -> dict[str, Any]:
    """One example as ``{"messages": [... , assistant], "tools"?}``."""
    record: dict[str, Any] = {"messages": [*_clean(e.messages), _clean_one(e.completion)]}
    if e.tools:
        record["tools"] = e.tools
    return record


def dpo_record(p: PreferencePair) -> dict[str, Any]:
    """One preference pair in OpenAI's DPO format."""
    inp: dict[str, Any] = {"messages": _clean(p.messages)}
    if p.tools:
        inp["tools"] = p.tools
    return {
        "input": inp,
        "preferred_output": [_clean_one(p.chosen)],
        "non_preferred_output": [_clean_one(p.rejected)],
    }


def _clean_one(m: dict[str, Any]) -> dict[str, Any]:
    keep = ("role", "content", "name", "tool_calls", "tool_call_id")
    out = {k: m[k] for k in keep if k in m and m[k] is not None}
    if out.get("role") == "assistant" and "content" not in out and "tool_calls" not in out:
        out["content"] = ""
    if out.get("role") == "developer":  # chat fine-tuning files know system, not developer
        out["role"] = "system"
    return out


def _clean(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_clean_one(m) for m in messages]


def _jsonl(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    return (json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# What an export may write; a re-export removes those of them it does not write again.
_OURS = ("train.jsonl", "test.jsonl", "golden.jsonl", "axolotl.yaml", "README.md")


def _previous_files(out_dir: str) -> set[str]:
    """The files the export already in ``out_dir`` wrote (by its ``export.json``), ours only."""
    try:
        with open(os.path.join(out_dir, "export.json")) as f:
            meta = json.load(f)
        names = set(meta.get("files") or {})
        if meta.get("format") in ("hf", "axolotl"):
            names.add("README.md")
    except (OSError, ValueError, TypeError, AttributeError):
        names = set()
    return names & set(_OURS)  # never a path an edited export.json names


def export_dataset(
    dataset: DatasetVersion,
    fmt: str,
    out_dir: str,
    *,
    base_model: str | None = None,
) -> dict[str, int]:
    """Write ``dataset`` in format ``fmt`` into ``out_dir``; returns lines written per file.

    ``base_model`` fills ``base_model`` in the Axolotl config (a placeholder otherwise).

    A previous export in ``out_dir`` is replaced: the files it wrote that this one does not
    (an old ``golden.jsonl``) are removed. Each file is written whole or not at all, and
    ``export.json`` goes last, so it describes exactly the files beside it; an export that
    fails (no training examples, a kill) leaves the previous one as it was, or no ``export.json``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    files: dict[str, Iterable[str]] = {}  # name -> its text, in pieces, written once all is checked
    written: dict[str, int] = {}
    if fmt == "openai-dpo":
        for split in ("train", "test"):
            pairs = dataset.preferences(split)
            files[f"{split}.jsonl"] = _jsonl(map(dpo_record, pairs))
            written[f"{split}.jsonl"] = len(pairs)
        if written["train.jsonl"] == 0:
            raise ExportError(
                f"{dataset.ref} has no preference pairs in its train split "
                "(they come from relabels, regenerations and choices)"
            )
    else:
        splits = ("train", "test", "golden") if fmt == "openai" else ("train", "test")
        for split in splits:
            examples = dataset.examples(split)
            if split == "golden" and not examples:
                continue
            files[f"{split}.jsonl"] = _jsonl(map(chat_record, examples))
            written[f"{split}.jsonl"] = len(examples)
        if written["train.jsonl"] == 0:
            raise ExportError(f"{dataset.ref} has no training examples")
        if fmt in ("hf", "axolotl"):
            files["README.md"] = [_card(dataset)]
        if fmt == "axolotl":
            files["axolotl.yaml"] = [yaml.safe_dump(axolotl_config(dataset, base_model), sort_keys=False)]
            written["axolotl.yaml"] = 1
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(_previous_files(out_dir) - set(files)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out_dir, name))
    with contextlib.suppress(FileNotFoundError):  # until the new files are all there
        os.unlink(os.path.join(out_dir, "export.json"))
    for name, pieces in files.items():
        with atomic_file(os.path.join(out_dir, name)) as f:
            for piece in pieces:
                f.write(piece.encode("utf-8"))
    meta = {
        "dataset": dataset.name,
        "version": dataset.version,
        "content_hash": dataset.manifest.get("content_hash"),
        "format": fmt,
        "files": written,
    }
    write_atomic(os.path.join(out_dir, "export.json"), json.dumps(meta, indent=2))
    return written


def _card(dataset: DatasetVersion) -> str:
    front = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": "train", "path": "train.jsonl"},
                    {"split": "test", "path": "test.jsonl"},
                ],
            }
        ],
        "tags": ["shadowtune", "conversational"],
    }
    m = dataset.manifest
    body = (
        f"# {dataset.name} v{dataset.version}\n\n"
        f"Built by Shadowtune from the call log of route `{m['source'].get('route')}`. "
        f"Splits: {m['splits']['train']} train, {m['splits']['test']} test (never trained on). "
        f"Content hash `{m.get('content_hash')}`.\n\n"
        'Each line is `{"messages": [...]}` in TRL\'s conversational format; the last message is the label.\n'
    )
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body


def axolotl_config(dataset: DatasetVersion, base_model: str | None) -> dict[str, Any]:
    """An Axolotl LoRA config that trains on ``train.jsonl`` and evaluates on ``test.jsonl``."""
    from trainer.lora import default_hyperparameters

    hp = default_hyperparameters(dataset.splits["train"])
    messages = {
        "field_messages": "messages",
        "message_property_mappings": {"role": "role", "content": "content"},
    }
    return {
        "base_model": base_model or "CHANGE-ME/base-model",
        "chat_template": "tokenizer_default",
        "datasets": [
            {
                "path": "train.jsonl",
                "ds_type": "json",
                "type": "chat_template",
                **messages,
                "roles_to_train": ["assistant"],
                "train_on_eos": "turn",
            }
        ],
        "test_datasets": [
            {"path": "test.jsonl", "ds_type": "json", "split": "train", "type": "chat_template", **messages}
        ],
        "dataset_prepared_path": "last_run_prepared",
        "output_dir": f"./outputs/{dataset.name}-v{dataset.version}",
        "adapter": "lora",
        "lora_r": hp["lora_r"],
        "lora_alpha": hp["lora_alpha"],
        "lora_dropout": hp["lora_dropout"],
        "lora_target_linear": True,
        "sequence_len": 2048,
        "sample_packing": False,
        "micro_batch_size": hp["batch_size"],
        "gradient_accumulation_steps": hp["gradient_accumulation_steps"],
        "num_epochs": hp["epochs"],
        "learning_rate": hp["learning_rate"],
        "optimizer": "adamw_torch",
        "lr_scheduler": "cosine",
        "warmup_ratio": hp["warmup_ratio"],
        "seed": hp["seed"],
        "bf16": "auto",
        "logging_steps": 10,
        "saves_per_epoch": 1,
        "evals_per_epoch": 1,
    }
