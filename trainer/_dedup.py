"""Exact and near-duplicate detection over inputs (MinHash + LSH, pure Python).

Two inputs are near duplicates when their *conversations* (every message but the system
prompt, normalised: lower case, runs of white space collapsed) have a Jaccard similarity of
character 5-gram shingles of at least ``threshold``. The system prompt (and the tools) are
left out on purpose: a long shared system prompt would otherwise make every pair of calls
look alike, and an edited system prompt does not make a user's input a new one.

Candidates come from LSH bands over 64 MinHash values; every candidate pair is then
checked on the exact Jaccard of the shingle sets, so a reported pair is never a hash
accident. Clusters are the connected components of the reported pairs.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

_SHINGLE = 5
_PERMS = 64
_BANDS = 16
_ROWS = _PERMS // _BANDS
_PRIME = (1 << 61) - 1
_rng = random.Random(20240601)
_COEFFS = [(_rng.randrange(1, _PRIME), _rng.randrange(0, _PRIME)) for _ in range(_PERMS)]
_SPACES = re.compile(r"\s+")


def conversation_text(messages: Sequence[dict[str, Any]]) -> str:
    """The normalised non-system part of a conversation."""
    parts = []
    for m in messages:
        if m.get("role") in ("system", "developer"):
            continue
        content = m.get("content")
        text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
        parts.append(f"{m.get('role')}: {text}")
        if m.get("tool_calls"):
            parts.append(json.dumps(m["tool_calls"], sort_keys=True))
    return _SPACES.sub(" ", "\n".join(parts).lower()).strip()


def shingles(text: str) -> set[int]:
    if len(text) <= _SHINGLE:
        grams = {text}
    else:
        grams = {text[i : i + _SHINGLE] for i in range(len(text) - _SHINGLE + 1)}
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") for g in grams}


def minhash(sh: set[int]) -> list[int]:
    return [min((a * h + b) % _PRIME for h in sh) for a, b in _COEFFS]


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def similar_pairs(
    items: Sequence[tuple[str, list[dict[str, Any]]]], threshold: float
) -> list[tuple[str, str, float]]:
    """``(a, b, jaccard)`` for each pair of ``(id, messages)`` whose conversations are at least ``threshold`` alike."""
    sets = {ident: shingles(conversation_text(messages)) for ident, messages in items}
    buckets: dict[tuple[int, tuple[int, ...]], list[str]] = defaultdict(list)
    for ident, sh in sets.items():
        sig = minhash(sh)
        for band in range(_BANDS):
            buckets[(band, tuple(sig[band * _ROWS : (band + 1) * _ROWS]))].append(ident)
    checked: set[tuple[str, str]] = set()
    out = []
    for members in buckets.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                pair = (a, b) if a < b else (b, a)
                if pair in checked:
                    continue
                checked.add(pair)
                sim = jaccard(sets[a], sets[b])
                if sim >= threshold:
                    out.append((*pair, sim))
    return sorted(out)


def components(pairs: Sequence[tuple[str, str, float]], threshold: float) -> list[list[str]]:
    """Connected components (of two or more ids) of the pairs at least ``threshold`` alike."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for a, b, sim in pairs:
        if sim < threshold:
            continue
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    clusters: dict[str, list[str]] = defaultdict(list)
    for ident in parent:
        clusters[find(ident)].append(ident)
    return sorted(sorted(c) for c in clusters.values() if len(c) > 1)


def near_duplicate_clusters(
    items: Sequence[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]], threshold: float
) -> list[list[str]]:
    """Clusters (of two or more ids) of near-duplicate inputs among ``(id, messages, tools)``."""
    return components(similar_pairs([(i, m) for i, m, _ in items], threshold), threshold)
