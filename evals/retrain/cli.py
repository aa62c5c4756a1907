"""``shadowtune triggers pause|resume|cancel|history``, and one round of ``triggers run`` (`run_round`).

The commands are added to the ``triggers`` group of `evals.cli`. A round, per route with a
policy: the auto-canary look at the shadow candidate (`evals.retrain.promote`), then the
trigger evaluation and, when it fires, the pipeline (`evals.retrain.triggers.run`). A route
whose pipeline runs elsewhere answers ``busy``; a paused one ``paused``; one backing off
after a rejection ``backoff``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from evals.errors import EvalError
from gateway.admin_client import Target
from gateway.clikit.options import gateway_options, handle_errors, json_option, log_dir_option
from gateway.clikit.output import emit
from gateway.store import LogStore


def run_round(
    policies: Mapping[str, Any],
    log_dir: str,
    target: Target,
    *,
    admin_url: str,
    dry_run: bool = False,
    force: bool = False,
    api_key: str | None = None,
) -> list[dict[str, Any]]:
    """One evaluation of every policy (and the pipeline where one fires); returns the records."""
    from evals.retrain.promote import maybe_promote
    from evals.retrain.triggers import Pipeline, RunBusy, run

    records = []
    with LogStore.open(log_dir) as store:
        for policy in policies.values():
            if not dry_run:
                promoted = maybe_promote(
                    policy,
                    log_dir,
                    target.state,
                    admin_url=admin_url,
                    admin_token=target.token,
                    api_key=api_key,
                )
                if promoted is not None and promoted.get("status") not in ("idle",):
                    records.append(promoted)
            pipeline = Pipeline.from_policy(policy, admin_url=admin_url, admin_token=target.token)
            try:
                rec = run(
                    policy,
                    log_dir,
                    pipeline,
                    dry_run=dry_run,
                    force=force,
                    store=store,
                    state_at=target.state,
                )
            except RunBusy as exc:
                rec = {"route": policy.route, "status": "busy", "reasons": [str(exc)], "steps": []}
            sig = rec.get("signals") or {}
            if rec.get("status") == "not_triggered" and rec.get("reasons"):
                rec["status"] = (
                    "paused" if sig.get("paused") else "backoff" if sig.get("backoff") else rec["status"]
                )
            records.append(rec)
    return records


def _emit(data: Any, as_json: bool, text: str) -> None:
    emit(data, as_json, text)


def _common(fn: Any) -> Any:
    fn = json_option(fn)
    fn = log_dir_option(fn)
    fn = click.option("--route", required=True, help="The route.")(fn)
    return gateway_options(fn)


def _guard(fn: Any) -> Any:
    return handle_errors(EvalError)(fn)


@click.command(name="pause")
@click.option("--reason", help="Why (kept in the state).")
@click.option("--by", "who", help="Who pauses (default $USER).", envvar="USER")
@_common
@_guard
def pause(
    route: str, reason: str | None, who: str | None, log_dir: str, as_json: bool, target: Target
) -> None:
    """Stop firing this route's triggers (signals keep counting) until `triggers resume`."""
    from evals.retrain.control import set_paused

    state = set_paused(target.state, route, True, by=who, reason=reason)
    _emit(state, as_json, f"{route}: triggers paused by {who or 'an operator'}")


@click.command(name="resume")
@click.option("--by", "who", help="Who resumes (default $USER).", envvar="USER")
@_common
@_guard
def resume(route: str, who: str | None, log_dir: str, as_json: bool, target: Target) -> None:
    """Let this route's triggers fire again."""
    from evals.retrain.control import set_paused

    state = set_paused(target.state, route, False, by=who)
    _emit(state, as_json, f"{route}: triggers resumed")


@click.command(name="cancel")
@click.option("--kill", is_flag=True, help="Also send SIGTERM to the run's process (same host only).")
@click.option("--by", "who", help="Who cancels (default $USER).", envvar="USER")
@_common
@_guard
def cancel(route: str, kill: bool, who: str | None, log_dir: str, as_json: bool, target: Target) -> None:
    """Stop the route's running pipeline at its next step or progress update."""
    from evals.retrain.control import request_cancel

    out = request_cancel(target.state, route, by=who, kill=kill)
    text = f"{route}: {out['reason']}" if not out["cancelled"] else f"{route}: cancelling {out['cancelled']}"
    _emit(out, as_json, text)


@click.command(name="history")
@click.option("-n", "--count", default=20, show_default=True)
@_common
@_guard
def history(route: str, count: int, log_dir: str, as_json: bool, target: Target) -> None:
    """The route's runs and auto-canary looks, newest first."""
    from evals.retrain.state import load_runs

    runs = list(reversed(load_runs(target.state, route)))[:count]
    lines = [
        f"{r.get('run_id')}  {str(r.get('started_at') or '')[:19]}  {r.get('kind', 'train'):<7} {r.get('status'):<9} "
        + ("; ".join(r.get("reasons") or []) or str(r.get("reason") or ""))[:110]
        for r in runs
    ]
    _emit(runs, as_json, "\n".join(lines) or f"no runs for {route}")


COMMANDS = (pause, resume, cancel, history)
