"""Stable train/test assignment by hashing the user-visible input.

An input's split depends on what its user wrote alone (the canonical JSON of its messages
without the system prompt, see `split_key`), never on the build time or the order of rows,
so a system-prompt edit does not move a test input into train. Near variants of one input
(an appended sentence, a changed word) are kept on one side by `trainer._leakage`, which
hashes a cluster's earliest member. `input_key` (every message and the tools) stays the
input's identity for exact deduplication. So when a dataset is rebuilt with more traffic, every input that was in the test
split stays there, a new input lands in each split with the configured probability, and
the test split is never trained on by a later version.

The hash is ``sha256(salt + "\\0" + input_key)``; its first 8 bytes, read as an unsigned
integer over ``2**64``, give a number ``u`` uniform in ``[0, 1)``, and the example is in the
test split when ``u < test_fraction``. Growing ``test_fraction`` only moves examples from
train to test, never the reverse. A different ``salt`` draws an independent split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

Split = Literal["train", "test", "golden"]

DEFAULT_TEST_FRACTION = 0.1
DEFAULT_SALT = "shadowtune-split-v1"


def input_key(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None) -> str:
    """Canonical text of an input: what two calls must share to count as the same input."""
    slim = [
        {k: m[k] for k in ("role", "content", "name", "tool_calls", "tool_call_id") if m.get(k) is not None}
        for m in messages
    ]
    return json.dumps(
        {"messages": slim, "tools": list(tools or [])},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )


def split_key(messages: Sequence[dict[str, Any]]) -> str:
    """Canonical text of the user-visible input: every message but the system (and developer) prompt.

    Tools are left out too: like the system prompt they belong to the application, not the user.
    """
    visible = [m for m in messages if m.get("role") not in ("system", "developer")]
    slim = [
        {
            k: (m[k].strip() if isinstance(m[k], str) else m[k])
            for k in ("role", "content", "name", "tool_calls", "tool_call_id")
            if m.get(k) is not None
        }
        for m in visible
    ]
    return json.dumps(slim, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def input_hash(key: str) -> str:
    """Hex sha256 of an input key (no salt): the input's identity in a dataset."""
    return hashlib.sha256(key.encode()).hexdigest()


def unit_interval(key: str, salt: str = DEFAULT_SALT) -> float:
    """The input's position in ``[0, 1)`` for ``salt``."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str, test_fraction: float = DEFAULT_TEST_FRACTION, salt: str = DEFAULT_SALT) -> Split:
    """``"test"`` for about ``test_fraction`` of inputs, always the same ones; ``"train"`` otherwise."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    return "test" if unit_interval(key, salt) < test_fraction else "train"
