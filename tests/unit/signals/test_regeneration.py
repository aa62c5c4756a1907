"""Regeneration detection over generated traffic written to a real log directory."""

from __future__ import annotations

import random

import orjson
import pytest

from gateway.signals.regeneration import detect_regenerations, record_regenerations
from gateway.store import LogStore, LogWriter

T0 = 1_750_000_000.0  # epoch seconds
WINDOW = 300.0


def msgs(*turns):
    roles = ["user", "assistant"]
    out = [{"role": "system", "content": "be brief"}]
    out += [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    return out


class Traffic:
    """Writes calls and remembers which ones a correct detector must mark, and why."""

    def __init__(self):
        self.calls: list[dict] = []
        self.expected: dict[str, str] = {}
        self.n = 0

    def call(self, t, messages, *, user="u1", served=True, route="chat", **extra):
        self.n += 1
        cid = f"call_{self.n:05d}"
        self.calls.append(
            {
                "call_id": cid,
                "ts": int((T0 + t) * 1e6),
                "route": route,
                "user": user,
                "served": served,
                "variant": "baseline",
                "status": 200,
                "request": orjson.dumps({"model": "m", "messages": messages}).decode(),
                "response": orjson.dumps({"id": f"chatcmpl-{cid}", "choices": []}).decode(),
                **extra,
            }
        )
        return cid

    def write(self, log):
        with LogWriter(log) as w:
            for c in self.calls:
                w.append("calls", dict(c))


@pytest.fixture
def log(tmp_path):
    return str(tmp_path / "log")


def detect(log, **kw):
    with LogStore.open(log) as store:
        return detect_regenerations(store, since=T0 - 10, window_s=WINDOW, **kw)


def test_generated_traffic_marks_exactly_the_regenerated_calls(log):
    rng = random.Random(7)
    tr = Traffic()
    for u in range(40):
        user = f"user{u}"
        t = rng.uniform(0, 5000)
        history: list[str] = []
        for turn in range(rng.randint(1, 4)):
            history.append(f"{user} question {turn} about {rng.random():.6f}")
            cid = tr.call(t, msgs(*history), user=user)
            t += rng.uniform(1, 30)
            r = rng.random()
            if r < 0.25:  # asks again for the same turn, within the window
                tr.expected[cid] = "retry"
                cid2 = tr.call(t, msgs(*history), user=user)
                t += rng.uniform(1, 30)
                if rng.random() < 0.3:  # and again: the second one is marked too
                    tr.expected[cid2] = "retry"
                    tr.call(t, msgs(*history), user=user)
                    t += 5
            elif r < 0.35:  # the same messages, but after the window: not a regeneration
                t += WINDOW + 1
                tr.call(t, msgs(*history), user=user)
            elif r < 0.45:  # another user sends identical messages: not a regeneration
                tr.call(t, msgs(*history), user=user + "-other")
            elif r < 0.5:  # a shadow call of the same conversation is never served: ignored
                tr.call(t + 0.1, msgs(*history), user=user, served=False, variant="candidate")
            history.append(f"answer {turn}")
    tr.write(log)
    events = detect(log)
    assert {e["call_id"]: e["value"] for e in events} == tr.expected
    assert len(tr.expected) >= 8
    assert all(
        e["kind"] == "regeneration" and e["source"] == "detector" and e["value_num"] == 1.0 for e in events
    )


def test_detection_is_idempotent_once_events_are_written(log):
    tr = Traffic()
    first = tr.call(0, msgs("hi"))
    tr.call(10, msgs("hi"))
    tr.write(log)
    events = detect(log)
    assert [e["call_id"] for e in events] == [first]
    with LogWriter(log) as w:
        assert record_regenerations(w, events) == 1
    assert detect(log) == []
    with LogStore.open(log) as store:
        assert store.sql("SELECT regenerated FROM outcomes WHERE call_id = ?", [first]) == [
            {"regenerated": True}
        ]


def test_sticky_key_falls_back_to_session_then_client_key(log):
    tr = Traffic()
    a = tr.call(0, msgs("hi"), user=None, session_id="s1")
    tr.call(5, msgs("hi"), user=None, session_id="s1")
    b = tr.call(0, msgs("yo"), user=None, client_key="app")
    tr.call(5, msgs("yo"), user=None, client_key="app")
    tr.call(0, msgs("anon"), user=None)
    tr.call(5, msgs("anon"), user=None)
    tr.write(log)
    assert sorted(e["call_id"] for e in detect(log)) == sorted([a, b])


def test_a_tool_call_continuation_is_not_a_retry(log):
    tr = Traffic()
    first = msgs("weather in Paris?")
    cont = [*first, {"role": "assistant", "tool_calls": [{"id": "t1"}]}, {"role": "tool", "content": "12C"}]
    tr.call(0, first)
    tr.call(2, cont)
    tr.write(log)
    assert detect(log) == []


def test_explicit_header_marks_the_named_call_by_call_id_or_response_id(log):
    tr = Traffic()
    a = tr.call(0, msgs("one"))
    tr.call(900, msgs("something else"), regenerate_of=a)
    b = tr.call(1000, msgs("two"), user="u2")
    tr.call(3000, msgs("two again"), user="u2", regenerate_of=f"chatcmpl-{b}")
    tr.write(log)
    events = detect(log)
    assert {e["call_id"]: e["value"] for e in events} == {a: "explicit", b: "explicit"}
    assert orjson.loads(events[0]["data"])["by"] == "call_00002"


def test_rephrase_is_off_by_default_and_detects_edits_and_follow_ups_when_on(log):
    tr = Traffic()
    edited = tr.call(0, msgs("what is the capital of france"))
    tr.call(20, msgs("what is the capital city of France?"))
    asked = tr.call(0, msgs("how do I sort a list in python"), user="u2")
    tr.call(
        30,
        msgs("how do I sort a list in python", "use sorted()", "how do I sort a list in python in reverse"),
        user="u2",
    )
    tr.call(0, msgs("tell me a joke"), user="u3")
    tr.call(30, msgs("tell me a joke", "knock knock", "what is the GDP of Peru"), user="u3")  # new topic
    tr.write(log)
    assert detect(log) == []
    assert {e["call_id"]: e["value"] for e in detect(log, rephrase=True)} == {
        edited: "rephrase",
        asked: "rephrase",
    }
