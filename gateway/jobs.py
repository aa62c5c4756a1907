"""Background jobs of a gateway worker; none of them touches the request path.

* route-state polling (every worker): picks up admin changes made through any worker or replica;
* regeneration detection over the log (one leader at a time, ``flock``);
* scheduled drift checks (one leader at a time): runs ``shadowtune drift check --json`` as a
  subprocess — the gateway never imports ``evals`` — stores the report through that command and
  exports its scores to OpenTelemetry (`Telemetry.record_drift`);
* canary controllers (one leader at a time): ``shadowtune controller run --once`` against this
  gateway's own admin API; each decision goes to the route's audit history (through the API),
  ``<log_dir>/controller/decisions.jsonl`` and telemetry (`Telemetry.record_decision`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("shadowtune.jobs")


def start(ctx: Any) -> list[asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(poll_routes(ctx.routes))]
    settings = ctx.settings
    if settings.signals.detect_interval_s > 0:
        tasks.append(
            loop.create_task(_every(settings.signals.detect_interval_s, lambda: detect_regenerations(ctx)))
        )
    for ctl in settings.controller.routes:
        tasks.append(loop.create_task(_every(ctl.every_s, functools.partial(run_controller, ctx, ctl))))
    for check in settings.drift.checks:
        tasks.append(loop.create_task(_every(check.every_s, functools.partial(run_drift_check, ctx, check))))
    return tasks


async def poll_routes(routes: Any) -> None:
    while True:
        await asyncio.sleep(routes.poll_interval)
        try:
            if await asyncio.to_thread(routes.reload):
                log.info("route state version %d loaded", routes.snapshot.version)
        except Exception as exc:  # keep polling whatever happens
            log.error("route state poll failed: %r", exc)


async def _every(interval: float, job: Callable[[], Any]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(job)
        except Exception as exc:  # a failing job is logged and tried again next time
            log.warning("background job failed: %r", exc)


@contextlib.contextmanager
def leader(state_dir: str, name: str) -> Iterator[bool]:
    """True for the one process (worker or replica on shared storage) holding ``<name>.lock``."""
    os.makedirs(state_dir, exist_ok=True)
    fd = os.open(os.path.join(state_dir, f"{name}.lock"), os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def detect_regenerations(ctx: Any) -> int:
    from gateway.signals.regeneration import detect_regenerations as detect
    from gateway.signals.regeneration import record_regenerations
    from gateway.store import LogStore

    settings = ctx.settings
    signals = settings.signals
    with leader(settings.store.state_path, "signals") as is_leader:
        if not is_leader:
            return 0
        with LogStore.open(settings.store.log_dir, wal_dir=settings.store.wal_dir) as store:
            since = time.time() - 2 * signals.regeneration_window_s - signals.detect_interval_s
            events = detect(store, since, signals.regeneration_window_s, rephrase=signals.detect_rephrase)
            n = record_regenerations(ctx.writer, events)
    if n:
        log.info("marked %d regenerated call(s)", n)
    return n


def run_drift_check(ctx: Any, check: Any) -> dict[str, Any] | None:
    """Run one scheduled drift check; export its scores; returns the report (None if not the leader)."""
    import subprocess

    settings = ctx.settings
    with leader(settings.store.state_path, f"drift-{check.route}") as is_leader:
        if not is_leader:
            return None
        cmd = [
            sys.executable, "-m", "gateway", "drift", "check",
            "--route", check.route, "--reference", check.reference, "--current", check.current,
            "--log-dir", settings.store.log_dir, "--json",
        ]  # fmt: skip
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


def run_controller(ctx: Any, ctl: Any) -> list[dict[str, Any]] | None:
    """One controller check for a route; returns its decisions (None if not the leader)."""
    import subprocess

    settings = ctx.settings
    server = settings.server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    env = dict(os.environ)
    if server.admin_token is not None:
        env["SHADOWTUNE_ADMIN_TOKEN"] = server.admin_token.get_secret_value()
    with leader(settings.store.state_path, f"controller-{ctl.route}") as is_leader:
        if not is_leader:
            return None
        cmd = [
            sys.executable, "-m", "gateway", "controller", "run", "--once", "--json",
            "--route", ctl.route, "--url", f"http://{host}:{ctx.port or server.port}",
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
