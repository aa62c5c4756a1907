"""One output-drift check of a route's window, as ``shadowtune drift check`` runs it next to the input one."""

from __future__ import annotations

import datetime as dt
from typing import Any

from evals.drift.guardrail import write_guardrail
from evals.drift.output import (
    OutputDriftConfig,
    check_outputs,
    dataset_outputs,
    load_outputs,
    save_output_report,
)
from gateway.store import LogStore


def check_window_outputs(
    store: LogStore,
    log_dir: str,
    route: str,
    reference: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    reference_length: dt.timedelta,
    alpha: float = 0.05,
    save: bool = True,
) -> dict[str, Any]:
    """Every variant's outputs in ``[start, end)`` against ``reference`` (``dataset:NAME`` or a window
    before ``start``) and each other; stored with its guardrail record unless ``save`` is false.

    Only the newest candidate model's calls count: a window spanning a redeploy must not blame
    the new model for what the old one wrote."""
    current = load_outputs(store, route, start, end)
    newest = next((o.model for o in current if o.variant == "candidate"), None)
    current = [o for o in current if o.variant != "candidate" or o.model == newest]
    if reference.startswith("dataset:"):
        ref = dataset_outputs(log_dir, reference.split(":", 1)[1])
        label = reference
    else:
        ref = [o for o in load_outputs(store, route, start - reference_length, start) if o.served]
        label = f"served outputs {(start - reference_length).isoformat()} .. {start.isoformat()}"
    report = check_outputs(
        current,
        ref,
        OutputDriftConfig(alpha=alpha),
        route=route,
        reference_label=label,
        current_label=f"{start.isoformat()} .. {end.isoformat()}",
    )
    data = report.to_dict()
    if save:
        data["stored_at"] = str(save_output_report(log_dir, report))
        write_guardrail(log_dir, data)
    return data
