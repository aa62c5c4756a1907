"""Job leases (`gateway.jobs.Periodic`): four processes compete for one job; it runs once per
interval, is taken over within two intervals when its holder is killed (-9), and a new holder
keeps the stored schedule. Against the file backend (one host) and a real PostgreSQL server."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from gateway.state import open_backend

pytestmark = pytest.mark.real_clock  # the lease holders are subprocesses: they keep the real clock

INTERVAL = 1.0
INTERVALS = 12


def runs(path: str) -> list[tuple[int, float]]:
    try:
        with open(path) as f:
            return [(int(p), float(t)) for p, t in (line.split() for line in f if line.strip())]
    except FileNotFoundError:
        return []


def test_a_job_runs_once_per_interval_across_processes_and_survives_its_holder(location, tmp_path):
    out = str(tmp_path / "runs.txt")
    cmd = [sys.executable, "-m", "tests.support.lease_worker", location, "job", str(INTERVAL), out]
    procs = [subprocess.Popen(cmd, start_new_session=True) for _ in range(4)]
    try:
        deadline = time.time() + 30
        while not runs(out):  # the first run comes one interval after the lease is first taken
            assert time.time() < deadline, "the job never ran"
            time.sleep(0.05)
        start = runs(out)[0][1] + 0.5 * INTERVAL
        time.sleep(INTERVALS * INTERVAL + 0.5 * INTERVAL + 0.5)
        got = runs(out)
        window = [t for _, t in got if start <= t < start + INTERVALS * INTERVAL]
        gaps = [b - a for (_, a), (_, b) in itertools.pairwise(got)]
        print(f"\n{len(window)} runs in {INTERVALS} intervals; gaps {min(gaps):.3f}..{max(gaps):.3f} s")
        assert INTERVALS - 1 <= len(window) <= INTERVALS + 1
        assert min(gaps) > 0.5 * INTERVAL  # never twice in one interval
        assert len({pid for pid, _ in got}) == 1  # one holder while it lives

        holder = got[-1][0]
        last = got[-1][1]
        os.killpg(holder, signal.SIGKILL)
        killed = time.time()
        deadline = killed + 4 * INTERVAL
        while not [t for _, t in runs(out) if t > killed]:
            assert time.time() < deadline, "nobody took the job over"
            time.sleep(0.02)
        pid, first = next((p, t) for p, t in runs(out) if t > killed)
        print(
            f"taken over by {pid} {first - killed:.2f} s after the kill ({first - last:.2f} s after the last run)"
        )
        assert pid != holder
        assert first - killed < 2 * INTERVAL
        assert first - last > 0.5 * INTERVAL  # the new holder kept the schedule: it did not run at once
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def test_leases_have_one_owner_expire_and_keep_their_last_run(location):
    backend = open_backend(location)
    first = backend.acquire_lease("l", "a", 0.5)
    assert first.held and first.last_run is not None  # a new lease starts its schedule now
    assert not backend.acquire_lease("l", "b", 0.5).held
    assert backend.mark_run("l", "b", 1e18) is None  # only the holder records a run
    ran = backend.mark_run("l", "a", first.last_run)
    assert ran is not None
    assert backend.mark_run("l", "a", first.last_run) is None  # the same interval cannot run twice
    time.sleep(0.6)
    taken = backend.acquire_lease("l", "b", 0.5)
    assert taken.held and taken.owner == "b" and taken.last_run == pytest.approx(ran)
    assert not backend.acquire_lease("l", "a", 0.5).held
    backend.release_lease("l", "b")
    assert backend.acquire_lease("l", "a", 0.5).held
