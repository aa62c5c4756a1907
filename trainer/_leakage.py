"""Duplicates and the split, so that no variant of a test (or golden) input is trained on.

Two steps of `trainer.dataset.build_dataset`, both over the examples' *user-visible* input
(the conversation without the system prompt, `trainer._dedup.conversation_text`):

`reduce_duplicates`
    Exact duplicates (the same full input) and near duplicates (Jaccard >= ``threshold``) are
    reduced, keeping the best first (golden, then relabelled, then the earliest). An example is
    removed only when its label equals (after normalising case and white space) the label of an
    example kept from its group: near duplicates whose answers differ are the hard cases and are
    all kept. One exception: served answers to exactly the same input as a relabel are removed
    (``superseded_by_relabel``); the reviewer corrected that input's answer.

`assign_splits`
    Near-duplicate *clusters* go wholly to one side. Two inputs are near when their Jaccard is
    at least ``group_threshold`` (lower than the dedup threshold, so that an appended sentence or
    a changed word still links them). Clusters are built around centres, oldest first: an input
    joins the centre it is nearest to among the earlier centres, or becomes a centre when it is
    near none; a cluster takes the side `trainer.split.assign_split` gives its centre's
    `trainer.split.split_key`. Unlike connected components this does not chain (templated inputs
    would otherwise make one giant cluster) and it is stable: an input's cluster depends only on
    earlier inputs, so a rebuild with more traffic keeps every side. A non-golden input near a
    golden one is dropped (``near_golden``). A cluster with an input that was in the previous
    version's test split goes to test, so the test split is never trained on by a later version
    even when the window moves (``moved_to_test`` counts the inputs this moved from train).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer._dedup import components, similar_pairs
from trainer._examples import Example
from trainer.split import assign_split, split_key

DEFAULT_GROUP_THRESHOLD = 0.7
"""Jaccard similarity from which two inputs are kept on the same side of the split."""

REASONS = {
    "no_body": "the call's request or answer is not in the log (store_bodies off)",
    "excluded": "an exclude event (dataset exclude or the review page)",
    "errors": "the call failed and was not relabelled",
    "thumbs_up_only": "no thumbs up, or a thumbs down (filter)",
    "min_rating": "unrated or rated below the floor (filter)",
    "no_flags": "flagged (filter)",
    "no_regenerated": "the user asked again (filter)",
    "where": "the --where predicate is false",
    "exact_duplicates": "the same input and the same label as an example kept",
    "superseded_by_relabel": "a served answer to the same input as a relabelled example",
    "near_duplicates": "a near duplicate (Jaccard >= the dedup threshold) with the same label as one kept",
    "near_golden": "a near variant of a golden input (the golden set is never trained or tested on)",
}
"""Why each build step removes examples; printed with the counts."""

_SPACES = re.compile(r"\s+")
_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


def label_text(completion: dict[str, Any]) -> str:
    """A label as compared by dedup: its text (case and white space normalised) and its tool calls."""
    content = completion.get("content")
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    calls = [
        ((c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments"))
        for c in completion.get("tool_calls") or []
        if isinstance(c, dict)
    ]
    return json.dumps([_SPACES.sub(" ", (text or "").lower()).strip(), calls])


def _priority(e: Example) -> tuple[Any, ...]:
    return (e.split != "golden", e.label_source != "relabel", e.ts or _EPOCH, e.example_id)


def _key_hash(e: Example) -> str:
    return hashlib.sha256(split_key(e.messages).encode()).hexdigest()


@dataclass
class Reduction:
    """What `reduce_duplicates` and `assign_splits` did: counts per reason, and what they kept."""

    removed: dict[str, int] = field(default_factory=dict)
    kept_other_label: dict[str, int] = field(default_factory=lambda: {"exact": 0, "near": 0})
    groups: int = 0
    largest_group: int = 1
    moved_to_test: int = 0


def similarity_pairs(examples: Sequence[Example], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs of examples whose user-visible inputs are at least ``threshold`` alike."""
    return similar_pairs([(e.example_id, e.messages) for e in examples], threshold)


def reduce_duplicates(
    examples: Sequence[Example],
    threshold: float | None,
    pairs: Sequence[tuple[str, str, float]],
    report: Reduction,
) -> list[Example]:
    """The examples left once exact and near duplicates with the same label are removed."""
    by_input: dict[str, list[Example]] = {}
    for e in examples:
        by_input.setdefault(e.input_hash, []).append(e)
    exact = superseded = 0
    unique: list[Example] = []
    for group in by_input.values():
        group = sorted(group, key=_priority)
        kept = [group[0]]
        for e in group[1:]:
            if kept[0].label_source == "relabel" and e.label_source == "served":
                superseded += 1
            elif any(label_text(e.completion) == label_text(k.completion) for k in kept):
                exact += 1
            else:
                kept.append(e)
                report.kept_other_label["exact"] += 1
        unique.extend(kept)
    report.removed["exact_duplicates"] = exact
    report.removed["superseded_by_relabel"] = superseded
    if threshold is None:
        report.removed["near_duplicates"] = 0
        return unique
    alive = {e.example_id: e for e in unique}
    dropped: set[str] = set()
    for cluster in components([p for p in pairs if p[0] in alive and p[1] in alive], threshold):
        kept = []
        for e in sorted((alive[i] for i in cluster), key=_priority):
            if any(label_text(e.completion) == label_text(k.completion) for k in kept):
                dropped.add(e.example_id)
            else:
                if kept and not any(e.input_hash == k.input_hash for k in kept):
                    report.kept_other_label["near"] += 1
                kept.append(e)
    report.removed["near_duplicates"] = len(dropped)
    return [e for e in unique if e.example_id not in dropped]


def assign_splits(
    examples: Sequence[Example],
    pairs: Sequence[tuple[str, str, float]],
    *,
    test_fraction: float,
    salt: str,
    group_threshold: float,
    previous_test: set[str],
    report: Reduction,
) -> list[Example]:
    """Every non-golden example with its split, one side per near-duplicate cluster (see the module doc)."""
    alive = {e.example_id: e for e in examples}
    near: dict[str, dict[str, float]] = {i: {} for i in alive}
    for a, b, sim in pairs:
        if sim >= group_threshold and a in alive and b in alive:
            near[a][b] = near[b][a] = sim
    golden = {i for i, e in alive.items() if e.split == "golden"}
    out = [alive[i] for i in sorted(golden)]
    order = sorted(
        (e for i, e in alive.items() if i not in golden), key=lambda e: (e.ts or _EPOCH, e.example_id)
    )
    near_golden = [e for e in order if golden.intersection(near[e.example_id])]
    report.removed["near_golden"] = len(near_golden)
    skip = {e.example_id for e in near_golden}
    centre_of: dict[str, str] = {}
    members: dict[str, list[Example]] = {}
    rank = {e.example_id: n for n, e in enumerate(order)}
    for e in order:
        if e.example_id in skip:
            continue
        centres = [(sim, -rank[c], c) for c, sim in near[e.example_id].items() if c in members]
        centre = max(centres)[2] if centres else e.example_id
        centre_of[e.example_id] = centre
        members.setdefault(centre, []).append(e)
    report.groups = len(members)
    report.largest_group = max((len(m) for m in members.values()), default=0)
    for centre, group in members.items():
        side = assign_split(split_key(alive[centre].messages), test_fraction, salt)
        if side == "train" and any(_key_hash(e) in previous_test for e in group):
            side = "test"
            report.moved_to_test += sum(1 for e in group if _key_hash(e) not in previous_test)
        out.extend(dataclasses.replace(e, split=side) for e in group)
    return out


def previous_test_inputs(previous: Any, test_fraction: float, salt: str) -> set[str]:
    """`split_key` hashes of the test inputs of ``previous`` (a `DatasetVersion`) when its split matches."""
    if previous is None:
        return set()
    split = previous.manifest.get("split") or {}
    if split.get("salt") != salt or split.get("test_fraction") != test_fraction:
        return set()
    return {_key_hash(e) for e in previous.examples("test")}
