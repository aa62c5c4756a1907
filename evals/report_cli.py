"""``shadowtune report``: reports that answer a decision from the route's own traffic.

``report worth-it --route R`` (`evals.worth_it`): cost, speed and quality per variant and the
monthly projection at the current share and at 100 %. Prices of calls logged without one come
from the upstream settings (``--config`` or ``$SHADOWTUNE_CONFIG``, ``upstreams.<name>.price_in``
/ ``price_out``, USD per million tokens).
"""

from __future__ import annotations

import json

import click

from evals.online.outcomes import OutcomesError
from evals.outcomes_cli import parse_since
from evals.worth_it import Prices, format_worth_it, worth_it_report
from gateway.store import LogStore, LogStoreError
from gateway.store.layout import default_log_dir


@click.group(name="report")
def report() -> None:
    """Reports for decisions: is the candidate worth it."""


def _prices(config: str | None) -> Prices:
    from gateway.config import Settings

    try:
        settings = Settings.load(config)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the settings for prices: {exc}") from exc
    return {name: (up.price_in, up.price_out) for name, up in settings.upstreams.items()}


@report.command(name="worth-it")
@click.option("--route", required=True, help="Route to report on.")
@click.option("--since", default="7d", show_default=True, help="Window start: 7d, 12h, or an ISO date.")
@click.option("--until", default=None, help="Window end (default now): a duration ago or an ISO date.")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="Settings file for prices.")
@click.option("--alpha", default=0.05, show_default=True, help="Error rate of the intervals.")
@click.option("--log-dir", default=default_log_dir, show_default="$SHADOWTUNE_LOG_DIR or ./shadowtune-data")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def worth_it_cmd(
    route: str, since: str, until: str | None, config: str | None, alpha: float, log_dir: str, as_json: bool
) -> None:
    """Per variant: volume, tokens, cost per 1,000 calls, latency, quality; the monthly projection."""
    prices = _prices(config)
    try:
        with LogStore.open(log_dir) as store:
            data = worth_it_report(
                store,
                route,
                parse_since(since),
                parse_since(until) if until else None,
                prices=prices,
                log_dir=log_dir,
                alpha=alpha,
            )
    except (LogStoreError, OutcomesError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(data, indent=2, default=str) if as_json else format_worth_it(data))
