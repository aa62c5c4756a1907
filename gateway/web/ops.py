"""Operations, under ``/review/ops``: change a route, pause the controller, see the trigger runs.

``GET /review/ops``
    every route's state with a form to change its mode and share; the audit trail (the
    route-state history: who, when, why, before -> after); per route the canary
    controller's state and its recent decisions, with a pause / resume button; the retraining
    triggers' state and their runs with each step.
``POST /review/ops/routes/<route>``
    a change needs a reason and a confirmation: the first post answers a page that shows the
    change (before -> after) and a button that posts it again with ``confirm=yes``; only then
    is it applied, through the same `RouteStateStore.update` as ``PUT /admin/routes`` (the
    history records the reviewer as the actor, and the reason).
``POST /review/ops/controller/<route>``
    ``action=pause|resume`` with a reason: the controller's state document and a ``pause`` /
    ``resume`` decision record in the state backend (as ``shadowtune controller pause``).

Same access, same-origin and CSRF rules as every review form (`gateway.web._common`).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from gateway.errors import InvalidRequest, NotFound
from gateway.routing.state import MODES
from gateway.state import pause
from gateway.web import _common as web

router = APIRouter()

MAX_REASON = 2000
_DONE = {"route": "Route changed.", "pause": "Controller paused.", "resume": "Controller resumed."}


def _state(request: Request) -> dict[str, Any]:
    ctx = request.app.state.ctx
    backend = ctx.routes.backend
    snap = ctx.routes.snapshot
    routes = [s.public() for _, s in sorted(snap.routes.items())]
    out: dict[str, Any] = {
        "routes": routes,
        "routes_version": snap.version,
        "controllers": {},
        "triggers": {},
    }
    out["history"] = list(reversed(ctx.routes.history(None, 50)))
    for r in routes:
        name = r["route"]
        try:
            doc = backend.get_doc("controller", name) or {}
            decisions = list(reversed(backend.records("decisions", name, 20)))
            trig = backend.get_doc("trigger_state", name) or {}
        except Exception as exc:  # the state backend is down: say so, show the rest
            doc, decisions, trig = {"error": str(exc)}, [], {}
        out["controllers"][name] = {"state": doc, "decisions": decisions}
        out["triggers"][name] = trig
    try:
        runs = backend.list_docs("trigger_run")
    except Exception:
        runs = []
    out["runs"] = sorted(
        runs, key=lambda r: str(r.get("started_at") or r.get("created_at") or ""), reverse=True
    )[:20]
    return out


@router.get("/ops")
async def ops(request: Request) -> Response:
    who = web.reviewer(request)
    data = await asyncio.to_thread(_state, request)
    done = _DONE.get(request.query_params.get("done", ""), "")
    return web.page(
        request, who, "ops.html", forms=True, nav="ops", modes=MODES, done=done, queue=None, **data
    )


def _reason(fields: dict[str, str]) -> str:
    reason = fields.get("reason", "").strip()
    if not reason:
        raise InvalidRequest("say why (the reason goes into the audit trail)", param="reason")
    if len(reason) > MAX_REASON:
        raise InvalidRequest(f"the reason is too long (at most {MAX_REASON} characters)", param="reason")
    return reason


@router.post("/ops/routes/{route:path}")
async def change_route(route: str, request: Request) -> Response:
    who, raw = await web.form(request)
    fields = {k: v[-1] for k, v in raw.items()}
    store = request.app.state.ctx.routes
    current = store.snapshot.routes.get(route)
    if current is None:
        raise NotFound(f"route {route!r} does not exist", param="route", code="route_not_found")
    changes: dict[str, Any] = {}
    mode = fields.get("mode", current.mode)
    if mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", param="mode")
    if mode != current.mode:
        changes["mode"] = mode
    try:
        share = float(fields.get("share", current.share))
    except ValueError:
        raise InvalidRequest("share must be a number (percent)", param="share") from None
    if share != current.share:
        changes["share"] = share
    reason = _reason(fields)
    if not changes:
        raise InvalidRequest("nothing to change: the route already has this mode and share", param="mode")
    if fields.get("confirm") != "yes":
        before = current.public()
        return web.page(
            request,
            who,
            "ops_confirm.html",
            forms=True,
            nav="ops",
            route=route,
            before=before,
            after={**before, **changes},
            changes=changes,
            reason=reason,
            action="/review/ops/routes/" + quote(route, safe=""),
            queue=None,
        )
    await asyncio.to_thread(store.update, route, changes, actor=f"reviewer:{who.who}", reason=reason)
    return RedirectResponse("/review/ops?done=route#history", status_code=303)


@router.post("/ops/controller/{route:path}")
async def controller(route: str, request: Request) -> Response:
    who, raw = await web.form(request)
    fields = {k: v[-1] for k, v in raw.items()}
    action = fields.get("action", "")
    if action not in ("pause", "resume"):
        raise InvalidRequest('action must be "pause" or "resume"', param="action")
    if route not in request.app.state.ctx.routes.snapshot.routes:
        raise NotFound(f"route {route!r} does not exist", param="route", code="route_not_found")
    reason = _reason(fields)
    actor = f"reviewer:{who.who}"
    backend = request.app.state.ctx.routes.backend
    paused = action == "pause"
    await asyncio.to_thread(pause.set_paused, backend, route, paused, actor=actor, reason=reason)
    return RedirectResponse(f"/review/ops?done={action}", status_code=303)
