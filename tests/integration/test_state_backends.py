"""The state backend contract (`gateway.state.base.StateBackend`), the same for the file backend
and a real PostgreSQL server: versioned route state with its history, no lost updates under
concurrent writers, a refused change leaves nothing behind, keys, documents and records."""

from __future__ import annotations

import json
import os
import threading

import pytest
from click.testing import CliRunner

from gateway.errors import InvalidRequest
from gateway.state import StateUnavailable, describe, new_backend, open_backend


def add_route(name):
    def change(version, doc):
        routes = dict(doc.get("routes") or {})
        routes[name] = {"n": len(routes)}
        return {"routes": routes}, {"route": name, "actor": "t", "seen": version}

    return change


def test_route_state_is_versioned_with_its_history(location):
    b = open_backend(location)
    assert b.routes_if_newer(0) is None and b.history() == []
    assert b.change_routes(add_route("a")) == 1
    assert b.change_routes(add_route("org/model")) == 2
    version, doc = b.routes_if_newer(0)
    assert version == 2 and set(doc["routes"]) == {"a", "org/model"}
    assert b.routes_if_newer(2) is None
    assert [h["version"] for h in b.history()] == [1, 2]
    [h] = b.history("org/model")
    assert (h["route"], h["actor"], h["seen"]) == ("org/model", "t", 1) and h["ts"] > 0
    assert [h["version"] for h in b.history(limit=1)] == [2]

    def refused(version, doc):
        raise InvalidRequest("no")

    with pytest.raises(InvalidRequest):
        b.change_routes(refused)
    assert b.routes_if_newer(0)[0] == 2 and len(b.history()) == 2


def test_concurrent_writers_lose_no_update(location):
    errors = []

    def writer(i):
        b = new_backend(location)
        try:
            for j in range(10):
                b.change_routes(add_route(f"r{i}-{j}"))
        except Exception as exc:
            errors.append(exc)
        finally:
            b.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    version, doc = open_backend(location).routes_if_newer(0)
    assert version == 60 and len(doc["routes"]) == 60
    assert sorted(h["version"] for h in open_backend(location).history(limit=1000)) == list(range(1, 61))


def test_the_file_backend_sees_two_changes_made_within_one_mtime_tick(tmp_path):
    """Workers poll the files: two quick changes that a coarse file system clock gives one mtime
    (forced here with ``os.utime``) are both seen, the second split and the revoked key included."""
    writer, reader = new_backend(str(tmp_path)), new_backend(str(tmp_path))
    writer.change_routes(add_route("a"))
    assert reader.routes_if_newer(0)[0] == 1
    routes = tmp_path / "routes" / "state.json"
    tick = routes.stat().st_mtime_ns
    writer.change_routes(add_route("b"))
    os.utime(routes, ns=(tick, tick))
    version, doc = reader.routes_if_newer(1)
    assert version == 2 and set(doc["routes"]) == {"a", "b"}

    writer.add_key({"name": "app", "hash": "h1", "prefix": "sk-st-x", "created": 1.0, "revoked": None})
    marker, keys = reader.keys_if_changed(None)
    assert [k["revoked"] for k in keys] == [None] and reader.keys_if_changed(marker) is None
    keys_file = tmp_path / "keys.json"
    tick = keys_file.stat().st_mtime_ns
    writer.revoke_key("app", 5.0)
    os.utime(keys_file, ns=(tick, tick))
    found = reader.keys_if_changed(marker)
    assert found is not None and [k["revoked"] for k in found[1]] == [5.0]
    assert reader.keys_if_changed(found[0]) is None


def test_document_updates_from_concurrent_writers_lose_nothing(location):
    """`update_doc` reads, changes and writes one document with no other update in between: six
    writers (own backends) adding to one field and setting their own keep every change."""
    errors = []

    def writer(i):
        b = new_backend(location)
        try:
            for _ in range(10):
                b.update_doc(
                    "controller",
                    "org/model",
                    lambda d: {**(d or {}), "n": (d or {}).get("n", 0) + 1, f"w{i}": 1},
                )
        except Exception as exc:
            errors.append(exc)
        finally:
            b.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    doc = open_backend(location).get_doc("controller", "org/model")
    assert doc == {"n": 60, **{f"w{i}": 1 for i in range(6)}}

    def refused(doc):
        raise InvalidRequest("no")

    with pytest.raises(InvalidRequest):
        open_backend(location).update_doc("controller", "new", refused)
    assert open_backend(location).get_doc("controller", "new") is None  # nothing left behind
    assert [d.get("n") for d in open_backend(location).list_docs("controller")] == [60]


def test_keys_documents_and_records(location):
    b = open_backend(location)
    assert b.keys_if_changed(None)[1] == []
    b.add_key({"name": "app", "hash": "h1", "prefix": "sk-st-x", "created": 1.0, "revoked": None})
    with pytest.raises(ValueError, match="already exists"):
        b.add_key({"name": "app", "hash": "h2", "prefix": "sk-st-y", "created": 2.0, "revoked": None})
    marker, keys = b.keys_if_changed(None)
    assert [k["hash"] for k in keys] == ["h1"] and b.keys_if_changed(marker) is None
    b.revoke_key("app", 5.0)
    with pytest.raises(ValueError, match="no active key"):
        b.revoke_key("app", 6.0)
    _, keys = b.keys_if_changed(None)
    assert keys[0]["revoked"] == 5.0
    b.add_key({"name": "app", "hash": "h3", "prefix": "sk-st-z", "created": 3.0, "revoked": None})  # reissued

    assert b.get_doc("controller", "org/model") is None
    b.put_doc("controller", "org/model", {"route": "org/model", "paused": True})
    b.put_doc("controller", "org/model", {"route": "org/model", "paused": False})
    b.put_doc("controller", "b", {"route": "b"})
    assert b.get_doc("controller", "org/model") == {"route": "org/model", "paused": False}
    assert [d["route"] for d in b.list_docs("controller")] == ["b", "org/model"]
    for i in range(5):
        b.append_record("decisions", {"route": "org/model" if i % 2 else "b", "i": i})
    assert [r["i"] for r in b.records("decisions")] == [0, 1, 2, 3, 4]
    assert [r["i"] for r in b.records("decisions", "org/model")] == [1, 3]
    assert [r["i"] for r in b.records("decisions", limit=2)] == [3, 4]


def test_an_unreachable_database_is_a_clear_503_and_its_password_stays_out():
    from tests.support.servers import free_port

    url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/db"
    with pytest.raises(StateUnavailable) as err:
        open_backend(url)
    assert err.value.status == 503 and err.value.code == "state_unavailable"
    assert "hunter2" not in err.value.message and "app:***@127.0.0.1" in err.value.message
    assert describe(url) == url.replace("hunter2", "***")


def test_config_show_masks_the_state_url_password(tmp_path):
    from gateway.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("store:\n  state_url: postgresql://app:hunter2@db:5432/shadowtune\n")
    res = CliRunner().invoke(main, ["config", "show", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["store"]["state_url"] == "postgresql://app:***@db:5432/shadowtune"


def test_a_failing_reconnect_handler_does_not_stop_the_change_notifications(postgres_url):
    """A subscriber that raises on the listener's ``reconnected`` call (a bad route document, a
    bug) must not end the listener thread: later changes are still pushed to every subscriber."""
    import time

    listener, writer = new_backend(postgres_url), new_backend(postgres_url)
    got = []
    seen = threading.Event()

    def flaky(what):
        if what == "reconnected":
            raise RuntimeError("a subscriber's bug")

    def record(what):
        got.append(what)
        if what == "routes":
            seen.set()

    try:
        listener.subscribe(flaky)
        listener.subscribe(record)
        deadline = time.monotonic() + 10
        while not listener.health.listening:
            assert time.monotonic() < deadline, "the listener never connected"
            time.sleep(0.05)
        time.sleep(0.3)  # past the reconnect call
        writer.change_routes(add_route("a"))
        assert seen.wait(5), f"no notification after a subscriber failed (got {got})"
    finally:
        listener.close()
        writer.close()


def test_a_server_turned_read_only_is_unavailable_not_an_error(postgres_url):
    """After a failover the address can lead to a read-only server (a standby, the old primary
    back as one): a change is refused as `StateUnavailable` (a 503 at the admin API, reported by
    the backend's health), not an unexpected error (a 500, health still green)."""
    import psycopg

    from gateway.state import StateUnavailable

    b = new_backend(postgres_url)
    try:
        b.change_routes(add_route("a"))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            db = admin.execute("SELECT current_database()").fetchone()[0]
            admin.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
            admin.execute(  # the pool's connections are new ones from here on: read-only sessions
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(
            StateUnavailable, match="unavailable; nothing was changed: ReadOnlySqlTransaction"
        ):
            for _ in range(5):  # the first try may meet a connection the termination broke
                try:
                    b.change_routes(add_route("b"))
                except StateUnavailable as exc:
                    if "ReadOnlySqlTransaction" in str(exc):
                        raise
        assert not b.health.ok
        assert b.routes_if_newer(0)[0] == 1  # reads still answer; nothing was changed
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            db = admin.execute("SELECT current_database()").fetchone()[0]
            admin.execute("SET default_transaction_read_only = off")  # this session began read-only
            admin.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
        b.close()
