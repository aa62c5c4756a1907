"""Live route state: the split each route runs under, changed at run time without a restart.

The state of every route lives in one JSON file, ``<log_dir>/routes/state.json``, with a
global ``version``; every change is validated, written atomically (temp file + rename,
under an ``flock``), and appended to ``<log_dir>/routes/history.jsonl`` (who, when, why,
before, after). Every worker (and every replica, when the file is on shared storage)
polls the file and swaps in the new state when its version changes, within
``poll_interval`` seconds. The config file gives the starting state; once the state file
exists it wins, so operators' changes survive restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gateway.config import RouteConfig, Settings, UpstreamConfig
from gateway.errors import InvalidRequest, NotFound

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
    key = state.sticky_key
    if key not in ("user", "session", "client_key") and not (key.startswith("header:") and len(key) > 7):
        raise InvalidRequest(
            "sticky_key must be user, session, client_key or header:<name>", param="sticky_key"
        )


class RouteStateStore:
    """The state file, its history, and the in-memory snapshot of one worker."""

    def __init__(self, settings: Settings, *, poll_interval: float = 0.5) -> None:
        self.dir = os.path.join(settings.store.state_path, "routes")
        self.path = os.path.join(self.dir, "state.json")
        self.history_path = os.path.join(self.dir, "history.jsonl")
        self.poll_interval = poll_interval
        self._mtime: float | None = None
        initial = Snapshot(
            version=0,
            routes={name: _from_config(name, rc) for name, rc in settings.routes.items()},
            upstreams=dict(settings.upstreams),
        )
        self.snapshot = initial
        self._config_upstreams = dict(settings.upstreams)
        self.reload()

    # -- reading ------------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the state file if it changed; True when a new version was swapped in."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return False
        if mtime == self._mtime:
            return False
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return False  # half-written by a foreign tool; the next poll will see the final file
        self._mtime = mtime
        snap = self._decode(data)
        if snap.version == self.snapshot.version and self.snapshot.version != 0:
            return False
        self.snapshot = snap
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
        with self._locked():
            self.reload()
            before = self.snapshot.routes.get(route)
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
            validate(after, self.snapshot.upstreams)
            routes = dict(self.snapshot.routes)
            routes[route] = after
            self._write(routes, self.snapshot.upstreams)
            self._history(
                {
                    "route": route,
                    "actor": actor,
                    "reason": reason,
                    "before": before_dict,
                    "after": after.public(),
                }
            )
            return after

    def put_upstream(self, name: str, config: UpstreamConfig, *, actor: str, reason: str | None) -> None:
        """Register (or replace) an upstream model at run time, e.g. a newly deployed candidate."""
        if not config.fast_path and config.provider in ("openai", "openai_compatible", "vllm"):
            raise InvalidRequest("an OpenAI-compatible upstream needs a base_url", param="base_url")
        with self._locked():
            self.reload()
            ups = dict(self.snapshot.upstreams)
            before = ups.get(name)
            ups[name] = config
            self._write(self.snapshot.routes, ups)
            self._history(
                {
                    "upstream": name,
                    "actor": actor,
                    "reason": reason,
                    "before": before.model_dump() if before else None,
                    "after": config.model_dump(),
                }
            )

    def history(self, route: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        try:
            with open(self.history_path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        if route is not None:
            rows = [r for r in rows if r.get("route") == route]
        return rows[-limit:]

    def _write(self, routes: dict[str, RouteState], upstreams: dict[str, UpstreamConfig]) -> None:
        version = self.snapshot.version + 1
        data = {
            "version": version,
            "routes": {n: s.public() for n, s in routes.items()},
            "upstreams": {
                n: u.model_dump() for n, u in upstreams.items() if self._config_upstreams.get(n) != u
            },
        }
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._mtime = os.stat(self.path).st_mtime_ns
        self.snapshot = Snapshot(version=version, routes=dict(routes), upstreams=dict(upstreams))

    def _history(self, entry: dict[str, Any]) -> None:
        entry = {"ts": time.time(), "version": self.snapshot.version, **entry}
        with open(self.history_path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def _locked(self) -> Any:
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "state.lock"), os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


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
    )
