"""The state backends' memory of Responses API ids (`StateBackend.note_response`), the same for the
file backend and a real PostgreSQL server: an id noted by one process is found by another, until
it expires or is forgotten; expired entries are swept; hostile ids are harmless."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gateway.state import new_backend
from gateway.state.files import FileBackend

ORIGIN = {"route": "bot", "variant": "candidate", "upstream": "cand", "key": "alice"}


def test_an_id_noted_by_one_process_is_found_by_another(location):
    one, two = new_backend(location), new_backend(location)
    try:
        assert two.response_origin("resp_1") is None
        one.note_response("resp_1", ORIGIN, 60)
        assert two.response_origin("resp_1") == ORIGIN
        one.note_response("resp_1", {**ORIGIN, "variant": "baseline"}, 60)  # noted again: replaced
        assert two.response_origin("resp_1")["variant"] == "baseline"
        two.forget_response("resp_1")
        assert one.response_origin("resp_1") is None
        two.forget_response("resp_never")  # forgetting an unknown id is fine
    finally:
        one.close()
        two.close()


def test_an_expired_id_is_unknown_and_swept(location):
    backend = new_backend(location)
    try:
        backend.note_response("resp_short", ORIGIN, 0.2)
        backend.note_response("resp_long", ORIGIN, 600)
        assert backend.response_origin("resp_short") == ORIGIN
        time.sleep(0.4)
        assert backend.response_origin("resp_short") is None
        assert backend.response_origin("resp_long") == ORIGIN
        for i in range(300):  # enough notes for a sweep (every 256)
            backend.note_response(f"resp_filler_{i}", ORIGIN, 0.01)
        time.sleep(0.05)
        for i in range(300):
            backend.note_response(f"resp_more_{i}", ORIGIN, 600)
        if isinstance(backend, FileBackend):  # one shard of 256 per 256 notes: sweep the rest now
            assert sum(backend._sweep_responses(f"{n:02x}") for n in range(256)) > 200
        left = _count(backend, location)
        assert left < 600 - 100, left  # expired entries were removed, live ones kept
        assert backend.response_origin("resp_long") == ORIGIN
    finally:
        backend.close()


def _count(backend, location) -> int:
    if location.startswith("postgresql://"):
        with backend._tx() as conn:
            return int(conn.execute("SELECT count(*) FROM response_origins").fetchone()[0])
    root = os.path.join(location, "responses")
    return sum(len(files) for _, _, files in os.walk(root))


@pytest.mark.parametrize("rid", ["resp_\x00nul", "resp_é\ud800", "../../etc/passwd", "x" * 5000, ""])
def test_hostile_ids_are_harmless(location, rid):
    backend = new_backend(location)
    try:
        from gateway.responses import valid_id

        assert not valid_id(rid)  # the request path never asks the backend about these
        if location.startswith("postgresql://") and any(c in rid for c in "\x00\ud800"):
            return  # PostgreSQL text holds neither NUL nor a lone surrogate
        backend.note_response(rid, ORIGIN, 60)
        assert backend.response_origin(rid) == ORIGIN
        backend.forget_response(rid)
        assert backend.response_origin(rid) is None
    finally:
        backend.close()


def test_concurrent_notes_from_many_threads(location):
    backends = [new_backend(location) for _ in range(4)]
    try:

        def note(k: int) -> None:
            for i in range(50):
                backends[k].note_response(f"resp_{k}_{i}", {**ORIGIN, "n": i}, 60)

        threads = [threading.Thread(target=note, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader = backends[0]
        assert all(reader.response_origin(f"resp_{k}_{i}")["n"] == i for k in range(4) for i in range(50))
    finally:
        for b in backends:
            b.close()
