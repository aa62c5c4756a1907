"""The trainer's command groups: ``dataset``, ``train`` and ``models``.

Registered under the ``shadowtune.commands`` entry-point group and loaded by the root
``shadowtune`` command only when named. Importing this module imports neither torch nor
the server: heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from gateway.clikit.options import MOMENT, gateway_options, handle_errors, json_option, log_dir_option
from gateway.clikit.output import echo_json, emit
from trainer.errors import TrainerError


def _domain_errors() -> handle_errors:
    return handle_errors(TrainerError)


_echo_json = echo_json


def _parse_hp(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--hp")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


# -- dataset ---------------------------------------------------------------------------------
@click.group()
def dataset() -> None:
    """Datasets built from the call log: build, inspect, relabel, export."""


@dataset.command("build")
@click.argument("name")
@click.option("--route", help="Only calls of this route.")
@click.option(
    "--since",
    type=MOMENT,
    help="Only calls at or after this time (an age such as 7d or 1.5h, or an ISO time).",
)
@click.option("--until", type=MOMENT, help="Only calls before this time (same forms as --since).")
@click.option(
    "--test-fraction", type=float, default=0.1, show_default=True, help="Share of inputs in the test split."
)
@click.option(
    "--thumbs-up-only", is_flag=True, help="Keep only calls with a thumbs up (relabelled calls pass)."
)
@click.option("--min-rating", type=float, help="Keep only calls rated at least this.")
@click.option("--no-flags", is_flag=True, help="Drop flagged calls.")
@click.option("--no-regenerated", is_flag=True, help="Drop calls the user asked again for.")
@click.option("--where", help="SQL predicate over calls_with_outcomes that kept calls must satisfy.")
@click.option(
    "--golden",
    "golden_file",
    type=click.Path(exists=True, dir_okay=False),
    help="File of call ids (one a line) for the golden split.",
)
@click.option("--golden-tag", help="Calls with this tag go to the golden split.")
@click.option(
    "--near-dup",
    type=float,
    default=0.9,
    show_default=True,
    help="Similarity from which inputs are near duplicates (1 = exact only).",
)
@click.option(
    "--redact", default="secrets", show_default=True, help="none, secrets, pii or package.module:function."
)
@click.option(
    "--transform",
    "transform_choice",
    default="auto",
    show_default=True,
    help="The candidate's request transform: auto (the route's), none, or a JSON/YAML spec file.",
)
@log_dir_option
@json_option
def dataset_build(
    name: str, log_dir: str, as_json: bool, golden_file: str | None, near_dup: float, **options: Any
) -> None:
    """Build the next version of dataset NAME from the log."""
    from trainer.dataset import Filters, build_dataset

    golden: list[str] = []
    if golden_file:
        with open(golden_file) as f:
            golden = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    filters = Filters(
        thumbs_up_only=options.pop("thumbs_up_only"),
        min_rating=options.pop("min_rating"),
        no_flags=options.pop("no_flags"),
        no_regenerated=options.pop("no_regenerated"),
        where=options.pop("where"),
    )
    from trainer.transform_source import route_transform

    with _domain_errors():
        choice = options.pop("transform_choice")
        spec, source = route_transform(choice, options.get("route"), log_dir=log_dir)
        if spec is not None and not as_json:
            click.echo(f"candidate transform from {source}: {spec}", err=True)
        dv = build_dataset(
            log_dir, name, filters=filters, golden_call_ids=golden, transform=spec,
            near_dup_threshold=None if near_dup >= 1 else near_dup, warn=not as_json, **options,
        )  # fmt: skip
    if as_json:
        _echo_json(dv.manifest)
        return
    s = dv.splits
    click.echo(
        f"{dv.ref}: {s['train']} train, {s['test']} test, {s['golden']} golden "
        f"({dv.manifest['counts']['preference_pairs']} preference pairs) -> {dv.path}"
    )
    removed = {k: v for k, v in dv.manifest["removed"].items() if v}
    if removed:
        click.echo("removed: " + ", ".join(f"{k} {v}" for k, v in removed.items()))
        why = dv.manifest.get("removed_why") or {}
        for step, n in removed.items():
            click.echo(f"  {step} {n}: {why.get(step, step)}")
    kept = (dv.manifest.get("dedup") or {}).get("kept_with_another_label") or {}
    if any(kept.values()):
        click.echo(
            f"kept {kept.get('exact', 0)} exact and {kept.get('near', 0)} near duplicate(s) whose label differs"
        )
    split = dv.manifest.get("split") or {}
    if split.get("moved_to_test"):
        click.echo(f"moved {split['moved_to_test']} input(s) to test: near variants of an earlier test input")


@dataset.command("list")
@log_dir_option
@json_option
def dataset_list(log_dir: str, as_json: bool) -> None:
    """List dataset versions."""
    from trainer.dataset import list_datasets

    with _domain_errors():
        versions = list_datasets(log_dir)
    rows = [
        {"dataset": d.ref, "created_at": d.manifest["created_at"], "route": d.manifest["source"]["route"],
         **d.splits, "content_hash": d.manifest["content_hash"], "warnings": len(d.manifest["warnings"])}
        for d in versions
    ]  # fmt: skip
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['dataset']:<30} {r['created_at'][:19]}  train {r['train']:>6}  test {r['test']:>5}  "
            f"golden {r['golden']:>4}  route {r['route']}"
            + (f"  ({r['warnings']} warnings)" if r["warnings"] else "")
        )


@dataset.command("show")
@click.argument("name")
@log_dir_option
@json_option
def dataset_show(name: str, log_dir: str, as_json: bool) -> None:
    """Print the manifest of dataset NAME (or NAME@vN) as JSON."""
    from trainer.dataset import load_dataset

    with _domain_errors():
        _echo_json(load_dataset(log_dir, name).manifest)


@dataset.command("split")
@click.argument("name")
@click.option(
    "--split", "which", type=click.Choice(["train", "test", "golden"]), default="test", show_default=True
)
@log_dir_option
@json_option
def dataset_split(name: str, which: str, log_dir: str, as_json: bool) -> None:
    """List the call ids in one split of dataset NAME."""
    from trainer.dataset import load_dataset

    with _domain_errors():
        examples = load_dataset(log_dir, name).examples(which)
    if as_json:
        _echo_json([{"call_id": e.call_id, "input_hash": e.input_hash} for e in examples])
    else:
        for e in examples:
            click.echo(e.call_id)


@dataset.command("exclude")
@click.argument("call_ids", nargs=-1, required=True)
@click.option("--reason", help="Why the calls are excluded.")
@click.option("--user", help="Who excluded them.")
@log_dir_option
@json_option
def dataset_exclude(
    call_ids: tuple[str, ...], reason: str | None, user: str | None, log_dir: str, as_json: bool
) -> None:
    """Keep CALL_IDS out of every dataset built from now on."""
    from trainer.dataset import exclude

    with _domain_errors():
        events = {call_id: exclude(log_dir, call_id, user=user, reason=reason) for call_id in call_ids}
    emit({"excluded": events}, as_json, f"excluded {len(call_ids)} call(s)")


@dataset.command("export")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["openai", "openai-dpo", "hf", "axolotl"]), required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--base", "base_model", help="Base model for the Axolotl config.")
@log_dir_option
@json_option
def dataset_export(
    name: str, fmt: str, out_dir: str, base_model: str | None, log_dir: str, as_json: bool
) -> None:
    """Export dataset NAME (or NAME@vN) for a fine-tuning tool."""
    from trainer.dataset import load_dataset
    from trainer.export import export_dataset

    with _domain_errors():
        written = export_dataset(load_dataset(log_dir, name), fmt, out_dir, base_model=base_model)
    if as_json:
        _echo_json(written)
    else:
        for file, n in written.items():
            click.echo(f"{os.path.join(out_dir, file)}: {n}")


# -- train -----------------------------------------------------------------------------------
@click.group()
def train() -> None:
    """Fine-tune a model on a dataset: locally with LoRA, or with a hosted provider."""


@train.command("lora")
@click.option(
    "--base", "base_model", required=True, help="Base model: a local path or hub id, with a chat template."
)
@click.option("--dataset", "dataset_name", required=True, help="Dataset NAME or NAME@vN.")
@click.option("--name", help="Model name (versions are NAME-vN; default DATASET-lora).")
@click.option("--epochs", type=float, help="Epochs (default scaled to the dataset).")
@click.option("--learning-rate", type=float, help="Learning rate (default 2e-4).")
@click.option("--rank", "lora_r", type=int, help="LoRA rank (default scaled to the dataset).")
@click.option("--batch-size", type=int, help="Per-device batch size.")
@click.option("--seed", type=int, help="Seed (default 0).")
@click.option("--hp", multiple=True, help="Any other hyper-parameter, KEY=VALUE (repeatable).")
@click.option("--resume", help="Continue an interrupted VERSION from its last checkpoint.")
@click.option("--device", help="cuda, cpu, ... (default: the GPU when there is one).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@log_dir_option
@json_option
def train_lora_cmd(
    base_model: str,
    dataset_name: str,
    name: str | None,
    hp: tuple[str, ...],
    resume: str | None,
    device: str | None,
    no_progress: bool,
    log_dir: str,
    as_json: bool,
    **flags: Any,
) -> None:
    """Fine-tune BASE with LoRA on a dataset's train split and register the adapter."""
    from trainer.lora import train_lora

    hyper = {k: v for k, v in flags.items() if v is not None}
    if "lora_r" in hyper:
        hyper.setdefault("lora_alpha", 2 * hyper["lora_r"])
    hyper.update(_parse_hp(hp))
    with _domain_errors():
        mv = train_lora(
            log_dir,
            base_model,
            dataset_name,
            name=name,
            hyperparameters=hyper,
            resume=resume,
            device=device,
            progress=not no_progress,
        )
    if as_json:
        _echo_json(mv.to_dict())
    else:
        m = mv.metrics
        click.echo(f"{mv.version}: ready, adapter {mv.adapter_path}")
        click.echo(
            f"eval loss {m.get('eval_loss_before')} -> {m.get('eval_loss_after')}, "
            f"test exact match {m.get('test_exact_match')}"
        )


@train.command("hosted")
@click.option("--provider", type=click.Choice(["openai"]), default="openai", show_default=True)
@click.option("--base", "base_model", required=True, help="The provider's base model id.")
@click.option("--dataset", "dataset_name", required=True, help="Dataset NAME or NAME@vN.")
@click.option("--name", help="Model name (versions are NAME-vN; default DATASET-hosted).")
@click.option("--base-url", help="OpenAI-compatible API base URL (default OPENAI_BASE_URL or OpenAI).")
@click.option(
    "--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Environment variable with the key."
)
@click.option("--epochs", "n_epochs", type=int, help="Epochs (the provider's default otherwise).")
@click.option("--hp", multiple=True, help="Other hyper-parameters, KEY=VALUE (repeatable).")
@click.option("--suffix", help="Suffix of the fine-tuned model's name.")
@click.option("--seed", type=int)
@click.option("--validation", is_flag=True, help="Upload the test split as the validation file.")
@click.option("--no-wait", is_flag=True, help="Return once the job is created.")
@click.option("--poll-interval", type=float, default=15.0, show_default=True)
@click.option("--timeout", type=float, help="Stop waiting after this many seconds.")
@log_dir_option
@json_option
def train_hosted_cmd(
    provider: str,
    base_model: str,
    dataset_name: str,
    name: str | None,
    base_url: str | None,
    api_key_env: str,
    n_epochs: int | None,
    hp: tuple[str, ...],
    suffix: str | None,
    seed: int | None,
    validation: bool,
    no_wait: bool,
    poll_interval: float,
    timeout: float | None,
    log_dir: str,
    as_json: bool,
) -> None:
    """Run a hosted fine-tuning job (upload, create, poll) and register the fine-tuned model."""
    from trainer.hosted import train_hosted

    hyper = _parse_hp(hp)
    if n_epochs is not None:
        hyper["n_epochs"] = n_epochs
    with _domain_errors():
        mv = train_hosted(
            log_dir, base_model, dataset_name, provider=provider, base_url=base_url,
            api_key=os.environ.get(api_key_env), name=name, hyperparameters=hyper, suffix=suffix, seed=seed,
            validation=validation, wait=not no_wait, poll_interval=poll_interval, timeout=timeout,
            on_progress=None if as_json else lambda line: click.echo(line, err=True),
        )  # fmt: skip
    if as_json:
        _echo_json(mv.to_dict())
    else:
        click.echo(f"{mv.version}: {mv.status}" + (f", model {mv.hosted_model}" if mv.hosted_model else ""))


@train.command("status")
@click.argument("version")
@click.option("--wait", is_flag=True, help="Wait for a hosted job to end.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True)
@log_dir_option
@json_option
def train_status(version: str, wait: bool, api_key_env: str, log_dir: str, as_json: bool) -> None:
    """Show a training run's status (a hosted job is read from the provider)."""
    from trainer.hosted import refresh_hosted
    from trainer.registry import Registry

    with _domain_errors():
        mv = Registry(log_dir).get(version)
        if mv.kind == "hosted" and mv.status not in ("ready", "failed", "cancelled"):
            mv = refresh_hosted(
                log_dir,
                version,
                api_key=os.environ.get(api_key_env),
                wait=wait,
                on_progress=None if as_json else lambda line: click.echo(line, err=True),
            )
    if as_json:
        _echo_json(mv.to_dict())
    else:
        click.echo(f"{mv.version}: {mv.status}" + (f" ({mv.error})" if mv.error else ""))


# -- models ----------------------------------------------------------------------------------
@click.group()
def models() -> None:
    """Model versions: list, inspect, register, serve, deploy as a shadow candidate."""


@models.command("list")
@log_dir_option
@json_option
def models_list(log_dir: str, as_json: bool) -> None:
    """List model versions."""
    from trainer.registry import Registry

    with _domain_errors():
        versions = Registry(log_dir).list()
    if as_json:
        _echo_json([mv.to_dict() for mv in versions])
        return
    for mv in versions:
        ds = f"{mv.dataset['name']}@v{mv.dataset['version']}" if mv.dataset else "-"
        click.echo(f"{mv.version:<30} {mv.kind:<8} {mv.status:<9} base {mv.base_model}  dataset {ds}")


@models.command("show")
@click.argument("version")
@log_dir_option
@json_option
def models_show(version: str, log_dir: str, as_json: bool) -> None:
    """Print the record of VERSION as JSON."""
    from trainer.registry import Registry

    with _domain_errors():
        _echo_json(Registry(log_dir).get(version).to_dict())


@models.command("register")
@click.argument("name")
@click.option("--base", "base_model", required=True, help="Base model.")
@click.option(
    "--adapter", "adapter_path", type=click.Path(exists=True, file_okay=False), help="LoRA adapter directory."
)
@click.option("--hosted-model", help="A provider's fine-tuned model id.")
@click.option("--provider", help="The provider of --hosted-model.")
@click.option("--dataset", "dataset_ref", help="Dataset NAME@vN it was trained on.")
@click.option("--metric", multiple=True, help="KEY=VALUE (repeatable).")
@click.option(
    "--family", help="Model family (qwen, gpt...) for the judges' guard; default: inherited from --base."
)
@log_dir_option
@json_option
def models_register(
    name: str,
    base_model: str,
    adapter_path: str | None,
    hosted_model: str | None,
    provider: str | None,
    dataset_ref: str | None,
    metric: tuple[str, ...],
    family: str | None,
    log_dir: str,
    as_json: bool,
) -> None:
    """Register a model trained elsewhere as the next version of NAME."""
    from trainer.dataset import load_dataset
    from trainer.registry import Registry

    with _domain_errors():
        ds = None
        if dataset_ref:
            dv = load_dataset(log_dir, dataset_ref)
            ds = {"name": dv.name, "version": dv.version, "content_hash": dv.manifest.get("content_hash")}
        kind = "lora" if adapter_path else "hosted"
        mv = Registry(log_dir).register(
            name,
            base_model=base_model,
            kind=kind,
            adapter_path=adapter_path,
            hosted_model=hosted_model,
            provider=provider,
            dataset=ds,
            metrics=_parse_hp(metric),
            family=family,
        )
    if as_json:
        _echo_json(mv.to_dict())
    else:
        click.echo(f"registered {mv.version}")


@models.command("serve")
@click.argument("version")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8001, show_default=True)
@click.option("--device", help="cuda, cpu, ... (default: the GPU when there is one).")
@click.option("--vllm", "vllm", is_flag=True, help="Write the vLLM command and config instead of serving.")
@click.option(
    "--out",
    "out_dir",
    default=os.path.join("deploy", "vllm"),
    show_default=True,
    help="Where --vllm writes its files.",
)
@log_dir_option
@json_option
def models_serve(
    version: str,
    host: str,
    port: int,
    device: str | None,
    vllm: bool,
    out_dir: str,
    log_dir: str,
    as_json: bool,
) -> None:
    """Serve VERSION with an OpenAI-compatible dev server (or write its vLLM files with --vllm).

    With ``--json``, ``--vllm`` prints the command and the files written as JSON, and the dev server
    prints its base URL as one JSON line before it starts."""
    from trainer.registry import Registry

    with _domain_errors():
        if vllm:
            from trainer.deploy import vllm_args, write_vllm_files

            mv = Registry(log_dir).get(version)
            paths = write_vllm_files(mv, out_dir, port=port, host=host)
            args = vllm_args(mv, port=port, host=host)
            if as_json:
                echo_json({"command": args, "files": paths})
                return
            click.echo(" ".join(args))
            for p in paths.values():
                click.echo(f"wrote {p}", err=True)
            return
        from trainer.serve import serve_version

        if as_json:
            echo_json({"version": version, "url": f"http://{host}:{port}/v1"}, lines=True)
        serve_version(log_dir, version, host=host, port=port, device=device)


@models.command("deploy")
@click.argument("version")
@click.option("--route", required=True, help="The route whose shadow candidate it becomes.")
@click.option("--serve-url", help="Where the model is served (http://host:port/v1); hosted: the provider.")
@click.option("--upstream", help="Upstream name in the gateway (default: VERSION).")
@click.option("--reason", help="Recorded in the route's history.")
@click.option(
    "--set-transform",
    is_flag=True,
    help="Give the route the candidate transform the model's dataset was built with.",
)
@log_dir_option
@gateway_options
@json_option
def models_deploy(
    version: str,
    route: str,
    serve_url: str | None,
    upstream: str | None,
    reason: str | None,
    target: Any,
    set_transform: bool,
    log_dir: str,
    as_json: bool,
) -> None:
    """Make VERSION the shadow candidate of a route on a running gateway."""
    from trainer.deploy import deploy_version

    with _domain_errors():
        dep = deploy_version(
            log_dir,
            version,
            route,
            url=target.url,
            admin_token=target.token,
            serve_url=serve_url,
            upstream=upstream,
            reason=reason,
            set_transform=set_transform,
        )
    if as_json:
        _echo_json(dep)
    else:
        click.echo(f"{version} is the shadow candidate of route {route} (upstream {dep['upstream']})")


from trainer.sweep_cli import train_sweep_cmd  # noqa: E402  (it uses the helpers above)

train.add_command(train_sweep_cmd)

from trainer.relabel_cli import dataset_relabel  # noqa: E402

dataset.add_command(dataset_relabel)
