"""Prefixed, time-sortable ids: 48-bit milliseconds + 80 random bits, Crockford base32.

Like a ULID, ``call_<26 chars>`` sorts lexically in creation order; the 128 bits are
encoded from the most significant end (the last character carries 3 bits and 2 zero
bits), which lets the standard library's base32 encoder do the work.
"""

from __future__ import annotations

import base64
import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_STANDARD = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TO_CROCKFORD = bytes.maketrans(_STANDARD.encode(), _CROCKFORD.encode())


def new_id(prefix: str) -> str:
    """``<prefix>_<26 chars>``, e.g. ``call_01JD5X...``; lexical order follows creation time."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    return prefix + "_" + base64.b32encode(raw)[:26].translate(_TO_CROCKFORD).decode()


def id_time(ident: str) -> float:
    """Creation time (epoch seconds) encoded in an id made by `new_id`."""
    value = 0
    for ch in ident.rsplit("_", 1)[-1]:
        value = value * 32 + _CROCKFORD.index(ch)
    return ((value >> 2) >> 80) / 1000.0
