"""Background jobs of a gateway worker; none of them touches the request path.

* state polling (every worker): picks up route and key changes made through any worker or
  replica (the fallback for the backend's notifications);
* periodic jobs, each run by `Periodic` exactly once per interval across every worker and
  replica (a lease in the state backend: owner, expiry, last run):
* regeneration detection over the log;
* scheduled drift checks: runs ``shadowtune drift check --json`` as a
  subprocess — the gateway never imports ``evals`` — stores the report through that command and
  exports its scores to OpenTelemetry (`Telemetry.record_drift`);
* retraining triggers: ``shadowtune triggers run`` for a route, a supervised subprocess
  (`run_triggers`, in `gateway.jobs_triggers`);
* canary controllers: ``shadowtune controller run --once`` against this
  gateway's own admin API; each decision goes to the route's audit history (through the API),
  the state backend's decision records and telemetry (`Telemetry.record_decision`).

`Periodic` only needs a backend and a callable, so the same jobs can run in request workers
or in a separate agent process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from gateway.state import Lease, StateUnavailable
from gateway.state.base import StateBackend
from gateway.store.fileio import try_locked

log = logging.getLogger("shadowtune.jobs")


def start(ctx: Any) -> list[asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(poll_state(ctx.routes, getattr(ctx, "auth", None)))]
    settings = ctx.settings
    backend = ctx.routes.backend
    if settings.signals.detect_interval_s > 0:
        job = Periodic(
            backend, "signals", settings.signals.detect_interval_s, lambda: detect_regenerations(ctx)
        )
        tasks.append(loop.create_task(job.run()))
    for ctl in settings.controller.routes:
        job = Periodic(
            backend, f"controller-{ctl.route}", ctl.every_s, functools.partial(run_controller, ctx, ctl)
        )
        tasks.append(loop.create_task(job.run()))
    for trig in getattr(getattr(settings, "triggers", None), "routes", ()):
        job = Periodic(
            backend, f"triggers-{trig.route}", trig.every_s, functools.partial(run_triggers, ctx, trig)
        )
        tasks.append(loop.create_task(job.run()))
    for check in settings.drift.checks:
        job = Periodic(
            backend, f"drift-{check.route}", check.every_s, functools.partial(run_drift_check, ctx, check)
        )
        tasks.append(loop.create_task(job.run()))
    return tasks


async def poll_state(routes: Any, auth: Any = None) -> None:
    """Fallback for the backend's change notifications: re-read route state and keys."""
    while True:
        listening = getattr(routes.backend.health, "listening", None)
        await asyncio.sleep(routes.poll_interval if not listening else max(routes.poll_interval, 5.0))
        try:
            if await asyncio.to_thread(routes.reload):
                log.info("route state version %d loaded", routes.snapshot.version)
            if auth is not None:
                await asyncio.to_thread(auth.refresh)
        except StateUnavailable:
            pass  # reported by the backend's health (log, /healthz, metrics); keep the last state
        except Exception as exc:  # keep polling whatever happens
            log.error("route state poll failed: %r", exc)


poll_routes = poll_state  # the former name


class Periodic:
    """A job that runs once per ``interval`` across every process and host sharing ``backend``.

    Each process runs one `Periodic` per job; they compete for the lease ``name`` (owner
    and expiry in the backend). The holder renews it every ``tick`` seconds, and runs the
    job when the stored last run is ``interval`` old, recording the new run time first
    (`StateBackend.mark_run`, which only the holder can do): a new holder, after a crash or
    a restart, waits for the interval to end instead of running at once. A dead holder's
    lease expires after ``ttl`` (three ticks), so another process takes over well within
    two intervals. ``job`` is any callable (run in a thread), so the runner works in a
    request worker or in a separate agent process alike.
    """

    def __init__(
        self,
        backend: StateBackend,
        name: str,
        interval: float,
        job: Callable[[], object],
        *,
        owner: str | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        self.interval = float(interval)
        self.job = job
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.tick = min(max(self.interval / 4, 0.2), 5.0)
        self.ttl = 3 * self.tick
        self.runs = 0
        self._running: asyncio.Task[Any] | None = None
        self._error: str | None = None  # the last unexpected backend error, logged once

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(await self.step())
        finally:
            if self._running is not None:
                self._running.cancel()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.backend.release_lease, self.name, self.owner)

    async def step(self) -> float:
        """Renew or take the lease, start the job when due; returns the seconds to sleep."""
        try:
            lease: Lease = await asyncio.to_thread(
                self.backend.acquire_lease, self.name, self.owner, self.ttl
            )
        except StateUnavailable:
            return self.tick
        except Exception as exc:  # any other error must not end the loop: the job would never run again here
            self._failed(exc)
            return self.tick
        self._error = None
        if not lease.held:
            return self.tick
        if self._running is not None and not self._running.done():
            return self.tick  # still running: keep the lease alive
        due = (lease.last_run if lease.last_run is not None else lease.now) + self.interval
        if lease.now < due:
            return min(self.tick, max(due - lease.now, 0.01))
        # a run late by less than an interval keeps the schedule (no drift); a later one restarts it
        at = due if lease.now - due < self.interval else None
        try:
            started = await asyncio.to_thread(
                self.backend.mark_run, self.name, self.owner, due - self.interval, at
            )
        except StateUnavailable:
            return self.tick
        except Exception as exc:  # as above
            self._failed(exc)
            return self.tick
        if started is None:  # lost the lease meanwhile, or someone else ran it
            return self.tick
        self.runs += 1
        self._running = asyncio.get_running_loop().create_task(self._run_job())
        return min(self.tick, self.interval)

    def _failed(self, exc: Exception) -> None:
        """Log an unexpected backend error once per streak (the loop retries every tick)."""
        if self._error is None:
            log.error("background job %s: lease check failed (retrying every tick): %r", self.name, exc)
        self._error = repr(exc)

    async def _run_job(self) -> None:
        try:
            await asyncio.to_thread(self.job)
        except Exception as exc:  # a failing job is logged and tried again next time
            log.warning("background job %s failed: %r", self.name, exc)


async def _every(interval: float, job: Callable[[], Any]) -> None:
    """Run ``job`` every ``interval`` seconds in this process alone (no lease)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(job)
        except Exception as exc:  # a failing job is logged and tried again next time
            log.warning("background job failed: %r", exc)


@contextlib.contextmanager
def leader(state_dir: str, name: str) -> Iterator[bool]:
    """A try-lock on ``<name>.lock``, for callers outside `Periodic` (which uses leases)."""
    with try_locked(os.path.join(state_dir, f"{name}.lock")) as mine:
        yield mine


def detect_regenerations(ctx: Any) -> int:
    from gateway.signals.regeneration import detect_regenerations as detect
    from gateway.signals.regeneration import record_regenerations
    from gateway.store import LogStore

    settings = ctx.settings
    signals = settings.signals
    bound = settings.store.tail_read_max_mb * 2**20
    with LogStore.open(settings.store.log_dir, wal_dir=settings.store.wal_dir, max_tail_bytes=bound) as store:
        since = time.time() - 2 * signals.regeneration_window_s - signals.detect_interval_s
        events = detect(store, since, signals.regeneration_window_s, rephrase=signals.detect_rephrase)
        n = record_regenerations(ctx.writer, events)
    if n:
        log.info("marked %d regenerated call(s)", n)
    return n


def run_drift_check(ctx: Any, check: Any) -> dict[str, Any] | None:
    """Run one scheduled drift check; export its scores; returns the report (None when it failed)."""
    import subprocess

    settings = ctx.settings
    cmd = [
        sys.executable, "-m", "gateway", "drift", "check",
        "--route", check.route, "--reference", check.reference, "--current", check.current,
        "--log-dir", settings.store.log_dir, "--json",
    ]  # fmt: skip
    if getattr(check, "rounds", 99) != 99:
        cmd += ["--rounds", str(check.rounds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=check.timeout_s)
    if proc.returncode not in (0, 3):
        log.warning("drift check for %s failed: %s", check.route, proc.stderr.strip()[-500:])
        return None
    report: dict[str, Any] = json.loads(proc.stdout)
    ctx.telemetry.record_drift(check.route, report)
    if report.get("drifted"):
        names = [c["name"] for c in report.get("checks", ()) if c.get("drifted")]
        log.warning("drift on route %s: %s", check.route, ", ".join(names))
    return report


def subprocess_env(ctx: Any) -> tuple[dict[str, str], str]:
    """The environment and gateway URL of a ``shadowtune …`` job subprocess (admin token, state)."""
    from gateway import state

    settings = ctx.settings
    server = settings.server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    env = dict(os.environ)
    if server.admin_token is not None:
        env["SHADOWTUNE_ADMIN_TOKEN"] = server.admin_token.get_secret_value()
    env["SHADOWTUNE_STORE__STATE_URL"] = state.location_of(settings)
    env["SHADOWTUNE_PROGRESS"] = "0"
    return env, f"http://{host}:{ctx.port or server.port}"


def run_controller(ctx: Any, ctl: Any) -> list[dict[str, Any]] | None:
    """One controller check for a route; returns its decisions (None when it failed)."""
    import subprocess

    settings = ctx.settings
    env, url = subprocess_env(ctx)
    cmd = [
        sys.executable, "-m", "gateway", "controller", "run", "--once", "--json",
        "--route", ctl.route, "--url", url,
        "--log-dir", settings.store.log_dir,
    ]  # fmt: skip
    if ctl.policy:
        cmd += ["--policy", ctl.policy]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ctl.timeout_s, env=env)
    if proc.returncode != 0:
        log.warning("controller for %s failed: %s", ctl.route, proc.stderr.strip()[-500:])
        return None
    decisions = [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    for decision in decisions:
        ctx.telemetry.record_decision(ctl.route, decision)
        if decision.get("action") not in (None, "wait"):
            log.warning("controller %s on %s: %s", decision.get("action"), ctl.route, decision.get("reason"))
    return decisions


def run_triggers(ctx: Any, trig: Any) -> list[dict[str, Any]] | None:
    from gateway.jobs_triggers import run_triggers as run

    return run(ctx, trig)
