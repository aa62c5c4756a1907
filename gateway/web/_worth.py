"""The dashboard's "Worth it?" panel: per route, what each variant costs and how fast it is.

The figures are `gateway.store.usage.route_worth`'s, the computation ``shadowtune report
worth-it`` prints (same definitions, same numbers on the same log and window), over the
dashboard's period. Prices for calls logged without a cost come from the gateway's own
settings (``upstreams.<name>.price_in`` / ``price_out``); a figure that cannot be computed is
shown as missing with the reason, never as zero. Quality is left to the outcome table and
charts next to it (the panel links there); the report adds the fast evals and the quality
difference at each share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.store import usage

if TYPE_CHECKING:
    from gateway.store.reader import LogStore


def prices(upstreams: Mapping[str, Any]) -> usage.Prices:
    """Upstream name → (price_in, price_out), USD per million tokens, from the settings."""
    return {name: (up.price_in, up.price_out) for name, up in upstreams.items()}


def panel(
    store: LogStore, routes: Iterable[str], lo_us: int, hi_us: int, price: usage.Prices
) -> dict[str, dict[str, Any]]:
    """Per route with baseline or candidate calls in ``[lo_us, hi_us)``: `usage.route_worth`."""
    out = {}
    for route in routes:
        worth = usage.route_worth(store, route, lo_us, hi_us, price)
        if worth["variants"]:
            worth["variants"] = {v: worth["variants"][v] for v in usage.VARIANTS if v in worth["variants"]}
            out[route] = worth
    return out


def slug(route: str) -> str:
    """The id the route's chart section carries (the panel links to its outcome charts)."""
    return "".join(ch if ch.isalnum() else "-" for ch in route)
