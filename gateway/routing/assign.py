"""Sticky canary assignment: a deterministic hash of the sticky key and the route's salt.

A key's bucket is a number in ``[0, 10000)`` (0.01 % steps) that depends only on the salt
and the key, so every worker and replica puts a user in the same arm, and raising the
share from 5 % to 10 % only moves users into the canary: a user is a candidate user
exactly when ``bucket < share * 100``.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(key: str, salt: str = "") -> int:
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_canary(key: str, salt: str, share_percent: float) -> bool:
    """Whether ``key`` belongs to the candidate arm at ``share_percent`` (0-100)."""
    return bucket(key, salt) < round(share_percent * 100)
