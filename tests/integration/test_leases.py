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


def test_a_periodic_job_survives_an_unexpected_backend_error(location):
    """Any error from the backend (not only `StateUnavailable`: an unreadable lease file, a table
    renamed by a rolling upgrade's migration) is retried on the next tick: the job's loop must not
    end, or this process would never run the job again (and every process hit at once: nobody)."""
    import asyncio
    import contextlib

    from gateway.jobs import Periodic

    backend = open_backend(location)
    if location.startswith("postgresql://"):
        import psycopg

        def sabotage(broken: bool) -> None:
            old, new = ("leases", "leases_moved") if broken else ("leases_moved", "leases")
            with psycopg.connect(location, autocommit=True) as conn:
                conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
    else:

        def sabotage(broken: bool) -> None:
            path = os.path.join(location, "leases.json")
            if broken:
                os.makedirs(path)  # reading it: IsADirectoryError
            else:
                os.rmdir(path)

    ran: list[float] = []
    job = Periodic(backend, "job", 0.5, lambda: ran.append(time.time()))

    async def scenario() -> None:
        sabotage(True)
        task = asyncio.get_running_loop().create_task(job.run())
        try:
            await asyncio.sleep(1.0)  # a few ticks against the failing backend
            sabotage(False)
            deadline = time.monotonic() + 10
            while not ran:
                assert not task.done(), f"the job's loop ended: {task.exception()!r}"
                assert time.monotonic() < deadline, "the job never ran after the backend recovered"
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    asyncio.run(scenario())


def test_a_session_frozen_in_a_transaction_does_not_hang_the_other_holders(postgres_url):
    """A host that stops mid-transaction (frozen, partitioned: its socket stays open) keeps its row
    locks. The others' lease calls must be refused within the timeout (never hang on the lock), and
    the frozen session must be ended by the server, so that the lease can be taken over."""
    import threading

    from gateway.state import StateUnavailable
    from gateway.state.postgres import PostgresBackend

    frozen, other = PostgresBackend(postgres_url, timeout=1.0), PostgresBackend(postgres_url, timeout=1.0)
    assert frozen.acquire_lease("job", "a", 0.5).held
    locked, thaw = threading.Event(), threading.Event()

    def freeze() -> None:
        try:
            with frozen._tx() as conn:
                conn.execute("SELECT * FROM leases WHERE name = 'job' FOR UPDATE")
                locked.set()
                thaw.wait(60)  # the host is frozen here, in its transaction
        except StateUnavailable:
            pass  # its session was ended meanwhile

    outcomes: list[object] = []

    def take() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                outcomes.append(other.acquire_lease("job", "b", 5).held)
                return
            except StateUnavailable:
                outcomes.append(round(time.monotonic() - started, 1))  # how long the refusal took

    freezer = threading.Thread(target=freeze, daemon=True)
    freezer.start()
    try:
        assert locked.wait(10)
        time.sleep(0.6)  # the frozen holder's lease has expired
        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        taker.join(15)
        assert not taker.is_alive(), "acquire_lease hangs on the row lock of a frozen session"
        assert outcomes and outcomes[-1] is True, outcomes  # taken over
        assert all(o is True or float(o) < 5 for o in outcomes), outcomes  # refusals came fast
    finally:
        thaw.set()
        freezer.join(10)
        frozen.close()
        other.close()
