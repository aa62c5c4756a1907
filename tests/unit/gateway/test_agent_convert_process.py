"""``store.convert_process``: closed WAL segments converted in a child process of the log agent
(`gateway.agent.convert_process`) land in the table exactly as the agent's own thread converts
them (hypothesis, with hostile values), a killed child is replaced with every row still
landing once, and the child never outlives the agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.agent.core import LogAgent
from gateway.config import Settings
from gateway.store import LogStore, quarantine
from tests.support.fuzzing import json_values

TS = 1_700_000_000_000_000
WRITER = "0000000000001-1-dead00"  # a writer whose lock nobody holds: all of its segments are closed


def agent_settings(log_dir: str, *, child: bool, flush_interval: float = 60) -> Settings:
    return Settings.model_validate(
        {
            "store": {
                "log_dir": log_dir,
                "flush_interval": flush_interval,
                "compact_interval": 0,
                "convert_process": child,
            },
            "server": {"auth": "open"},
        }
    )


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def stream(pieces: list[str], usage: Any) -> str:
    head = '{"id":"chatcmpl-9","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    events = [f"data: {head}" + '"delta":{"content":' + orjson.dumps(p).decode() + "}}]}\n\n" for p in pieces]
    events.append("data: " + dumps({"id": "chatcmpl-9", "choices": [], "usage": usage}) + "\n\n")
    return "".join(events) + "data: [DONE]\n\n"


hostile = st.one_of(st.text(max_size=20), json_values)
calls = st.fixed_dictionaries(
    {
        "status": st.one_of(st.just(200), st.integers(min_value=-(2**40), max_value=2**40), hostile),
        "user": st.one_of(st.none(), hostile),
        "tags": st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3), hostile),
        "latency_ms": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 10**6)),
        "body": st.one_of(
            st.builds(
                lambda p, u: {"response_sse": stream(p, u)},
                st.lists(st.text(max_size=8), max_size=5),
                hostile,
            ),
            st.builds(lambda r: {"response": r}, st.one_of(st.text(max_size=30), st.none())),
            st.builds(lambda v: {"response": dumps(v)}, json_values),
        ),
    }
)
lines = st.lists(
    st.one_of(
        calls.map(lambda c: ("call", c)),
        st.sampled_from([b"{not json", b"[1, 2]", b'{"_t": "nope", "ts": 1}', b'{"_t": "calls"}']).map(
            lambda b: ("raw", b)
        ),
        st.just(("event", None)),
    ),
    min_size=1,
    max_size=12,
)


def wal_bytes(items: list[tuple[str, Any]], base: int) -> bytes:
    out = []
    for n, (kind, value) in enumerate(items):
        cid = f"call-{base + n}"
        if kind == "raw":
            out.append(value)
        elif kind == "event":
            rec = {
                "_t": "events",
                "event_id": f"ev-{base + n}",
                "call_id": cid,
                "ts": TS + n,
                "kind": "thumbs",
            }
            out.append(orjson.dumps(rec))
        else:
            body = value["body"]
            rec = {"_t": "calls", "call_id": cid, "ts": TS + n, "endpoint": "chat.completions", **body}
            rec.update({k: v for k, v in value.items() if k != "body"})
            out.append(dumps(rec).encode())  # json: integers past 64 bits too (orjson cannot read them)
    return b"\n".join(out) + b"\n"


def table(log_dir: str, name: str, ids: list[str]) -> list[dict[str, Any]]:
    key = "event_id" if name == "events" else "call_id"
    with LogStore.open(log_dir) as store:
        rows = store.sql(f"SELECT * FROM {name} ORDER BY {key}")
    return [r for r in rows if r[key] in ids]


def entries(wal_dir: str, segment: str) -> list[tuple[Any, ...]]:
    out = []
    for path in sorted(Path(quarantine.directory(wal_dir)).glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            e = orjson.loads(line)
            if e["segment"] == segment:
                out.append((e["line"], e["table"], e["reason"], e.get("raw"), e.get("raw_b64")))
    return sorted(out)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("convert-process")
    pair = {
        # the agents' own threads convert too, every 50 ms: the test's rounds race with theirs
        child: LogAgent(
            agent_settings(str(root / ("child" if child else "thread")), child=child, flush_interval=0.05)
        )
        for child in (False, True)
    }
    for agent in pair.values():
        agent.start()
    yield pair
    for agent in pair.values():
        agent.stop()


SEQ = iter(range(1, 10**6))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=lines)
def test_the_child_converts_exactly_what_the_agents_thread_converts(agents, items):
    seq = next(SEQ)
    stem = f"{WRITER}.{seq:08d}"
    data = wal_bytes(items, seq * 100)
    seen: dict[bool, list[str]] = {}
    for child, agent in agents.items():
        got = seen[child] = []
        listener = lambda table, rows, got=got: got.extend(str(r.get("call_id")) for r in rows)  # noqa: E731
        agent.tailer.listeners.append(listener)  # before the segment appears: the tail thread may read it
        put_segment(Path(agent.wal_dir) / f"{stem}.wal.ndjson", data)
        agent.tailer.poll()
        agent.convert()
        agent.tailer.listeners.remove(listener)
        assert not list(Path(agent.wal_dir).glob(f"{stem}.*")), "the segment is converted and removed"
    thread, child = agents[False], agents[True]
    ids = [f"call-{seq * 100 + n}" for n in range(len(items))] + [
        f"ev-{seq * 100 + n}" for n in range(len(items))
    ]
    assert table(child.log_dir, "calls", ids) == table(thread.log_dir, "calls", ids)
    assert table(child.log_dir, "events", ids) == table(thread.log_dir, "events", ids)
    assert entries(child.wal_dir, stem) == entries(thread.wal_dir, stem)
    assert seen[True] == seen[False]  # the tail (telemetry, feedback) saw the same records
    for key in ("flushed_rows", "corrupt_records", "quarantined", "converted_segments"):
        assert child.status()[key] == thread.status()[key], key


def put_segment(path: Path, data: bytes) -> None:
    """A dead writer's segment, whole at once (the agent's threads may convert it as soon as it appears)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


def write_segment(wal_dir: str, seq: int, n: int, base: int) -> str:
    path = Path(wal_dir) / f"{WRITER}.{seq:08d}.wal.ndjson"
    recs = [{"_t": "calls", "call_id": f"call-{base + i}", "ts": TS + i, "status": 200} for i in range(n)]
    put_segment(path, b"".join(orjson.dumps(r) + b"\n" for r in recs))
    return str(path)


def ids_in(log_dir: str) -> list[str]:
    with LogStore.open(log_dir) as store:
        return [r["call_id"] for r in store.sql("SELECT call_id FROM calls")]


def child_pid(agent: LogAgent, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (agent.child is None or agent.child.pid is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.child is not None and agent.child.pid is not None
    return agent.child.pid


def test_a_killed_child_is_replaced_and_every_row_lands_once(tmp_path):
    agent = LogAgent(agent_settings(str(tmp_path / "log"), child=True))
    agent.start()
    try:
        write_segment(agent.wal_dir, 1, 50, 0)
        os.kill(child_pid(agent), signal.SIGKILL)
        time.sleep(0.5)
        assert agent.convert() == 0  # the child died: the segment stays, the failure is counted
        assert agent.stats.flush_errors == 1 and "conversion process died" in (agent.stats.last_error or "")
        assert not agent.healthy
        assert agent.convert() == 50  # a new child
        assert agent.healthy
        assert agent.status()["convert_process"] == {"pid": agent.child.pid, "restarts": 1}
        # killed at whatever moment of a conversion: the next round lands each row once
        write_segment(agent.wal_dir, 2, 20_000, 1000)
        rounds: list[int] = []
        worker = threading.Thread(target=lambda: rounds.append(agent.convert()))
        pid = child_pid(agent)
        worker.start()
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        worker.join(timeout=60)
        while list(Path(agent.wal_dir).glob("*.wal.ndjson")):
            agent.convert()
        got = ids_in(agent.log_dir)
        assert len(got) == len(set(got)) == 20_050
        assert agent.child is not None and agent.child.restarts >= 1
    finally:
        agent.stop()
    assert agent.child is not None and agent.child.pid is None  # stopped with the agent


def test_the_child_does_not_outlive_the_agent(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        from gateway.agent.core import LogAgent
        from gateway.config import Settings
        s = Settings.model_validate({{"store": {{"log_dir": {str(tmp_path / "log")!r}, "convert_process": True}},
                                     "server": {{"auth": "open"}}}})
        agent = LogAgent(s)
        agent.start()
        while agent.child.pid is None:
            time.sleep(0.05)
        print(agent.child.pid, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid), "the conversion process outlived the agent"
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
