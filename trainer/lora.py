"""Local LoRA fine-tuning with TRL's `SFTTrainer` and PEFT, registered as a model version.

Each training example is given to TRL as a conversational *prompt-completion* pair: the
request's messages as the prompt and the label (the assistant message) as the completion,
so the loss is computed on the assistant's answer only (``completion_only_loss``), whatever
the base model's chat template (no ``{% generation %}`` markers needed).

Defaults are scaled to the size of the training split (`default_hyperparameters`): small
datasets get more epochs and a smaller rank. Any of them can be overridden. The test split
is never trained on: it gives the evaluation loss before and after training and, after
training, the exact-match rate of greedy answers on (up to ``exact_match_limit``) test
examples, all recorded in the registry with the hyper-parameters and the dataset version.

Checkpoints go to ``<log_dir>/models/<version>/checkpoints`` (the last two are kept);
``resume=VERSION`` continues an interrupted run from its last checkpoint. The run uses the
GPU when there is one (bf16 when supported) and the CPU otherwise, which is practical only
for small models.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

from trainer.dataset import DatasetVersion, Example, load_dataset
from trainer.errors import TrainingError, missing_train_extra
from trainer.registry import ModelVersion, Registry


def default_hyperparameters(n_train: int) -> dict[str, Any]:
    """Sensible LoRA defaults for a training split of ``n_train`` examples."""
    epochs = 5 if n_train < 200 else 3 if n_train < 2_000 else 2 if n_train < 20_000 else 1
    rank = 8 if n_train < 1_000 else 16 if n_train < 10_000 else 32
    accumulation = 1 if n_train < 2_000 else 2 if n_train < 20_000 else 4
    return {
        "epochs": epochs,
        "learning_rate": 2e-4,
        "batch_size": 8 if n_train >= 64 else 4,
        "gradient_accumulation_steps": accumulation,
        "lora_r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.05,
        "target_modules": "all-linear",
        "warmup_ratio": 0.03,
        "lr_scheduler": "cosine",
        "max_length": 2048,
        "seed": 0,
    }


def _records(examples: Sequence[Example]) -> list[dict[str, Any]]:
    from trainer.serve import template_messages

    return [
        {"prompt": template_messages(e.messages), "completion": template_messages([e.completion])}
        for e in examples
    ]


def train_lora(
    log_dir: str,
    base_model: str,
    dataset: str | DatasetVersion,
    *,
    name: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    resume: str | None = None,
    device: str | None = None,
    progress: bool = True,
    exact_match_limit: int = 100,
) -> ModelVersion:
    """Fine-tune ``base_model`` with LoRA on a dataset's train split and register the adapter.

    Args:
        log_dir: the call log directory (datasets and the registry live next to it).
        base_model: a local path or hub id of a causal LM with a chat template.
        dataset: a `DatasetVersion`, or ``NAME`` / ``NAME@vN``.
        name: the model name (versions are ``<name>-v<N>``); ``<dataset>-lora`` by default.
        hyperparameters: overrides of `default_hyperparameters` (``epochs``, ``learning_rate``,
            ``batch_size``, ``gradient_accumulation_steps``, ``lora_r``, ``lora_alpha``,
            ``lora_dropout``, ``target_modules``, ``warmup_ratio``, ``lr_scheduler``,
            ``max_length``, ``seed``, ``save_steps``).
        resume: a version whose run was interrupted: continue from its last checkpoint.
        device: ``cuda``, ``cpu``, ... (the GPU when there is one by default).
        progress: show a progress bar.
        exact_match_limit: test examples answered after training for ``test_exact_match``.

    Returns:
        The registered `ModelVersion` (status ``ready``), with its metrics.

    Raises:
        TrainingError: the training extra is missing, the run failed or cannot resume.
    """
    try:
        import torch
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
        from trl import SFTTrainer  # type: ignore[attr-defined]
    except ImportError as exc:
        raise missing_train_extra(exc) from exc

    registry = Registry(log_dir)
    mv, dv, hp = _start_run(registry, log_dir, base_model, dataset, name, hyperparameters, resume)
    base_model = mv.base_model
    train, test = dv.examples("train"), dv.examples("test")
    folder = registry.path(mv.version)
    ckpt_dir = os.path.join(folder, "checkpoints")
    last_ckpt = _last_checkpoint(ckpt_dir)
    if resume and last_ckpt is None:
        raise TrainingError(f"{resume} has no checkpoint to resume from in {ckpt_dir}")
    mv = registry.update(mv.version, status="training", error=None)

    try:
        use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        bf16 = use_cuda and torch.cuda.is_bf16_supported()
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        if not tokenizer.chat_template:
            raise TrainingError(f"{base_model} has no chat template; use an instruction-tuned base model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        set_seed(int(hp["seed"]))
        model = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=torch.bfloat16 if bf16 else torch.float32
        )
        config = _sft_config(hp, ckpt_dir, len(train), use_cuda=use_cuda, bf16=bf16)
        peft_config = LoraConfig(
            r=int(hp["lora_r"]),
            lora_alpha=int(hp["lora_alpha"]),
            lora_dropout=float(hp["lora_dropout"]),
            target_modules=hp["target_modules"],
            task_type="CAUSAL_LM",
        )
        from gateway.progress import enabled

        if not (progress and enabled()):  # TRL's dataset preparation draws bars of its own
            import datasets

            datasets.disable_progress_bars()
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(_records(train)),
            eval_dataset=Dataset.from_list(_records(test)) if test else None,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
        trainer.add_callback(_progress_callback(progress, mv.version))
        metrics: dict[str, Any] = dict(mv.metrics) if resume else {}
        if test and "eval_loss_before" not in metrics:
            metrics["eval_loss_before"] = float(trainer.evaluate()["eval_loss"])
        result = trainer.train(resume_from_checkpoint=last_ckpt if resume else None)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        metrics.update(
            train_loss=float(result.training_loss),
            first_logged_loss=float(losses[0]) if losses else None,
            last_logged_loss=float(losses[-1]) if losses else None,
            steps=int(trainer.state.global_step),
            train_runtime_s=round(float(result.metrics.get("train_runtime", 0.0)), 2),
            n_train=len(train),
            n_test=len(test),
            device="cuda" if use_cuda else "cpu",
        )
        if test:
            metrics["eval_loss_after"] = float(trainer.evaluate()["eval_loss"])
        adapter_dir = os.path.join(folder, "adapter")
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tuned: Any = trainer.model
        tuned.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        metrics = _rounded(metrics)
        if test and exact_match_limit > 0:
            from trainer.serve import ChatModel

            tuned.eval()
            chat = ChatModel(tuned, tokenizer, mv.version)
            metrics["test_exact_match"] = exact_match(chat, test[:exact_match_limit])
    except TrainingError as exc:
        registry.update(mv.version, status="failed", error=str(exc))
        raise
    except Exception as exc:
        registry.update(mv.version, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise TrainingError(f"training {mv.version} failed: {type(exc).__name__}: {exc}") from exc
    return registry.update(mv.version, status="ready", adapter_path=adapter_dir, metrics=metrics)


def _start_run(
    registry: Registry,
    log_dir: str,
    base_model: str,
    dataset: str | DatasetVersion,
    name: str | None,
    hyperparameters: dict[str, Any] | None,
    resume: str | None,
) -> tuple[ModelVersion, DatasetVersion, dict[str, Any]]:
    """The version to train (a new one, or the interrupted ``resume``), its dataset and hyper-parameters."""
    resumed = _resumable(registry, resume) if resume else None
    if resumed is not None and resumed.dataset:
        dataset = f"{resumed.dataset['name']}@v{resumed.dataset['version']}"
    dv = dataset if isinstance(dataset, DatasetVersion) else load_dataset(log_dir, dataset)
    n_train = len(dv.examples("train"))
    if not n_train:
        raise TrainingError(f"{dv.ref} has no training examples")
    if resumed is not None:
        return resumed, dv, dict(resumed.hyperparameters)
    hp = {**default_hyperparameters(n_train), **(hyperparameters or {})}
    mv = registry.save(
        ModelVersion(
            version=registry.allocate(name or f"{dv.name}-lora"),
            kind="lora",
            base_model=base_model,
            status="training",
            dataset={"name": dv.name, "version": dv.version, "content_hash": dv.manifest.get("content_hash")},
            hyperparameters=hp,
        )
    )
    return mv, dv, hp


def _resumable(registry: Registry, version: str) -> ModelVersion:
    """The interrupted LoRA run ``version`` (a finished one, or another kind, cannot resume)."""
    mv = registry.get(version)
    if mv.kind != "lora":
        raise TrainingError(f"{version} is not a local LoRA run")
    if mv.status == "ready":
        raise TrainingError(f"{version} already finished; nothing to resume")
    return mv


def _sft_config(hp: dict[str, Any], ckpt_dir: str, n_train: int, *, use_cuda: bool, bf16: bool) -> Any:
    """TRL's `SFTConfig` for the hyper-parameters: completion-only loss, a checkpoint every tenth of the run."""
    from trl import SFTConfig  # type: ignore[attr-defined]

    steps_per_epoch = math.ceil(n_train / (hp["batch_size"] * hp["gradient_accumulation_steps"]))
    total_steps = max(1, steps_per_epoch * math.ceil(hp["epochs"]))
    save_steps = int(hp.get("save_steps") or max(10, total_steps // 10))
    return SFTConfig(
        output_dir=ckpt_dir,
        num_train_epochs=float(hp["epochs"]),
        learning_rate=float(hp["learning_rate"]),
        per_device_train_batch_size=int(hp["batch_size"]),
        per_device_eval_batch_size=int(hp["batch_size"]),
        gradient_accumulation_steps=int(hp["gradient_accumulation_steps"]),
        lr_scheduler_type=str(hp["lr_scheduler"]),
        warmup_steps=float(hp["warmup_ratio"]),
        max_length=int(hp["max_length"]),
        completion_only_loss=True,
        seed=int(hp["seed"]),
        data_seed=int(hp["seed"]),
        bf16=bf16,
        fp16=False,
        use_cpu=not use_cuda,
        gradient_checkpointing=False,
        logging_steps=max(1, min(10, total_steps // 20)),
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,  # our own bar (`gateway.progress`): step, loss, ETA; quiet under --json
        dataloader_num_workers=0,
    )


def _last_checkpoint(ckpt_dir: str) -> str | None:
    """The newest complete checkpoint: a run killed while saving leaves one without its
    ``trainer_state.json`` (written last), which is skipped."""
    try:
        names = [n for n in os.listdir(ckpt_dir) if n.startswith("checkpoint-") and n[11:].isdigit()]
    except FileNotFoundError:
        return None
    done = [n for n in names if os.path.exists(os.path.join(ckpt_dir, n, "trainer_state.json"))]
    return os.path.join(ckpt_dir, max(done, key=lambda n: int(n[11:]))) if done else None


def exact_match(
    model: Any, examples: Sequence[Example], *, max_tokens: int | None = None, batch_size: int = 16
) -> float:
    """Share of ``examples`` whose greedy answer equals the label (surrounding white space ignored).

    ``model`` is a `trainer.serve.ChatModel`; answers are generated ``batch_size`` at a time
    (`trainer.fast_eval.greedy_answers`), with a progress bar.
    """
    from trainer.fast_eval import greedy_answers

    if not examples:
        return 0.0
    answers = greedy_answers(model, examples, max_tokens=max_tokens, batch_size=batch_size)
    hits = sum(got.strip() == e.answer.strip() for got, e in zip(answers, examples, strict=True))
    return hits / len(examples)


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    from gateway.progress import rounded

    return dict(rounded(metrics))


def _progress_callback(progress: bool, label: str) -> Any:
    """A `TrainerCallback` that moves a `gateway.progress` bar: step of total, the last loss."""
    from transformers import TrainerCallback

    from gateway.progress import Bar, quiet

    class _Progress(TrainerCallback):
        bar: Bar | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            with quiet(not progress):
                self.bar = Bar(state.max_steps, f"train {label}", unit="step")
            self.bar.set(state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set(state.global_step, loss=float(logs["loss"]), epoch=float(state.epoch or 0))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.set(state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return _Progress()
