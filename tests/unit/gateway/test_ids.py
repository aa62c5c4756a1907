"""Call ids: the fast encoder writes what RFC 4648 base32 (Crockford's alphabet) writes for the 16 bytes."""

import base64
import multiprocessing
import time

from hypothesis import given
from hypothesis import strategies as st

from gateway.store.ids import encode_id, id_time, new_id

_B32 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 1))
def test_encoding_matches_base32(ms, rand):
    raw = ms.to_bytes(6, "big") + rand.to_bytes(10, "big")
    expected = "call_" + base64.b32encode(raw)[:26].translate(_B32).decode()
    assert encode_id("call", ms, rand) == expected


def test_ids_sort_by_time_and_carry_it():
    first = new_id("call")
    time.sleep(0.002)
    second = new_id("call")
    assert first < second
    assert abs(id_time(second) - time.time()) < 1.0
    assert len({new_id("call") for _ in range(5000)}) == 5000


def _child_ids(q):
    q.put([new_id("call") for _ in range(50)])


def test_a_forked_child_does_not_repeat_its_parents_ids():
    new_id("call")  # fills the parent's random pool
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_ids, args=(q,))
    p.start()
    child = q.get(timeout=30)
    p.join(30)
    parent = [new_id("call") for _ in range(50)]
    strip = [i[-16:] for i in child], [i[-16:] for i in parent]  # the random part
    assert not set(strip[0]) & set(strip[1])
