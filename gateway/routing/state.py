"""Live route state: the split each route runs under, changed at run time without a restart.

The state of every route lives in the state backend (`gateway.state`: a directory, or
PostgreSQL for several hosts) with a global ``version``; every change is validated and
applied atomically together with its audit entry (who, when, why, before, after). Every
worker of every replica swaps in the new state when its version changes: at once on the
backend's notification (PostgreSQL ``LISTEN``), else within ``poll_interval`` seconds. The
config file gives the starting state; once a change is stored it wins, so operators'
changes survive restarts.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gateway.config import RouteConfig, Settings, UpstreamConfig
from gateway.errors import InvalidRequest, NotFound
from gateway.protocol import transform
from gateway.state.base import StateBackend, StateUnavailable

MODES = ("off", "shadow", "canary", "primary")


@dataclass(frozen=True)
class RouteState:
    route: str
    baseline: str
    candidate: str | None = None
    mode: str = "off"
    share: float = 0.0
    shadow_rate: float = 1.0
    sticky_key: str = "user"
    salt: str = ""
    store_bodies: bool = True
    candidate_transform: dict[str, Any] | None = None
    """Canonical spec of the candidate's request transform (`gateway.protocol.transform`)."""

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Snapshot:
    """Everything the request path needs, swapped as a whole."""

    version: int
    routes: dict[str, RouteState]
    upstreams: dict[str, UpstreamConfig]
    updated_at: float = field(default_factory=time.time)


_TYPES: dict[str, tuple[type, ...]] = {
    "baseline": (str,),
    "candidate": (str, type(None)),
    "mode": (str,),
    "share": (int, float),
    "shadow_rate": (int, float),
    "sticky_key": (str,),
    "salt": (str,),
    "store_bodies": (bool,),
    "candidate_transform": (dict, type(None)),
}


def validate(state: RouteState, upstreams: dict[str, UpstreamConfig]) -> None:
    for name, types in _TYPES.items():
        value = getattr(state, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InvalidRequest(f"{name} has the wrong type ({type(value).__name__})", param=name)
    if state.mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", param="mode")
    if not 0 <= state.share <= 100:
        raise InvalidRequest("share must be between 0 and 100 (percent)", param="share")
    if round(state.share * 100) != round(state.share * 100, 6):
        raise InvalidRequest("share moves in 0.01 % steps", param="share")
    if not 0 <= state.shadow_rate <= 1:
        raise InvalidRequest("shadow_rate must be between 0 and 1", param="shadow_rate")
    if state.baseline not in upstreams:
        raise InvalidRequest(f"unknown upstream model {state.baseline!r}", param="baseline")
    if state.candidate is not None and state.candidate not in upstreams:
        raise InvalidRequest(f"unknown upstream model {state.candidate!r}", param="candidate")
    if state.mode != "off" and state.candidate is None:
        raise InvalidRequest(f"mode {state.mode!r} needs a candidate", param="candidate")
    try:
        transform.parse(state.candidate_transform)
    except transform.TransformError as exc:
        raise InvalidRequest(str(exc), param="candidate_transform") from None
    key = state.sticky_key
    if key not in ("user", "session", "client_key") and not (key.startswith("header:") and len(key) > 7):
        raise InvalidRequest(
            "sticky_key must be user, session, client_key or header:<name>", param="sticky_key"
        )


class RouteStateStore:
    """The live route state in the state backend, and the in-memory snapshot of one worker.

    Reads on the request path only touch ``snapshot``; `reload` (polled, and called on the
    backend's change notifications) swaps in a newer version. While the backend is
    unreachable the worker keeps serving its last snapshot; `update` then raises
    `StateUnavailable` (a 503): nothing is changed, nothing is queued.
    """

    def __init__(
        self, settings: Settings, *, poll_interval: float = 0.5, backend: StateBackend | None = None
    ) -> None:
        from gateway import state as state_backends

        self.backend = backend or state_backends.open_backend(state_backends.location_of(settings))
        self.poll_interval = poll_interval
        root = getattr(self.backend, "root", None)  # the file backend's files, for operators and tests
        self.path = os.path.join(root, "routes", "state.json") if root else None
        self.history_path = os.path.join(root, "routes", "history.jsonl") if root else None
        self._lock = threading.Lock()
        initial = Snapshot(
            version=0,
            routes={name: _from_config(name, rc) for name, rc in settings.routes.items()},
            upstreams=dict(settings.upstreams),
        )
        self.snapshot = initial
        self._config_upstreams = dict(settings.upstreams)
        self.reload()
        self.backend.subscribe(self._notified)

    def _notified(self, what: str) -> None:
        if what in ("routes", "reconnected"):
            with contextlib.suppress(StateUnavailable):
                self.reload()

    # -- reading ------------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the stored state if it is newer; True when a new version was swapped in."""
        with self._lock:
            found = self.backend.routes_if_newer(self.snapshot.version)
            if found is None:
                return False
            self.snapshot = self._decode(found[1])
            return True

    def _decode(self, data: dict[str, Any]) -> Snapshot:
        upstreams = dict(self._config_upstreams)
        for name, raw in (data.get("upstreams") or {}).items():
            upstreams[name] = UpstreamConfig(**raw)
        routes = {name: RouteState(**raw) for name, raw in (data.get("routes") or {}).items()}
        for name, state in self.snapshot.routes.items():
            routes.setdefault(name, state)
        return Snapshot(version=int(data.get("version", 0)), routes=routes, upstreams=upstreams)

    def get(self, route: str) -> RouteState:
        try:
            return self.snapshot.routes[route]
        except KeyError:
            raise NotFound(f"route {route!r} does not exist", param="route", code="route_not_found") from None

    # -- writing ------------------------------------------------------------------------
    def update(self, route: str, changes: dict[str, Any], *, actor: str, reason: str | None) -> RouteState:
        """Validate and apply ``changes`` to ``route`` (creating it if ``baseline`` is given)."""
        allowed = set(RouteState.__dataclass_fields__) - {"route"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidRequest(
                f"unknown route field(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0]
            )
        result: list[RouteState] = []

        def change(version: int, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            current = self._current(version, data)
            before = current.routes.get(route)
            if before is None:
                if "baseline" not in changes:
                    raise NotFound(f"route {route!r} does not exist", param="route", code="route_not_found")
                before_dict = None
                after = RouteState(route=route, **changes)
            else:
                before_dict = before.public()
                try:
                    after = replace(before, **changes)
                except TypeError as exc:
                    raise InvalidRequest(str(exc)) from exc
            validate(after, current.upstreams)
            spec = transform.parse(after.candidate_transform)
            after = replace(after, candidate_transform=spec.spec if spec else None)  # canonical form
            routes = dict(current.routes)
            routes[route] = after
            result.append(after)
            entry = {
                "route": route,
                "actor": actor,
                "reason": reason,
                "before": before_dict,
                "after": after.public(),
            }
            return self._encode(routes, current.upstreams), entry

        self.backend.change_routes(change)
        self._reload_after_write()
        return result[0]

    def put_upstream(self, name: str, config: UpstreamConfig, *, actor: str, reason: str | None) -> None:
        """Register (or replace) an upstream model at run time, e.g. a newly deployed candidate."""
        if not config.fast_path and config.provider in ("openai", "openai_compatible", "vllm"):
            raise InvalidRequest("an OpenAI-compatible upstream needs a base_url", param="base_url")

        def change(version: int, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            current = self._current(version, data)
            ups = dict(current.upstreams)
            before = ups.get(name)
            ups[name] = config
            entry = {
                "upstream": name,
                "actor": actor,
                "reason": reason,
                "before": before.model_dump() if before else None,
                "after": config.model_dump(),
            }
            return self._encode(current.routes, ups), entry

        self.backend.change_routes(change)
        self._reload_after_write()

    def _current(self, version: int, data: dict[str, Any]) -> Snapshot:
        """The stored state as a snapshot (config routes and upstreams where it has none)."""
        if version == 0 and not data.get("routes"):
            return Snapshot(0, dict(self.snapshot.routes), dict(self.snapshot.upstreams))
        return self._decode({**data, "version": version})

    def _reload_after_write(self) -> None:
        with contextlib.suppress(StateUnavailable):
            self.reload()

    def history(self, route: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.backend.history(route, limit)
        return rows

    def _encode(self, routes: dict[str, RouteState], upstreams: dict[str, UpstreamConfig]) -> dict[str, Any]:
        return {
            "routes": {n: s.public() for n, s in routes.items()},
            "upstreams": {
                n: u.model_dump() for n, u in upstreams.items() if self._config_upstreams.get(n) != u
            },
        }


def _from_config(name: str, rc: RouteConfig) -> RouteState:
    return RouteState(
        route=name,
        baseline=rc.baseline,
        candidate=rc.candidate,
        mode=rc.mode,
        share=rc.share,
        shadow_rate=rc.shadow_rate,
        sticky_key=rc.sticky_key,
        salt=rc.salt,
        store_bodies=rc.store_bodies,
        candidate_transform=rc.candidate_transform.spec() if rc.candidate_transform else None,
    )
