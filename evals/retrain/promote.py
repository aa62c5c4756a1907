"""The loop's last step: a shadow candidate the judge finds not worse goes to canary by itself.

A policy opts in with ``auto_canary``::

    auto_canary:
      judges: [gpt-4o-mini]        # judge models (a jury when several)
      judge_url: null              # OpenAI-compatible URL of the judges (default: the gateway's /v1)
      min_pairs: 30                # shadow pairs of this candidate before judging
      max_pairs: 200
      margin: 0.1                  # not worse: the candidate's share of decisive verdicts >= 0.5 - margin
      share: 5                     # the canary's first share, in percent
      allow_same_family: false

Each scheduled ``triggers run`` looks at the route: when it is in **shadow** mode with the
model the last run deployed, and that model has answered ``min_pairs`` shadow calls since,
the judge compares the pairs **in both orders** (a judge whose verdict flips with the order
abstains). With a Wilson 95% interval on the candidate's share of decisive verdicts (ties
count for neither), the candidate is *not worse* when the lower bound is at least
``0.5 - margin`` (or every verdict is a tie), *worse* when the upper bound is below it, else
undecided (wait for more pairs). Not worse: ``PATCH /admin/routes/<route>`` to canary at
``share`` (the route's audit history records it), and the canary controller takes it from
there. Worse: the candidate stays in shadow, and the state says why. Every look is a run
record of kind ``promote`` (``triggers status``, ``triggers history``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

from evals.retrain.state import _iso, _now, _parse_time, load_state, save_run, update_state
from gateway.store import LogStore
from gateway.store.ids import new_id

DEFAULTS: dict[str, Any] = {
    "judges": [],
    "judge_url": None,
    "min_pairs": 30,
    "max_pairs": 200,
    "margin": 0.1,
    "share": 5.0,
    "allow_same_family": False,
    "concurrency": 8,
}


def verdict(summary: Mapping[str, Any], margin: float) -> str:
    """``not_worse``, ``worse`` or ``undecided`` from a both-orders judge summary."""
    from evals.online.outcomes import wilson_interval

    wins, losses = int(summary.get("wins") or 0), int(summary.get("losses") or 0)
    if not summary.get("n_judged"):
        return "undecided"
    if wins + losses == 0:
        return "not_worse"  # every verdict a tie (or identical answers)
    lo, hi = wilson_interval(wins, wins + losses)
    if lo >= 0.5 - margin:
        return "not_worse"
    if hi < 0.5 - margin:
        return "worse"
    return "undecided"


def maybe_promote(
    policy: Any,
    log_dir: str,
    loc: str,
    *,
    admin_url: str,
    admin_token: str | None = None,
    api_key: str | None = None,
) -> dict[str, Any] | None:
    """One look at ``policy.route``'s shadow candidate; returns the record (None when not asked to)."""
    if not policy.auto_canary:
        return None
    cfg = {**DEFAULTS, **dict(policy.auto_canary)}
    api_key = api_key or os.environ.get("SHADOWTUNE_API_KEY")
    route = policy.route
    state = load_state(loc).get(route, {})
    model = state.get("last_deployed_model")
    record: dict[str, Any] = {"route": route, "kind": "promote", "candidate": model, "steps": []}
    if not model:
        return {**record, "status": "idle", "reason": "no deployed candidate yet"}
    if state.get("promoted_model") == model:
        return {**record, "status": "idle", "reason": f"{model} already moved to canary"}
    from evals.retrain.triggers import RunBusy, _route_lock

    try:
        # one look per route at a time, and never during a retraining run of the route (which
        # deploys a newer candidate): the route's lease, as `triggers.run` takes it
        with _route_lock(loc, route):
            if load_state(loc).get(route, {}).get("promoted_model") == model:  # another look, just done
                return {**record, "status": "idle", "reason": f"{model} already moved to canary"}
            return _promote(record, route, model, state, cfg, log_dir, loc, admin_url, admin_token, api_key)
    except RunBusy as exc:
        return {**record, "status": "busy", "reason": str(exc)}


def _promote(
    record: dict[str, Any],
    route: str,
    model: str,
    state: Mapping[str, Any],
    cfg: Mapping[str, Any],
    log_dir: str,
    loc: str,
    admin_url: str,
    admin_token: str | None,
    api_key: str | None,
) -> dict[str, Any]:
    """`maybe_promote` under the route's lease: pairs, the judge, and the canary if not worse."""
    from gateway.admin_client import AdminClient, AdminError

    with AdminClient(admin_url, admin_token, timeout=30) as admin:
        try:
            info = admin.get_route(route)
        except AdminError as exc:
            return {**record, "status": "failed", "reason": f"cannot read route {route}: {exc.message}"}
        if info.get("mode") != "shadow" or info.get("candidate") != model:
            return {
                **record,
                "status": "idle",
                "reason": f"route is in {info.get('mode')} with {info.get('candidate')}",
            }
        since = _parse_time(state.get("last_deployed_at")) or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        pairs = _pairs(log_dir, route, model, since, int(cfg["max_pairs"]))
        record.update(pairs=len(pairs), since=_iso(since))
        if len(pairs) < int(cfg["min_pairs"]):
            return {
                **record,
                "status": "waiting",
                "reason": f"{len(pairs)} shadow pairs of {model}, need {cfg['min_pairs']}",
            }
        record.update(run_id=new_id("prom"), started_at=_iso(_now()))
        summary = _judge(pairs, cfg, admin_url, api_key, route)
        record["judge"] = {
            k: summary.get(k)
            for k in (
                "run_id",
                "n_judged",
                "wins",
                "ties",
                "losses",
                "win_rate_decisive_ci",
                "position_consistency",
                "judges",
            )
        }
        record["verdict"] = verdict(summary, float(cfg["margin"]))
        if record["verdict"] == "not_worse":
            reason = (
                f"auto canary {record['run_id']}: judge {', '.join(cfg['judges'])} (both orders) finds {model} "
                f"not worse on {summary['n_judged']} shadow pairs ({summary['wins']} wins, {summary['ties']} ties, "
                f"{summary['losses']} losses)"
            )
            try:
                # the judge took a while: an operator (or the controller) may have moved the route since
                # the look above, and a canary at ``share`` would undo what they did
                current = admin.get_route(route)
                moved = current.get("mode") != "shadow" or current.get("candidate") != model
                if not moved:
                    admin.set_route(route, {"mode": "canary", "share": float(cfg["share"]), "reason": reason})
            except AdminError as exc:
                record.update(status="failed", reason=f"admin API refused the canary: {exc.message}")
            else:
                if moved:
                    record.update(
                        status="idle",
                        reason=f"not worse, but the route moved to {current.get('mode')} with {current.get('candidate')} "
                        "while the judge ran: left as it is",
                    )
                    record["finished_at"] = _iso(_now())
                    save_run(loc, record)
                    return record
                record.update(status="canary", reason=reason, share=float(cfg["share"]))
                update_state(
                    loc,
                    route,
                    promoted_model=model,
                    promoted_at=_iso(_now()),
                    promote_run_id=record["run_id"],
                )
        elif record["verdict"] == "worse":
            record.update(
                status="held", reason=f"the judge finds {model} worse than the baseline: stays in shadow"
            )
            update_state(loc, route, promotion_refused=model, promotion_refused_reason=record["reason"])
        else:
            record.update(status="waiting", reason="the judge cannot tell yet: waiting for more shadow pairs")
        record["finished_at"] = _iso(_now())
        save_run(loc, record)
        return record


def _pairs(log_dir: str, route: str, model: str, since: dt.datetime, limit: int) -> list[Any]:
    from evals.judge.pairwise import shadow_pairs

    with LogStore.open(log_dir) as store:
        pairs = shadow_pairs(store, route, since=since, limit=limit * 4)
    mine = [p for p in pairs if model in (p.candidate_upstream, p.candidate_model)]
    return mine[-limit:]


def _judge(
    pairs: list[Any], cfg: Mapping[str, Any], admin_url: str, api_key: str | None, route: str
) -> dict[str, Any]:
    from evals.judge.pairwise import ChatClient, JudgeOptions, judge

    if not cfg["judges"]:
        from evals.errors import TriggerError

        raise TriggerError("auto_canary.judges is empty: name at least one judge model")
    url = cfg["judge_url"] or admin_url.rstrip("/") + "/v1"
    client = ChatClient(url, api_key, concurrency=int(cfg["concurrency"]))
    options = JudgeOptions(
        judges=tuple(cfg["judges"]), both_orders=True, allow_same_family=bool(cfg["allow_same_family"])
    )
    report = judge(pairs, options, client, route=route, source="shadow (auto canary)")
    return report.summary()
