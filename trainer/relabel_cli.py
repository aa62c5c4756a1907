"""``shadowtune dataset relabel``: one corrected answer, or many from a file (`trainer.relabel_bulk`).

Added to the ``dataset`` group by `trainer.cli`.
"""

from __future__ import annotations

import sys

import click

from gateway.clikit.options import json_option, log_dir_option
from gateway.clikit.output import emit


@click.command("relabel")
@click.argument("call_id", required=False)
@click.option("--answer", help="The corrected answer (read from stdin when omitted).")
@click.option("--comment", help="Why it was corrected.")
@click.option("--user", help="Who corrected it.")
@click.option(
    "--file",
    "file_",
    type=click.Path(dir_okay=False),
    help="Many corrections: a JSONL or CSV file of call_id, answer, comment (trainer.relabel_bulk).",
)
@click.option("--skip-invalid", is_flag=True, help="With --file: write the good lines even if some are bad.")
@log_dir_option
@json_option
def dataset_relabel(
    call_id: str | None,
    answer: str | None,
    comment: str | None,
    user: str | None,
    file_: str | None,
    skip_invalid: bool,
    as_json: bool,
    log_dir: str,
) -> None:
    """Record a corrected answer for CALL_ID, or for every line of --file (used from the next build)."""
    from trainer.cli import _domain_errors  # registered by trainer.cli, loaded after it
    from trainer.dataset import relabel

    if file_ is not None or call_id is None:
        from trainer.relabel_bulk import run_cli

        with _domain_errors():
            run_cli(log_dir, file_, call_id=call_id, user=user, skip_invalid=skip_invalid, as_json=as_json)
        return
    text = answer if answer is not None else sys.stdin.read()
    if not text.strip():
        raise click.UsageError("the corrected answer is empty")
    with _domain_errors():
        event_id = relabel(log_dir, call_id, text, user=user, comment=comment)
    emit({"call_id": call_id, "event_id": event_id}, as_json, f"relabelled {call_id} ({event_id})")
