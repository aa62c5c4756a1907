"""CLI for slow evals: ``shadowtune eval outcomes`` and the ``shadowtune controller`` group.

``outcomes`` is meant to be added to the ``eval`` group (``eval_group.add_command(outcomes)``);
``controller`` is a group of its own (entry point ``shadowtune.commands``).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import click

from evals.drift.guardrail import hold_canary
from evals.online.controller import (
    AdminClient,
    CanaryController,
    CanaryPolicy,
    ControllerError,
    read_decisions,
    read_state,
    set_paused,
)
from evals.online.outcomes import OutcomesError, outcomes_report, route_history
from gateway import durations
from gateway.admin_client import Target
from gateway.clikit.options import gateway_options, handle_errors, json_option, log_dir_option
from gateway.clikit.output import echo_json, emit

target_options = gateway_options
_log_dir_option = log_dir_option


def parse_since(text: str, *, now: float | None = None) -> float:
    """``7d``, ``12h``, ``30m``, ``2w`` ago, or an ISO date/time (UTC if no zone); epoch seconds."""
    at = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    try:
        return durations.parse_moment(text, now=at).timestamp()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("outcomes")
@click.option("--route", required=True, help="Route to report on.")
@click.option(
    "--since", default="7d", show_default=True, help="Start: a duration ago (7d, 12h) or an ISO date."
)
@click.option("--until", "until_", default=None, help="End (exclusive), same forms as --since; default now.")
@click.option("--by", type=click.Choice(["day"]), default=None, help="Break the report down by UTC day.")
@click.option(
    "--expected-share", type=float, default=None, help="Candidate share in percent, for the SRM check."
)
@click.option(
    "--alpha", type=float, default=0.05, show_default=True, help="Error rate of the intervals and tests."
)
@click.option(
    "--sticky-key",
    default="user",
    show_default=True,
    help="The route's sticky key, the unit of analysis: user, session or client_key (else per call).",
)
@click.option(
    "--mde",
    "mdes",
    multiple=True,
    metavar="METRIC=VALUE",
    help="Minimum detectable effect of a metric, in its units (the mSPRT's fixed mixing scale).",
)
@json_option
@_log_dir_option
def outcomes(
    route: str,
    since: str,
    until_: str | None,
    by: str | None,
    expected_share: float | None,
    alpha: float,
    sticky_key: str,
    mdes: tuple[str, ...],
    as_json: bool,
    log_dir: str,
) -> None:
    """Per-variant outcome rates of served calls, with candidate-minus-baseline sequential tests.

    Arms are compared per user (the sticky key) and only within a route-state version
    (constant share); versions are combined, never pooled, and calls from before the
    canary are never compared with canary calls. p-values are Holm-adjusted across metrics.
    """
    from gateway.store import LogStore

    mde = _parse_mde(mdes)
    now = time.time()
    with handle_errors(OutcomesError), LogStore.open(log_dir) as store:
        report = outcomes_report(
            store,
            route,
            parse_since(since, now=now),
            parse_since(until_, now=now) if until_ else None,
            by_day=by == "day",
            expected_share=expected_share / 100 if expected_share is not None else None,
            alpha=alpha,
            sticky_key=sticky_key,
            mde=mde,
            history=route_history(log_dir, route),
        )
    if as_json:
        echo_json(report)
        return
    if not report["periods"]:
        click.echo(f"No served calls for route {route!r} since {report['since']}.")
        return
    for note in report["notes"]:
        click.echo(f"note: {note}")
    for period in report["periods"]:
        click.echo(_format_period(route, period, report, alpha))


def _parse_mde(values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for v in values:
        name, _, number = v.partition("=")
        try:
            out[name.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not METRIC=VALUE", param_hint="--mde") from None
        if not name.strip() or out[name.strip()] <= 0:
            raise click.BadParameter(f"{v!r}: the effect must be a positive number", param_hint="--mde")
    return out


_RATES = ("thumbs_up_rate", "thumbs_down_rate", "regeneration_rate", "error_rate", "flag_rate")


def _format_period(route: str, period: dict[str, Any], report: dict[str, Any], alpha: float) -> str:
    title = f"route {route}: " + (period["day"] or f"since {report['since']}")
    title += f" (unit: {report['unit']}, {period['compared_versions']} compared route-state version(s))"
    lines = [title, f"{'':24}{'baseline':>26}{'candidate':>26}"]
    variants = period["variants"]
    if not variants:
        return title + "\n"
    names = ["calls"] + [
        k for k in next(iter(variants.values())) if k not in ("calls", "units", "unkeyed_calls")
    ]

    def cell(v: dict[str, Any] | None, name: str) -> str:
        if v is None or name not in v or v[name] is None:
            return "-"
        x = v[name]
        if name == "calls":
            return str(x)
        if not isinstance(x, dict):
            return f"{x:.4g}"
        if x["value"] is None:
            return "-"
        if name in _RATES:
            lo, hi = x["ci"]
            return f"{100 * x['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
        return f"{x['value']:.4g} (n={x['n']})"

    for name in names:
        lines.append(
            f"  {name:22}{cell(variants.get('baseline'), name):>26}"
            f"{cell(variants.get('candidate'), name):>26}"
        )
    if period.get("differences"):
        lines.append(
            f"  candidate - baseline, combined over versions (always-valid {100 * (1 - alpha):g}% CI, "
            "mSPRT p, Holm-adjusted):"
        )
        lines.extend(_format_differences(period["differences"]))
    for v in period.get("versions", []) if len(period.get("versions", [])) > 1 else []:
        lines.append(
            f"  version {v['version']} ({v['mode']}, {v['from'][:16]} .. {v['to'][:16]}), calls "
            f"{v['calls'].get('baseline', 0)}/{v['calls'].get('candidate', 0)}, candidate share of units "
            f"{100 * v['observed_share']:.2f}%:"
        )
        lines.extend(_format_differences(v["differences"]))
    for x in period.get("excluded", []):
        calls = ", ".join(f"{n} {k}" for k, n in x["calls"].items())
        lines.append(f"  not compared: version {x['version']} ({calls} calls): {x['reason']}")
    for who, r in period.get("reviewer", {}).items():
        choices = ", ".join(f"{k} {n}" for k, n in sorted(r["choices"].items()))
        lines.append(
            f"  reviewers on {who} (not in the rates): {r['calls']} calls, thumbs up {r['thumbs_up']}, "
            f"down {r['thumbs_down']}" + (f", choices {choices}" if choices else "")
        )
    for s in period["srm"]["versions"] if "srm" in period else []:
        obs = f"{100 * s['observed_share']:.2f}%" if s["observed_share"] is not None else "n/a"
        flag = "MISMATCH" if s["mismatch"] else "ok"
        which = f" of version {s['version']}" if s["version"] is not None else ""
        lines.append(
            f"  split{which}: expected {100 * s['expected_share']:g}%, observed {obs} of "
            f"{s['units']['baseline'] + s['units']['candidate']} units, chi2 {s['chi2']:.3g}, "
            f"p {s['p_value']:.3g}: {flag}"
        )
    return "\n".join(lines) + "\n"


def _format_differences(diffs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for d in diffs:
        lo, hi = d["ci"]
        ci = f"[{lo:+.4g}, {hi:+.4g}]" if lo is not None and hi is not None else "[n/a]"
        p = (
            "p=n/a"
            if d["tau"] is None
            else f"p={d['p_holm'] if d['p_holm'] is not None else d['p_value']:.3g}"
        )
        lines.append(f"    {d['metric']:22}{d['diff']:+12.4g} {ci:>28}  {p}  {d['verdict']}")
    return lines


@click.group("controller")
def controller() -> None:
    """Canary controller: promote or roll back a candidate from outcome statistics."""


@controller.command("run")
@click.option("--route", required=True, help="Route to control.")
@click.option("--once", is_flag=True, help="Check once and exit.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Policy file (YAML or JSON); defaults apply without one.",
)
@json_option
@_log_dir_option
@target_options
def run(
    route: str,
    once: bool,
    target: Target,
    policy_file: str | None,
    as_json: bool,
    log_dir: str,
) -> None:
    """Check the route's canary every interval; roll back, advance or wait."""
    try:
        policy = CanaryPolicy.from_file(policy_file, route) if policy_file else CanaryPolicy(route=route)
        with AdminClient(target.url, target.token) as admin:
            ctl = CanaryController(policy, admin, log_dir, route, state=target.state, hold=hold_canary)
            if once:
                _echo_decision(ctl.check(), as_json)
                return
            while True:
                try:
                    _echo_decision(ctl.check(), as_json)
                except ControllerError as exc:
                    click.echo(f"Error: {exc}", err=True)
                time.sleep(policy.check_interval_s)
    except ControllerError as exc:
        raise click.ClickException(str(exc)) from exc


def _echo_decision(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(record, lines=True)  # one object a line: ``run`` keeps printing
        return
    applied = "" if record.get("applied", True) else " (not applied)"
    if record.get("error"):
        applied = f" (not applied: {record['error']})"
    click.echo(f"{record['action']}{applied}: {record.get('reason', '')}")
    fc = record.get("forecast")
    if record.get("action") == "wait" and fc:
        click.echo("  " + describe_forecast(fc))


def describe_forecast(fc: dict[str, Any]) -> str:
    """One line: the calls (and time) a decision should still take."""
    if fc.get("expected_calls") is None:
        return "forecast: no decision in sight at the current estimates (more data, or a smaller margin)"
    when = ""
    if fc.get("expected_seconds") is not None:
        when = f", about {fc['expected_seconds'] / 3600:.1f} h at the current traffic"
    return f"forecast: {fc['likely']} after about {fc['expected_calls']:.0f} more calls{when}"


@controller.command("pause")
@click.argument("route")
@click.option("--reason", default=None, help="Why, for the decision log.")
@_log_dir_option
@target_options
@json_option
@handle_errors(ControllerError, OSError)
def pause(route: str, reason: str | None, log_dir: str, target: Target, as_json: bool) -> None:
    """Pause the controller for ROUTE (it keeps checking but never acts)."""
    set_paused(target.state, route, True, reason=reason)
    emit({"route": route, "paused": True}, as_json, f"Controller paused for route {route}.")


@controller.command("resume")
@click.argument("route")
@_log_dir_option
@target_options
@json_option
@handle_errors(ControllerError, OSError)
def resume(route: str, log_dir: str, target: Target, as_json: bool) -> None:
    """Resume the controller for ROUTE."""
    set_paused(target.state, route, False)
    emit({"route": route, "paused": False}, as_json, f"Controller resumed for route {route}.")


@controller.command("status")
@click.argument("route")
@click.option("-n", "--count", default=5, show_default=True, help="Recent decisions to show.")
@json_option
@_log_dir_option
@target_options
def status(route: str, count: int, as_json: bool, log_dir: str, target: Target) -> None:
    """The controller's state for ROUTE and its recent decisions."""
    with handle_errors(ControllerError):
        state = read_state(target.state, route)
        decisions = read_decisions(target.state, route, limit=count)
    if as_json:
        echo_json({"route": route, "state": state, "decisions": decisions})
        return
    click.echo(
        f"route {route}: {'PAUSED' if state.get('paused') else 'active'}"
        + (
            f" (by {state['paused_by']}: {state.get('paused_reason') or 'no reason'})"
            if state.get("paused")
            else ""
        )
    )
    if state.get("last_action"):
        click.echo(f"last check: {_when(state.get('last_check_at'))}, {state['last_action']}")
    for rec in decisions:
        click.echo(f"  {_when(rec.get('ts'))}  {rec.get('action')}: {rec.get('reason') or ''}")


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
