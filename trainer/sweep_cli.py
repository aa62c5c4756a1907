"""``shadowtune train sweep`` (`trainer.sweep`): added to the ``train`` group by `trainer.cli`."""

from __future__ import annotations

from typing import Any

import click

from gateway.clikit.options import json_option, log_dir_option
from gateway.clikit.output import echo_json
from trainer.sweep import format_sweep, parse_grid, run_sweep


@click.command("sweep")
@click.option(
    "--dataset", "dataset_name", required=True, help="Dataset NAME or NAME@vN (one version for all runs)."
)
@click.option("--base", "bases", multiple=True, required=True, help="A base model (repeatable).")
@click.option(
    "--param", "params", multiple=True, help="A grid axis, NAME=V1,V2 (repeatable), e.g. lora_r=8,16."
)
@click.option("--hp", multiple=True, help="A hyper-parameter for every run, KEY=VALUE (repeatable).")
@click.option("--name", help="Model name of the runs (default DATASET-sweep).")
@click.option(
    "--eval-limit", type=int, default=100, show_default=True, help="Test examples answered per run."
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@log_dir_option
@json_option
def train_sweep_cmd(
    dataset_name: str,
    bases: tuple[str, ...],
    params: tuple[str, ...],
    hp: tuple[str, ...],
    name: str | None,
    eval_limit: int,
    no_progress: bool,
    log_dir: str,
    as_json: bool,
) -> None:
    """Train several bases/settings on one dataset version and compare them on its test split."""
    from trainer.cli import _domain_errors, _parse_hp  # registered by trainer.cli, loaded after it

    def on_run(i: int, n: int, run: Any) -> None:
        if not as_json:
            click.echo(f"[{i + 1}/{n}] {run.base} {run.params or ''}", err=True)

    with _domain_errors():
        table = run_sweep(
            log_dir, dataset_name, bases, grid=parse_grid(params), name=name, hyperparameters=_parse_hp(hp),
            eval_limit=eval_limit, progress=not (no_progress or as_json), on_run=on_run,
        )  # fmt: skip
    if as_json:
        echo_json(table)
    else:
        click.echo(format_sweep(table))
