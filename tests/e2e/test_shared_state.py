"""Two gateway processes (separate log directories) sharing one state backend: a real PostgreSQL
server (`tests.support.postgres`), or one state directory on one host.

* a route change through one's admin API is served by the other within a second, and both
  show it in their history; a key created through one works on the other;
* with 2 processes x 2 workers the controller job runs once per interval (6 +- 1 runs in
  six intervals), and when the lease holder is killed (-9) another takes over within two
  intervals; the same with the file backend;
* the database stopped for 10 s: calls keep flowing, changes are refused with a clear 503
  (and a clear CLI error), nothing is lost, and changes work again once it is back.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from gateway.state.files import FileBackend
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.slow

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
INTERVAL = 10.0  # the controller's every_s, as in the issue: 6 +- 1 runs in 60 s


def config(tmp_path: Any, name: str, fake_upstream: Any, state: str, **extra: Any) -> str:
    data: dict[str, Any] = {
        "server": {"auth": "open", "admin_token": TOKEN},
        "upstreams": {
            "base": {"base_url": fake_upstream.base_url, "model": "echo-base"},
            "cand": {"base_url": fake_upstream.base_url, "model": "echo-cand"},
        },
        "routes": {"bot": {"baseline": "base", "candidate": "cand", "mode": "off"}},
        "store": {
            "log_dir": str(tmp_path / f"log-{name}"),
            "state_url": state,
            "flush_interval": 0.2,
            "compact_interval": 0,
        },
        "signals": {"detect_interval_s": 0},
    }
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def serve(path: str, workers: int = 2) -> ServeProcess:
    proc = ServeProcess(["--config", path, "--workers", str(workers), "--log-level", "warning"])
    return proc.start(timeout=90)  # several workers starting on a busy machine


@pytest.fixture
def procs() -> Any:
    started: list[ServeProcess] = []
    yield started
    for p in started:
        p.stop()


def ask(url: str, text: str, key: str | None = None) -> httpx.Response:
    headers = {"Connection": "close"}  # a new connection each time: any of the workers answers
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": "bot", "messages": [{"role": "user", "content": text}], "user": text},
        headers=headers,
        timeout=30,
    )


def arm(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"].split(":", 1)[0])


# -- PostgreSQL: changes and keys ------------------------------------------------------------
def test_a_route_change_through_one_gateway_is_served_by_the_other_within_a_second(
    tmp_path, fake_upstream, postgres_url, procs
):
    a = serve(config(tmp_path, "a", fake_upstream, postgres_url))
    procs.append(a)
    b = serve(config(tmp_path, "b", fake_upstream, postgres_url))
    procs.append(b)
    assert {arm(ask(b.url, f"before-{i}")) for i in range(6)} == {"echo-base"}

    r = httpx.patch(
        a.url + "/admin/routes/bot",
        json={"mode": "primary", "shadow_rate": 0, "reason": "e2e"},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    changed = time.monotonic()
    seen: list[tuple[float, str]] = []
    while len([t for t, _ in seen if t >= 1.0]) < 12:  # requests sent from 1 s on, to any worker
        sent = time.monotonic() - changed
        seen.append((sent, arm(ask(b.url, f"after-{len(seen)}"))))
    first = min(t for t, which in seen if which == "echo-cand")
    late = {which for t, which in seen if t >= 1.0}
    print(f"\nfirst candidate answer from the other gateway {first * 1000:.0f} ms after the change")
    assert first < 1.0
    assert late == {"echo-cand"}  # every worker of the other gateway has it a second after the change

    ha = httpx.get(a.url + "/admin/routes/bot/history", headers=ADMIN).json()["data"]
    hb = httpx.get(b.url + "/admin/routes/bot/history", headers=ADMIN).json()["data"]
    assert ha == hb and len(ha) == 1
    assert (ha[0]["after"]["mode"], ha[0]["reason"], ha[0]["version"]) == ("primary", "e2e", 1)
    assert httpx.get(b.url + "/admin/routes/bot", headers=ADMIN).json()["version"] == 1


def test_a_key_created_through_one_gateway_works_on_the_other(tmp_path, fake_upstream, postgres_url, procs):
    a = serve(config(tmp_path, "a", fake_upstream, postgres_url, server={"auth": "keys"}), workers=1)
    procs.append(a)
    b = serve(config(tmp_path, "b", fake_upstream, postgres_url, server={"auth": "keys"}), workers=2)
    procs.append(b)
    assert ask(b.url, "no key").status_code == 401

    r = httpx.post(a.url + "/admin/keys", json={"name": "app-1"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    key = r.json()["key"]
    deadline = time.monotonic() + 1.0
    while ask(b.url, "wait", key).status_code != 200:
        assert time.monotonic() < deadline, "the key did not reach the other gateway within a second"
    assert all(ask(b.url, f"k{i}", key).status_code == 200 for i in range(6))  # every worker
    assert ask(b.url, "bad", "sk-st-not-a-key").status_code == 401
    dup = httpx.post(b.url + "/admin/keys", json={"name": "app-1"}, headers=ADMIN)
    assert dup.status_code == 400 and dup.json()["error"]["code"] == "key_exists"

    listed = httpx.get(b.url + "/admin/keys", headers=ADMIN).json()["data"]
    assert [k["name"] for k in listed] == ["app-1"] and "hash" not in listed[0]
    assert httpx.delete(b.url + "/admin/keys/app-1", headers=ADMIN).status_code == 200
    deadline = time.monotonic() + 1.0
    while ask(a.url, "revoked", key).status_code != 401:
        assert time.monotonic() < deadline, "the revocation did not reach the other gateway within a second"


# -- leases: once per interval across processes and hosts -------------------------------------
def _holder(records: Any, state: Any, procs: list[ServeProcess]) -> ServeProcess:
    owner = state()
    pid = int(owner.split(":")[1])
    for p in procs:
        assert p.proc is not None
        if os.getpgid(pid) == p.proc.pid:
            return p
    raise AssertionError(f"lease owner {owner} is none of the gateways")


def _lease_test(
    tmp_path: Any, fake_upstream: Any, state: str, procs: list[ServeProcess], backend: Any, owner: Any
):
    controller = {"routes": [{"route": "bot", "every_s": INTERVAL}]}
    routes = {"bot": {"baseline": "base", "candidate": "cand", "mode": "canary", "share": 50}}
    for name in ("a", "b"):
        procs.append(
            serve(config(tmp_path, name, fake_upstream, state, controller=controller, routes=routes))
        )

    def decisions() -> list[float]:
        return [float(d["ts"]) for d in backend.records("decisions", "bot")]

    start = time.time() + 1.0
    time.sleep(1.0 + 6 * INTERVAL + 2.0)  # six intervals, plus time for a run in progress to record
    ts = decisions()
    window = [t for t in ts if start <= t < start + 6 * INTERVAL]
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    print(f"\n{len(window)} controller runs in {6 * INTERVAL:.0f} s (interval {INTERVAL:g} s); gaps {gaps}")
    assert 5 <= len(window) <= 7
    assert min(gaps) > 0.5 * INTERVAL  # never two runs in one interval

    holder = _holder(backend, owner, procs)
    before = decisions()
    holder.kill9()
    killed = time.time()
    survivor = next(p for p in procs if p is not holder)
    deadline = killed + 2 * INTERVAL + 5
    while time.time() < deadline and not [t for t in decisions() if t > killed]:
        time.sleep(0.2)
    after = [t for t in decisions() if t > killed]
    assert after, "nobody took over the controller"
    print(
        f"taken over {after[0] - killed:.2f} s after the holder was killed (last run {killed - before[-1]:.2f} s before)"
    )
    assert after[0] - killed < 2 * INTERVAL  # taken over within two intervals
    assert after[0] - before[-1] > 0.5 * INTERVAL  # and not early: the last run time is kept
    assert _holder(backend, owner, procs) is survivor
    assert httpx.get(survivor.url + "/readyz").status_code == 200


def test_the_controller_runs_once_per_interval_across_processes_on_postgres(
    tmp_path, fake_upstream, postgres_url, procs
):
    import psycopg

    from gateway.state.postgres import PostgresBackend

    backend = PostgresBackend(postgres_url)

    def owner() -> str:
        with psycopg.connect(postgres_url) as conn:
            return str(conn.execute("SELECT owner FROM leases WHERE name = 'controller-bot'").fetchone()[0])

    try:
        _lease_test(tmp_path, fake_upstream, postgres_url, procs, backend, owner)
    finally:
        backend.close()


def test_the_controller_runs_once_per_interval_across_processes_on_one_host_with_files(
    tmp_path, fake_upstream, procs
):
    import json

    state = str(tmp_path / "state")
    backend = FileBackend(state)

    def owner() -> str:
        with open(os.path.join(state, "leases.json")) as f:
            return str(json.load(f)["controller-bot"]["owner"])

    _lease_test(tmp_path, fake_upstream, state, procs, backend, owner)


# -- a database outage ------------------------------------------------------------------------
def test_a_database_outage_keeps_calls_flowing_and_refuses_changes_clearly(tmp_path, fake_upstream, procs):
    from tests.support.postgres import PostgresServer

    pg = PostgresServer().start()
    try:
        url = pg.new_database().replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it
        a = serve(config(tmp_path, "a", fake_upstream, url), workers=1)
        procs.append(a)
        b = serve(config(tmp_path, "b", fake_upstream, url), workers=1)
        procs.append(b)
        r = httpx.patch(
            a.url + "/admin/routes/bot", json={"mode": "shadow", "reason": "before"}, headers=ADMIN
        )
        assert r.status_code == 200

        answered: list[tuple[str, str]] = []
        failures: list[str] = []
        stop = threading.Event()

        def load(gw: ServeProcess, name: str) -> None:
            i = 0
            while not stop.is_set():
                resp = ask(gw.url, f"{name}-{i}")
                if resp.status_code == 200:
                    answered.append((name, resp.headers["x-request-id"]))
                else:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")
                i += 1

        threads = [threading.Thread(target=load, args=(g, n)) for g, n in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        time.sleep(0.5)
        pg.stop()
        down = time.monotonic()
        try:
            time.sleep(2.0)
            during = len(answered)
            refused = httpx.patch(
                b.url + "/admin/routes/bot",
                json={"mode": "primary", "reason": "during"},
                headers=ADMIN,
                timeout=30,
            )
            assert refused.status_code == 503
            err = refused.json()["error"]
            assert (err["type"], err["code"]) == ("server_error", "state_unavailable")
            assert "unavailable" in err["message"] and "nothing was changed" in err["message"]
            assert "s3cret-pw" not in refused.text
            cli = subprocess.run(
                [sys.executable, "-m", "gateway", "routes", "set", "bot", "--mode", "primary", "--url", a.url,
                 "--admin-token", TOKEN],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 1
            assert "503" in cli.stderr and "state database" in cli.stderr and "Traceback" not in cli.stderr
            health = httpx.get(a.url + "/healthz").json()
            assert health["status"] == "degraded" and "state" in health["degraded"]
            assert health["state"]["healthy"] is False and health["state"]["last_error"]
            assert "s3cret-pw" not in str(health) and "***" in health["state"]["location"]
            assert httpx.get(a.url + "/readyz").status_code == 200  # a shared outage removes no pod
            assert "shadowtune_state_healthy" in httpx.get(a.url + "/metrics").text
            metric = [
                line for line in httpx.get(a.url + "/metrics").text.splitlines()
                if line.startswith("shadowtune_state_healthy")
            ]  # fmt: skip
            assert metric and float(metric[0].rsplit(" ", 1)[1]) == 0
            while time.monotonic() < down + 10:
                time.sleep(0.2)
            assert len(answered) > during  # calls kept flowing all along
        finally:
            pg.start()
        deadline = time.monotonic() + 20
        while True:
            r = httpx.patch(
                a.url + "/admin/routes/bot", json={"mode": "primary", "reason": "after"}, headers=ADMIN
            )
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while arm(ask(b.url, "converge")) != "echo-cand":
            assert time.monotonic() < deadline
        stop.set()
        for t in threads:
            t.join(30)
        assert failures == []
        reasons = [
            h["reason"] for h in httpx.get(b.url + "/admin/routes/bot/history", headers=ADMIN).json()["data"]
        ]
        assert reasons == ["before", "after"]  # the refused change was not applied later either
        assert httpx.get(b.url + "/healthz").json()["state"]["healthy"] is True
    finally:
        for p in procs:
            p.stop()
        pg.destroy()
    log_text = a.proc.stderr.read().decode() if a.proc and a.proc.stderr else ""
    assert "is unavailable (serving on the last known state; changes are refused)" in log_text
    assert "is reachable again" in log_text and "s3cret-pw" not in log_text
    from gateway.store import LogStore

    logged = set()
    for name in ("a", "b"):
        logged |= {
            r["call_id"]
            for r in LogStore.open(str(tmp_path / f"log-{name}")).sql("SELECT call_id FROM calls")
        }
    missing = [cid for _, cid in answered if cid not in logged]
    assert missing == [], f"{len(missing)} answered calls are not in the logs"
