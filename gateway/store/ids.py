"""Prefixed, time-sortable ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    """``<prefix>_<26 chars>``, e.g. ``call_01JD5X...``; lexical order follows creation time."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return prefix + "_" + "".join(reversed(chars))


def id_time(ident: str) -> float:
    """Creation time (epoch seconds) encoded in an id made by `new_id`."""
    value = 0
    for ch in ident.rsplit("_", 1)[-1]:
        value = value * 32 + _ALPHABET.index(ch)
    return (value >> 80) / 1000.0
