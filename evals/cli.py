"""``shadowtune eval``, ``shadowtune drift`` and ``shadowtune triggers``: click groups loaded by the root CLI.

Every command takes ``--log-dir`` and ``--json`` (`gateway.clikit.options`). Errors of the
evals package become one-line `click.ClickException`s here and nowhere else. ``eval outcomes``
(`evals.outcomes_cli`) joins the ``eval`` group at the bottom of this module.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from evals import _lookups, _reports
from evals.errors import EvalError, JudgeError
from evals.outcomes_cli import outcomes
from evals.retrain.cli import COMMANDS as RETRAIN_COMMANDS
from gateway.admin_client import Target
from gateway.clikit.options import (
    DURATION,
    MOMENT,
    admin_token_option,
    default_url,
    gateway_options,
    handle_errors,
    json_option,
    log_dir_option,
)
from gateway.clikit.output import emit
from gateway.store import LogStore

F = TypeVar("F", bound=Callable[..., Any])
target_options = gateway_options


def _common(fn: F) -> F:
    """``--log-dir``, ``--json``, and the evals' errors as one-line messages."""
    return log_dir_option(json_option(handle_errors(EvalError)(fn)))


def _client_options(fn: F) -> F:
    fn = click.option("--concurrency", default=8, show_default=True, help="Judge calls in flight.")(fn)
    fn = click.option(
        "--api-key", envvar="SHADOWTUNE_API_KEY", help="Key for --url (env SHADOWTUNE_API_KEY)."
    )(fn)
    fn = click.option(
        "--url",
        default=lambda: default_url() + "/v1",
        show_default="$SHADOWTUNE_URL/v1 or http://127.0.0.1:8000/v1",
        help="OpenAI-compatible base URL (the gateway).",
    )(fn)
    return fn


_emit = emit


@contextmanager
def _progress(length: int, label: str) -> Iterator[Callable[[int], None]]:
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update


def _loopback(url: str) -> bool:
    import httpx

    return httpx.URL(url).host in ("127.0.0.1", "localhost", "::1")


def _window_length(reference: str, default: dt.timedelta) -> dt.timedelta:
    from gateway.durations import parse_duration

    if ":" not in reference:
        return default
    try:
        return parse_duration(reference.split(":", 1)[1])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--reference") from None


# -- eval ----------------------------------------------------------------------------------
@click.group(name="eval")
def eval_group() -> None:
    """Fast evals: pairwise judges and deterministic metrics."""


@eval_group.command(name="judge")
@click.option("--route", required=True, help="Route whose variants are compared.")
@click.option(
    "--source", default="shadow", show_default=True, help="shadow, or dataset:NAME (its test split)."
)
@click.option(
    "--judges",
    default="gpt-4o-mini",
    show_default=True,
    help="Comma-separated judge models (a jury if several).",
)
@click.option("--both-orders", is_flag=True, help="Ask every item in both orders; flips count as ties.")
@click.option("--seed", default=0, show_default=True, help="Seed of the per-item order.")
@click.option(
    "--since",
    type=MOMENT,
    default=None,
    help="Shadow pairs of the last 24h, 7d, ... or since an ISO date (default: all).",
)
@click.option("--limit", default=500, show_default=True, help="Most items to judge.")
@click.option(
    "--criteria",
    type=click.Path(exists=True, dir_okay=False),
    help="Rubric / pass-fail criteria (YAML or JSON).",
)
@click.option(
    "--prices", type=click.Path(exists=True, dir_okay=False), help="Prices per million tokens (YAML or JSON)."
)
@click.option("--max-cost", type=float, help="Refuse to start when the estimate is above this many USD.")
@click.option(
    "--allow-same-family", is_flag=True, help="Allow judges of a contestant's model family (flagged)."
)
@click.option(
    "--family",
    "families",
    multiple=True,
    help="MODEL=FAMILY, for models no upstream's family setting or registry lineage covers.",
)
@click.option("--baseline-model", help="Baseline model (dataset source).")
@click.option("--candidate-model", help="Candidate model (dataset source).")
@click.option("--no-cache", is_flag=True, help="Ask again even when an answer is cached.")
@click.option(
    "--gateway-families/--no-gateway-families",
    default=True,
    show_default=True,
    help="Read model families from the gateway's config (its admin API).",
)
@click.option(
    "--admin-url", help="Gateway admin base URL (default: --url without /v1 when --url is on loopback)."
)
@admin_token_option
@_client_options
@_common
def judge_cmd(
    route: str,
    source: str,
    judges: str,
    both_orders: bool,
    seed: int,
    since: dt.datetime | None,
    limit: int,
    criteria: str | None,
    prices: str | None,
    max_cost: float | None,
    allow_same_family: bool,
    families: tuple[str, ...],
    baseline_model: str | None,
    candidate_model: str | None,
    no_cache: bool,
    gateway_families: bool,
    admin_url: str | None,
    admin_token: str | None,
    url: str,
    api_key: str | None,
    concurrency: int,
    log_dir: str,
    as_json: bool,
) -> None:
    """Compare baseline and candidate answers with LLM judges."""
    from evals.golden.sets import dataset_pairs, read_dataset
    from evals.judge.pairwise import (
        ChatClient,
        Criteria,
        JudgeOptions,
        PriceTable,
        ResponseCache,
        ajudge,
        shadow_pairs,
    )

    if admin_url is None and _loopback(url):
        admin_url = url.rstrip("/").removesuffix("/v1")
    resolved = _lookups.judge_families(log_dir, admin_url, admin_token, gateway_families, families)
    options = JudgeOptions(
        judges=tuple(j.strip() for j in judges.split(",") if j.strip()),
        both_orders=both_orders,
        seed=seed,
        allow_same_family=allow_same_family,
        families=resolved,
        criteria=Criteria.from_file(criteria) if criteria else Criteria(),
        prices=PriceTable.from_file(prices) if prices else PriceTable(),
    )
    cache = ResponseCache(None) if no_cache else ResponseCache.for_log_dir(log_dir)

    def client() -> ChatClient:
        return ChatClient(url, api_key, concurrency=concurrency, cache=cache)

    if source == "shadow":
        with LogStore.open(log_dir) as store:
            pairs = shadow_pairs(store, route, since=since, limit=limit)
        if not pairs:
            raise click.ClickException(f"no shadow pairs for route {route}: is the route in shadow mode?")
    elif source.startswith("dataset:"):
        if not (baseline_model and candidate_model):
            raise click.UsageError("--source dataset:NAME needs --baseline-model and --candidate-model")
        examples = read_dataset(log_dir, source.split(":", 1)[1])[:limit]
        with _progress(2 * len(examples), "generating answers") as tick:
            pairs = asyncio.run(
                dataset_pairs(examples, baseline_model, candidate_model, client(), on_progress=tick)
            )
    else:
        raise click.BadParameter("use shadow or dataset:NAME", param_hint="--source")

    def on_estimate(est: Any) -> None:
        price = f"${est.usd:.4f} (at most ${est.max_usd:.4f})" + (
            f", no price for {', '.join(est.unpriced)}" if est.unpriced else ""
        )
        click.echo(
            f"{len(pairs)} items, {est.calls} judge calls ({est.cached_calls} cached), estimated {price}",
            err=True,
        )
        if max_cost is not None and est.usd > max_cost:
            raise JudgeError(f"estimated cost ${est.usd:.4f} is above --max-cost ${max_cost:.4f}")

    from evals.judge.pairwise import plan_calls

    with _progress(len(plan_calls(pairs, options)), "judging") as tick:
        report = asyncio.run(
            ajudge(
                pairs,
                options,
                client(),
                on_progress=tick,
                on_estimate=on_estimate,
                route=route,
                source=source,
            )
        )
    folder = _reports.save_judge_report(log_dir, report)
    summary = report.summary()
    summary["stored_at"] = str(folder)
    _emit(summary, as_json, _reports.format_judge_summary)


@eval_group.command(name="golden")
@click.option("--model", required=True, help="Model to answer the examples (through --url).")
@click.option("--dataset", help="Dataset NAME under <log-dir>/datasets.")
@click.option("--split", default="test", show_default=True, help="Dataset split.")
@click.option(
    "--golden",
    "golden_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Golden file (JSONL/JSON/YAML).",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    default=("exact_match", "squad_exact_match", "token_f1"),
    show_default=True,
    help="exact_match, squad_exact_match, token_f1, json_valid, json_fields, classification or "
    "module:function; repeatable.",
)
@click.option("--limit", type=int, help="Most examples.")
@click.option(
    "--baseline",
    "baseline",
    help="Model scored on the same examples next to --model (default for a dataset: its route, "
    "when the gateway says the route's baseline serves it).",
)
@click.option("--no-baseline", is_flag=True, help="Score --model alone (the report says so).")
@admin_token_option
@_client_options
@_common
def golden_cmd(
    model: str,
    dataset: str | None,
    split: str,
    golden_file: str | None,
    metrics: tuple[str, ...],
    limit: int | None,
    baseline: str | None,
    no_baseline: bool,
    admin_token: str | None,
    url: str,
    api_key: str | None,
    concurrency: int,
    log_dir: str,
    as_json: bool,
) -> None:
    """Score a model on a test split or golden file (deterministic metrics)."""
    from evals.golden.metrics import load_metric
    from evals.golden.sets import check_references, read_dataset, read_golden, run_golden
    from evals.judge.pairwise import ChatClient, ResponseCache

    if bool(dataset) == bool(golden_file):
        raise click.UsageError("give exactly one of --dataset and --golden")
    for name in metrics:
        load_metric(name)  # fail before any call
    if dataset:
        examples, source = read_dataset(log_dir, dataset, split=split), f"dataset:{dataset}:{split}"
    else:
        assert golden_file is not None
        examples, source = read_golden(golden_file), f"golden:{golden_file}"
    examples = examples[:limit] if limit else examples
    check_references(examples, source)
    if baseline is None and not no_baseline:
        baseline = _lookups.route_baseline(log_dir, dataset, url, admin_token) if dataset else None
        if baseline is None:
            raise click.UsageError(
                "a fast eval scores the baseline on the same examples next to the candidate: pass "
                "--baseline MODEL (a model name the gateway answers with the prompted baseline), or --no-baseline"
            )
    client = ChatClient(url, api_key, concurrency=concurrency, cache=ResponseCache.for_log_dir(log_dir))
    asks = len(examples) * (2 if baseline else 1)
    with _progress(asks, f"asking {model}" + (f" and {baseline}" if baseline else "")) as tick:
        report = run_golden(
            examples,
            model,
            metrics,
            client,
            source=source,
            baseline=None if no_baseline else baseline,
            baseline_note="--no-baseline" if no_baseline else None,
            on_progress=tick,
        )
    run_id, folder = _reports.save_golden_report(log_dir, report)
    summary = {"run_id": run_id, **report.summary(), "stored_at": str(folder)}
    _emit(summary, as_json, _reports.format_golden_summary)


@eval_group.command(name="runs")
@click.option("--kind", type=click.Choice(["judge", "golden"]), default="judge", show_default=True)
@click.option("-n", "--count", default=20, show_default=True)
@_common
def runs_cmd(kind: str, count: int, log_dir: str, as_json: bool) -> None:
    """List stored eval runs, newest first."""
    runs = _reports.list_runs(log_dir, kind)[:count]

    def text(rs: list[dict[str, Any]]) -> str:
        if not rs:
            return f"no {kind} runs in {log_dir}"
        if kind == "golden":
            return "\n".join(f"{r['run_id']}  {r['model']}  {r['source']}  n {r['n']}" for r in rs)
        return "\n".join(
            f"{r['run_id']}  {r.get('route')}  {r['n_judged']} items  win {r['win_rate']:.1%}  "
            f"tie {r['tie_rate']:.1%}  loss {r['loss_rate']:.1%}"
            for r in rs
        )

    _emit(runs, as_json, text)


# -- drift ---------------------------------------------------------------------------------
@click.group()
def drift() -> None:
    """Is live traffic drifting away from what the model learned from?"""


@drift.command(name="check")
@click.option("--route", required=True)
@click.option(
    "--reference",
    default="window",
    show_default=True,
    help="window (the --reference-window before the current one), window:7d, or dataset:NAME.",
)
@click.option(
    "--reference-window", type=DURATION, default="7d", show_default=True, help="Length of a window reference."
)
@click.option(
    "--current", type=DURATION, default="24h", show_default=True, help="Current window: 30m, 1.5h, 24h, 7d..."
)
@click.option("--until", type=MOMENT, help="End of the current window (an ISO time, or 2h ago; default now).")
@click.option("--alpha", default=0.05, show_default=True, help="False alarm rate of the whole report.")
@click.option(
    "--rounds", default=99, show_default=True, help="Calibration rounds of the classifier threshold."
)
@click.option("--max-current", default=500, show_default=True, help="Most current samples compared.")
@click.option("--max-reference", default=1000, show_default=True, help="Most reference samples compared.")
@click.option("--no-save", is_flag=True, help="Do not store the report.")
@click.option("--fail-on-drift", is_flag=True, help="Exit with status 3 when drift is found.")
@_common
def drift_check(
    route: str,
    reference: str,
    reference_window: dt.timedelta,
    current: dt.timedelta,
    until: dt.datetime | None,
    alpha: float,
    rounds: int,
    max_current: int,
    max_reference: int,
    no_save: bool,
    fail_on_drift: bool,
    log_dir: str,
    as_json: bool,
) -> None:
    """Compare the current window's traffic with a reference and store the report."""
    from pathlib import Path

    from evals.drift import (
        DriftConfig,
        check_drift,
        load_dataset_reference,
        load_window,
        save_report,
    )

    end = until or dt.datetime.now(dt.UTC)
    start = end - current
    with LogStore.open(log_dir) as store:
        cur = load_window(store, route, start, end)
        if reference.startswith("dataset:"):
            ref = load_dataset_reference(log_dir, reference.split(":", 1)[1])
            ref_label = reference
        elif reference == "window" or reference.startswith("window:"):
            length = _window_length(reference, reference_window)
            ref = load_window(store, route, start - length, start)
            ref_label = f"{(start - length).isoformat()} .. {start.isoformat()}"
        else:
            raise click.BadParameter("use window, window:7d or dataset:NAME", param_hint="--reference")
        from evals.drift.run import check_window_outputs

        ref_length = length if reference.startswith("window") else reference_window
        outputs = check_window_outputs(
            store,
            log_dir,
            route,
            reference,
            start,
            end,
            reference_length=ref_length,
            alpha=alpha,
            save=not no_save,
        )
    config = DriftConfig(
        alpha=alpha, calibration_rounds=rounds, max_current=max_current, max_reference=max_reference
    )
    report = check_drift(
        ref,
        cur,
        config,
        route=route,
        reference_label=ref_label,
        current_label=f"{start.isoformat()} .. {end.isoformat()}",
        cache_dir=Path(log_dir) / "drift" / "_calibration",
    )
    data = report.to_dict()
    if not no_save:
        data["stored_at"] = str(save_report(log_dir, report))
    data["outputs"] = outputs
    from evals.drift.text import format_output_report

    _emit(
        data, as_json, lambda d: _reports.format_drift_report(d) + "\n" + format_output_report(d["outputs"])
    )
    if fail_on_drift and (report.drifted or outputs["drifted"]):
        sys.exit(3)


@drift.command(name="history")
@click.option("--route", required=True)
@click.option("-n", "--count", default=20, show_default=True)
@_common
def drift_history(route: str, count: int, log_dir: str, as_json: bool) -> None:
    """List stored drift reports of a route, newest first."""
    from evals.drift import drift_scores, load_reports

    reports = list(reversed(load_reports(log_dir, route)))[:count]
    rows = [
        {
            "report_id": r["report_id"],
            "created_at": r["created_at"],
            "drifted": r["drifted"],
            "drifted_checks": [c["name"] for c in r["checks"] if c["drifted"]],
            "scores": drift_scores(r),
        }
        for r in reports
    ]

    def text(rs: list[dict[str, Any]]) -> str:
        if not rs:
            return f"no drift reports for {route}"
        return "\n".join(
            f"{r['report_id']}  {r['created_at'][:19]}  {'DRIFT' if r['drifted'] else 'ok   '}  "
            + ", ".join(r["drifted_checks"])
            for r in rs
        )

    _emit(rows, as_json, text)


# -- triggers ------------------------------------------------------------------------------
@click.group()
def triggers() -> None:
    """Retraining triggers: drift, new data or a breached guardrail start a new round."""


def _policy_option(fn: F) -> F:
    return click.option(
        "--policy",
        "policy_file",
        type=click.Path(dir_okay=False),
        help="Policies file (default <log-dir>/triggers/policies.yaml).",
    )(fn)


def _policies(log_dir: str, policy_file: str | None, route: str | None) -> dict[str, Any]:
    from evals.retrain.triggers import load_policies, policies_path

    policies = load_policies(policy_file or policies_path(log_dir))
    if route is not None:
        if route not in policies:
            raise click.ClickException(f"no trigger policy for route {route}")
        policies = {route: policies[route]}
    return policies


@triggers.command(name="status")
@click.option("--route", help="Only this route.")
@_policy_option
@_common
@target_options
def triggers_status(
    route: str | None, policy_file: str | None, log_dir: str, as_json: bool, target: Target
) -> None:
    """Per route: the signals, whether a trigger would fire now, and the last run."""
    from evals.retrain.text import format_status
    from evals.retrain.triggers import status

    entries = status(log_dir, _policies(log_dir, policy_file, route), state_at=target.state)
    if route is not None:
        entries = [e for e in entries if e["route"] == route]
    _emit(entries, as_json, format_status)


@triggers.command(name="run")
@click.option("--route", help="Only this route (default: every route with a policy).")
@click.option("--dry-run", is_flag=True, help="Show what would happen; write nothing.")
@click.option("--force", is_flag=True, help="Run the pipeline even if no trigger fires.")
@click.option(
    "--every",
    type=float,
    help="Keep running: evaluate every this many seconds, once per interval across every process and host "
    "running it (a lease in the state backend).",
)
@click.option("--admin-url", hidden=True, help="Former name of --url.")
@_policy_option
@_common
@target_options
def triggers_run(
    route: str | None,
    dry_run: bool,
    force: bool,
    every: float | None,
    admin_url: str | None,
    policy_file: str | None,
    log_dir: str,
    as_json: bool,
    target: Target,
) -> None:
    """Evaluate the trigger policies and run the retraining pipeline where one fires."""
    from evals.retrain.cli import run_round
    from evals.retrain.text import format_run
    from gateway.progress import set_quiet

    set_quiet(as_json)
    policies = _policies(log_dir, policy_file, route)
    if not policies:
        raise click.ClickException(f"no trigger policies in {policy_file or log_dir + '/triggers'}")
    url = admin_url or target.url

    def once() -> list[dict[str, Any]]:
        records = run_round(policies, log_dir, target, admin_url=url, dry_run=dry_run, force=force)
        _emit(records, as_json, lambda rs: "\n".join(format_run(r) for r in rs))
        return records

    if every is None:
        if any(r["status"] == "failed" for r in once()):
            sys.exit(1)
        return
    import asyncio

    from gateway.jobs import Periodic
    from gateway.state import open_backend

    job = Periodic(open_backend(target.state), "triggers", every, once)
    asyncio.run(job.run())


eval_group.add_command(outcomes)
for _command in RETRAIN_COMMANDS:  # triggers pause / resume / cancel / history
    triggers.add_command(_command)
