"""Does a filter remove random noise, or a region of the input space?

Filtering on quality signals (thumbs up only, no errors, a rating floor) is tempting, but
when the removed calls share something (every question about refunds, every long input)
the fine-tuned model never sees that region and fails there in production. For one filter
step, `region_warnings` describes each input by coarse features:

* ``length``: the input's length tercile (short / medium / long),
* ``system``: which system prompt it uses (when there are several),
* ``tools``: whether tools were offered,
* ``word``: each word of the user's text that occurs in 3 % to 60 % of the inputs
  (at most the 200 most common),

and compares, for every feature value held by enough inputs, the share of those inputs the
filter removed with the share it removed among the others (two-proportion z-test). A value
removed at least ``min_gap`` more often, with ``z >= min_z``, is reported. The thresholds are
conservative (``z >= 4``) because a few hundred features are tested at once.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"[a-z][a-z0-9_'-]{2,}")


@dataclass(frozen=True)
class RegionWarning:
    """One feature whose inputs a filter removed far more often than the rest."""

    filter: str
    feature: str
    n: int
    removed_share: float
    others_removed_share: float
    z: float

    def message(self) -> str:
        return (
            f"filter {self.filter!r} removed {self.removed_share:.0%} of the inputs with {self.feature} "
            f"(n={self.n}) against {self.others_removed_share:.0%} of the others: it cuts a region of the "
            "input space, not random noise; consider relabelling those calls instead of dropping them"
        )


def _features(messages: Sequence[dict[str, Any]], tools: Any) -> tuple[str, str, set[str], int]:
    system = "\n".join(str(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
    user = " ".join(str(m.get("content")) for m in messages if m.get("role") == "user")
    length = sum(len(str(m.get("content") or "")) for m in messages)
    sys_id = hashlib.sha256(system.encode()).hexdigest()[:8] if system else "none"
    return sys_id, "yes" if tools else "no", set(_WORD.findall(user.lower())), length


def region_warnings(
    filter_name: str,
    inputs: Sequence[tuple[str, list[dict[str, Any]], Any]],
    removed: Collection[str],
    *,
    min_gap: float = 0.3,
    min_z: float = 4.0,
    max_reported: int = 3,
) -> list[RegionWarning]:
    """Warnings for the features of ``inputs`` (``(id, messages, tools)``) that ``removed`` targets."""
    total = len(inputs)
    n_removed = sum(1 for ident, _, _ in inputs if ident in removed)
    if total < 20 or n_removed == 0 or n_removed == total:
        return []
    min_support = max(10, math.ceil(0.02 * total))
    feats: dict[str, set[str]] = defaultdict(set)
    lengths: list[tuple[int, str]] = []
    word_counts: Counter[str] = Counter()
    per_input_words: dict[str, set[str]] = {}
    systems: set[str] = set()
    for ident, messages, tools in inputs:
        sys_id, has_tools, words, length = _features(messages, tools)
        systems.add(sys_id)
        feats[f"system prompt {sys_id}"].add(ident)
        feats[f"tools={has_tools}"].add(ident)
        lengths.append((length, ident))
        per_input_words[ident] = words
        word_counts.update(words)
    if len(systems) < 2:
        feats = defaultdict(set, {k: v for k, v in feats.items() if not k.startswith("system prompt")})
    lengths.sort()
    for rank, (_, ident) in enumerate(lengths):
        feats[f"length={('short', 'medium', 'long')[min(2, 3 * rank // total)]}"].add(ident)
    common = [w for w, c in word_counts.most_common() if 0.03 * total <= c <= 0.6 * total][:200]
    for word in common:
        feats[f'the word "{word}"'] = {i for i, ws in per_input_words.items() if word in ws}

    found = []
    for feature, members in feats.items():
        n = len(members)
        if n < min_support or n == total:
            continue
        r_in = sum(1 for i in members if i in removed)
        r_out = n_removed - r_in
        p_in, p_out = r_in / n, r_out / (total - n)
        pooled = n_removed / total
        se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / (total - n)))
        z = (p_in - p_out) / se if se > 0 else 0.0
        if p_in - p_out >= min_gap and z >= min_z:
            found.append(RegionWarning(filter_name, feature, n, p_in, p_out, round(z, 1)))
    found.sort(key=lambda w: (-w.z, w.feature))
    return found[:max_reported]
