"""``shadowtune report``: reports that answer a decision from the route's own traffic.

``report worth-it --route R`` (`evals.worth_it`): cost, speed and quality per variant and the
monthly projection at the current share and at 100 %. Prices of calls logged without one come
from the upstream settings (``--config`` or ``$SHADOWTUNE_CONFIG``, ``upstreams.<name>.price_in``
/ ``price_out``, USD per million tokens).
"""

from __future__ import annotations

import datetime as dt

import click

from evals.online.outcomes import OutcomesError
from evals.worth_it import Prices, format_worth_it, worth_it_report
from gateway.clikit.options import MOMENT, handle_errors, json_option, load_settings, log_dir_option
from gateway.clikit.output import emit
from gateway.store import LogStore


@click.group(name="report")
def report() -> None:
    """Reports for decisions: is the candidate worth it."""


def _prices(config: str | None) -> Prices:
    settings = load_settings(config)
    return {name: (up.price_in, up.price_out) for name, up in settings.upstreams.items()}


@report.command(name="worth-it")
@click.option("--route", required=True, help="Route to report on.")
@click.option(
    "--since", type=MOMENT, default="7d", show_default=True, help="Window start: 7d, 12h, or an ISO date."
)
@click.option(
    "--until", type=MOMENT, default=None, help="Window end (default now): a duration ago or an ISO date."
)
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="Settings file for prices.")
@click.option("--alpha", default=0.05, show_default=True, help="Error rate of the intervals.")
@log_dir_option
@json_option
@handle_errors(OutcomesError)
def worth_it_cmd(
    route: str,
    since: dt.datetime,
    until: dt.datetime | None,
    config: str | None,
    alpha: float,
    log_dir: str,
    as_json: bool,
) -> None:
    """Per variant: volume, tokens, cost per 1,000 calls, latency, quality; the monthly projection."""
    prices = _prices(config)
    with LogStore.open(log_dir) as store:
        data = worth_it_report(store, route, since, until, prices=prices, log_dir=log_dir, alpha=alpha)
    emit(data, as_json, format_worth_it)
