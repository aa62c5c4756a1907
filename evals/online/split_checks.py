"""The report's split check per route-state version: each version's units against its own share.

A route-state version fixes the candidate's share; the route's audit history (the gateway's
state backend) says which share each version had, so every compared version of a report is
checked against its own share, not the latest one's.
"""

from __future__ import annotations

from typing import Any

from evals.online.outcomes_query import PeriodInfo


def srm_by_version(
    infos: list[PeriodInfo], expected_share: float | None, shares: dict[int, float]
) -> list[dict[str, Any]]:
    """The sample-ratio check of every compared version, each against its own share.

    A version's share comes from the route's audit history (``shares``); ``expected_share``
    stands in for the latest compared version's when the history does not say (it is the
    share now, not an earlier step's)."""
    from evals.online.outcomes import srm_check

    compared = [p for p in infos if p.compared]
    latest = compared[-1] if compared else (infos[-1] if infos else None)
    out = []
    for info in compared or ([latest] if latest else []):
        share = _share_at(shares, info.route_version)
        if share is None and info is latest:
            share = expected_share
        if share is None or not 0 < share < 1:
            continue
        b = info.arms["baseline"].units if "baseline" in info.arms else 0
        c = info.arms["candidate"].units if "candidate" in info.arms else 0
        chi2, p = srm_check(b, c, share)
        out.append(
            {
                "version": info.route_version,
                "expected_share": share,
                "observed_share": c / (b + c) if b + c else None,
                "units": {"baseline": b, "candidate": c},
                "chi2": chi2,
                "p_value": p,
                "mismatch": p < 0.001,
            }
        )
    return out


def _share_at(shares: dict[int, float], version: int | None) -> float | None:
    """The share set by the latest audit entry at or before ``version`` (None: not known)."""
    if version is None:
        return None
    known = [v for v in shares if v <= version]
    return shares[max(known)] if known else None


def version_shares(history: list[dict[str, Any]], route: str) -> dict[int, float]:
    """``{state version: candidate share (0-1)}`` from a route's audit entries: each change of the
    route sets the share that holds until its next change (calls carry the state version)."""
    out = {}
    for h in history:
        after = h.get("after") or {}
        if h.get("route") != route or "mode" not in after or h.get("version") is None:
            continue
        share = float(after.get("share") or 0.0) / 100 if after.get("mode") == "canary" else 0.0
        out[int(h["version"])] = share
    return out


def route_history(location: str, route: str) -> list[dict[str, Any]]:
    """The route's audit entries from the gateway's state backend at ``location``; ``[]`` when unreadable."""
    try:
        from gateway.state import open_backend

        rows: list[dict[str, Any]] = open_backend(location).history(route, 1_000_000)
    except Exception:  # the history is an aid to the split check, never a reason to fail
        return []
    return rows
