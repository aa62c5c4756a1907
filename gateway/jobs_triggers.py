"""The scheduled retraining job: ``shadowtune triggers run`` for one route, as a supervised subprocess.

`gateway.jobs.Periodic` runs it once per ``every_s`` across every worker and replica (the
lease ``triggers-<route>``); the run itself holds ``trigger-run-<route>`` while its pipeline
works, so a slow training never overlaps the next tick's. The subprocess gets the gateway's
admin URL, token and state location, writes its records (each step's progress included) to
the state backend, and prints them as JSON; they go to telemetry (`Telemetry.record_trigger`)
and the log. A run past ``timeout_s`` is killed with its process group and its record closed
(``shadowtune triggers cancel``). The gateway never imports ``evals``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from gateway.jobs import subprocess_env

log = logging.getLogger("shadowtune.jobs")


def run_triggers(ctx: Any, trig: Any) -> list[dict[str, Any]] | None:
    """One scheduled evaluation of ``trig.route``'s policy (and its pipeline when it fires)."""
    settings = ctx.settings
    env, url = subprocess_env(ctx)
    base = [sys.executable, "-m", "gateway", "triggers"]
    common = ["--route", trig.route, "--url", url, "--log-dir", settings.store.log_dir, "--json"]
    cmd = [*base, "run", *common] + (["--policy", trig.policy] if trig.policy else [])
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=trig.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        log.error("retraining run for %s killed after %gs", trig.route, trig.timeout_s)
        subprocess.run([*base, "cancel", *common], env=env, capture_output=True, timeout=60)
        ctx.telemetry.record_trigger(trig.route, {"status": "timeout"})
        return None
    if proc.returncode not in (0, 1):
        log.warning("triggers for %s failed: %s", trig.route, err.strip()[-500:])
        return None
    try:
        records: list[dict[str, Any]] = json.loads(out)
    except json.JSONDecodeError:
        log.warning("triggers for %s printed no JSON: %s", trig.route, (err or out).strip()[-500:])
        return None
    for rec in records:
        ctx.telemetry.record_trigger(trig.route, rec)
        if rec.get("status") not in ("not_triggered", "idle", "busy", "waiting"):
            log.warning(
                "retraining %s on %s: %s",
                rec.get("status"),
                trig.route,
                "; ".join(rec.get("reasons") or [str(rec.get("reason") or "")]),
            )
    return records
