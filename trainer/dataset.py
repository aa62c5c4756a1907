"""Datasets from the call log: labelled examples, versioned, with a stable test split.

`build_dataset` turns the served baseline calls of one route into supervised examples:

1. **Source.** Calls with ``variant = 'baseline'`` and ``served`` on the route, in the time
   window, read with their outcomes (``calls_with_outcomes``). The query and its parameters
   go into the manifest.
2. **Exclusions.** A call with an ``exclude`` event is dropped (``dataset exclude``).
3. **Golden set.** Hand-picked call ids (or a tag) become the ``golden`` split: kept whatever
   the filters say, never trained on, and no train or test example duplicates one.
4. **Filters.** Calls that failed (unless relabelled), then the optional quality filters
   (thumbs up only, a rating floor, no flags, not regenerated, an SQL predicate). Relabelled
   calls pass the quality filters: a hard case is corrected, not dropped. Each filter step
   is checked by `trainer._coverage.region_warnings`, and a filter that removes a region of
   the input space rather than random noise is reported in the manifest and on stderr.
5. **Labels.** The latest ``relabel`` event's text when there is one, else the served
   answer (the whole assistant message, tool calls included).
6. **Redaction** of every message and label (`trainer._redact`).
7. **Duplicates.** Exact duplicates (same input) and near duplicates (see `trainer._dedup`)
   are reduced to one example: golden first, then a relabelled one, then the earliest.
   Keeping the earliest makes a rebuild with more traffic keep the same survivors.
8. **Split** by hashing the input (`trainer.split`): unchanged when the dataset is rebuilt.

Preference pairs (for DPO) come from the same calls: a relabel (the correction over the
served answer), a regeneration (the later answer over the one the user asked again for,
when the input is the same), and a choice between two choices of one response (``a`` /
``b``) or between two calls (the chosen call's id).

Layout, next to the log (``<log_dir>/datasets/``)::

    <name>/v<N>/examples.parquet     one row per example (split: train | test | golden)
    <name>/v<N>/preferences.parquet  one row per preference pair (same split rule)
    <name>/v<N>/manifest.json        source query, filters, counts, split sizes, warnings, content hash

Stages 2 to 4 are `trainer._selection` (`Filters` is re-exported here); records, reading and
writing versions live in `trainer._examples` (re-exported here). A version directory is
written in full under a temporary name and renamed into place, so a reader never sees half a
version, and two builds never take the same number.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from gateway.durations import parse_moment
from gateway.protocol import transform as request_transform
from gateway.protocol.messages import map_text
from gateway.protocol.transform import RequestTransform
from gateway.store import LogStore, LogStoreError, LogWriter, queries
from gateway.store.ids import new_id
from gateway.store.layout import is_remote, local_path
from trainer._dedup import similar_pairs
from trainer._examples import (
    EXAMPLES_SCHEMA,
    MANIFEST_VERSION,
    PREFERENCES_SCHEMA,
    DatasetVersion,
    Example,
    PreferencePair,
    _check_name,
    _hash_of,
    _write_version,
    datasets_root,
    list_datasets,
    load_dataset,
)
from trainer._leakage import (
    DEFAULT_GROUP_THRESHOLD,
    REASONS,
    Reduction,
    assign_splits,
    previous_test_inputs,
    reduce_duplicates,
    similarity_pairs,
)
from trainer._redact import Redactor, resolve_redactor
from trainer._selection import (
    Filters,
    Selection,
    SourceCall,
    answered_ok,
    apply_filters,
    assistant_message,
    filter_steps,
    select,
)
from trainer.errors import DatasetError
from trainer.split import DEFAULT_SALT, DEFAULT_TEST_FRACTION, assign_split, input_hash, input_key, split_key

__all__ = [
    "EXAMPLES_SCHEMA",
    "PREFERENCES_SCHEMA",
    "DatasetVersion",
    "Example",
    "Filters",
    "PreferencePair",
    "build_dataset",
    "datasets_root",
    "exclude",
    "list_datasets",
    "load_dataset",
    "relabel",
]


# -- events written from the CLI -------------------------------------------------------------
def _event(
    log_dir: str, call_id: str, kind: str, value: str | None, *, user: str | None, comment: str | None
) -> str:
    with LogStore.open(log_dir) as store:
        if not queries.call_exists(store, call_id):
            raise DatasetError(f"no call {call_id} in the log at {log_dir}")
    event_id = new_id("evt")
    record = {
        "schema_version": 1,
        "event_id": event_id,
        "call_id": call_id,
        "ts": int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000),
        "kind": kind,
        "value": value,
        "comment": comment,
        "user": user,
        "source": "cli",
    }
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as writer:
        writer.append("events", record)
    return event_id


def relabel(
    log_dir: str, call_id: str, answer: str, *, user: str | None = None, comment: str | None = None
) -> str:
    """Record a corrected answer for a call (a ``relabel`` event); returns the event id."""
    return _event(log_dir, call_id, "relabel", answer, user=user, comment=comment)


def exclude(log_dir: str, call_id: str, *, user: str | None = None, reason: str | None = None) -> str:
    """Keep a call out of every dataset built from now on (an ``exclude`` event); returns the event id."""
    return _event(log_dir, call_id, "exclude", None, user=user, comment=reason)


# -- build -------------------------------------------------------------------------------------
def parse_time(value: str | dt.datetime | None, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """An aware datetime from an ISO date/time or a relative age (``30m``, ``1.5h``, ``7d``, ``2w``:
    `gateway.durations`)."""
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        return parse_moment(value, now=now)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def build_dataset(
    log_dir: str,
    name: str,
    *,
    route: str | None = None,
    since: str | dt.datetime | None = None,
    until: str | dt.datetime | None = None,
    filters: Filters | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    salt: str = DEFAULT_SALT,
    golden_call_ids: Iterable[str] = (),
    golden_tag: str | None = None,
    near_dup_threshold: float | None = 0.9,
    group_threshold: float | None = DEFAULT_GROUP_THRESHOLD,
    redact: str | Redactor | None = "secrets",
    transform: Mapping[str, Any] | None = None,
    warn: bool = True,
) -> DatasetVersion:
    """Build the next version of dataset ``name`` from the log (see the module docstring).

    Args:
        log_dir: the call log directory; the dataset goes to ``<log_dir>/datasets/<name>/v<N>``.
        name: dataset name (letters, digits, ``.``, ``_``, ``-``).
        route: only calls of this route (all routes when None).
        since: only calls at or after this time (ISO time or an age such as ``7d``).
        until: only calls before this time.
        filters: optional quality filters.
        test_fraction: share of inputs in the test split, in ``[0, 1)``.
        salt: the split's salt; keep the default to keep the split across versions.
        golden_call_ids: calls that make the golden split.
        golden_tag: calls with this tag also make the golden split.
        near_dup_threshold: Jaccard similarity from which two inputs are near duplicates (None: exact only).
        group_threshold: Jaccard similarity from which two inputs stay on the same side of the split
            (None: only inputs equal once the system prompt is left out).
        redact: ``none``, ``secrets``, ``pii``, ``module:function`` or a callable.
        transform: the route's candidate request transform (`gateway.protocol.transform` spec):
            every example's input is what the candidate will be sent; recorded in the manifest.
        warn: print the manifest's warnings to stderr.

    Raises:
        DatasetError: no call matches, a bad filter, name, redactor, transform or time.
    """
    _check_name(name)
    filters = filters or Filters()
    from gateway.progress import Bar

    bar = Bar(3, f"dataset {name}", unit="stage")  # read, parse, dedup + split + write
    redactor, tf = _options(test_fraction, redact, transform)
    since_t, until_t = parse_time(since), parse_time(until)
    window: dict[str, Any] = {"route": route, "since": since_t, "until": until_t}
    query, params = queries.training_query(route, since_t, until_t)  # recorded in the manifest
    rows, where_ids = _read_source(log_dir, filters, window)
    bar.update(1, stage="parse")
    sel = select(rows, tf, set(golden_call_ids), golden_tag)
    sel.pool = apply_filters(sel, filter_steps(filters, where_ids))
    bar.update(1, stage="near-duplicates")
    report = Reduction()
    final = _reduce_and_split(
        _examples(sel, redactor),
        previous=_previous_version(log_dir, name),
        near_dup_threshold=near_dup_threshold,
        group_threshold=group_threshold,
        test_fraction=test_fraction,
        salt=salt,
        report=report,
    )
    sel.removed_by.update(report.removed)
    sides = _sides(final)
    pairs = _preferences(sel.calls, redactor, test_fraction, salt, excluded=sel.excluded, sides=sides)
    if group_threshold is not None:
        pairs = _near_sides(pairs, final, sides, group_threshold)
    golden_inputs = {e.input_hash for e in final if e.split == "golden"}
    pairs = [p for p in pairs if _hash_of(p) not in golden_inputs]
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "source": {
            "log_dir": log_dir if is_remote(log_dir) else os.path.abspath(local_path(log_dir)),
            "route": route,
            "since": since_t.isoformat() if since_t else None,
            "until": until_t.isoformat() if until_t else None,
            "query": query,
            "params": [p.isoformat() if isinstance(p, dt.datetime) else p for p in params],
            "filters": filters.active(),
            "golden": sorted(sel.golden_ids),
            "golden_tag": golden_tag,
            "last_call_ts": max(c.ts for c in sel.calls).isoformat() if sel.calls else None,
        },
        "split": {
            "method": "sha256(salt, user-visible input of its near-duplicate cluster's centre)",
            "salt": salt,
            "test_fraction": test_fraction,
            "group_threshold": group_threshold,
            "groups": report.groups,
            "largest_group": report.largest_group,
            "moved_to_test": report.moved_to_test,
        },
        "dedup": {
            "near_dup_threshold": near_dup_threshold,
            "kept_with_another_label": report.kept_other_label,
        },
        "candidate_transform": tf.manifest() if tf is not None else None,
        "redaction": redact
        if isinstance(redact, str) or redact is None
        else getattr(redact, "__name__", "custom"),
        **_counts(len(rows), sel, final, pairs),
        "warnings": sel.warnings,
    }
    dv = _write_version(log_dir, name, final, pairs, manifest)
    if warn:
        for w in sel.warnings:
            print(f"warning: {w}", file=sys.stderr)
    bar.set(3, stage="written")
    bar.close()
    return dv


def _options(
    test_fraction: float, redact: str | Redactor | None, transform: Mapping[str, Any] | None
) -> tuple[Redactor, RequestTransform | None]:
    """The build's redactor and candidate transform, once its options are checked."""
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    try:
        return resolve_redactor(redact), request_transform.parse(
            transform
        )  # a TransformError is a ValueError
    except (ValueError, ImportError) as exc:
        raise DatasetError(str(exc)) from exc


def _read_source(
    log_dir: str, filters: Filters, window: dict[str, Any]
) -> tuple[list[dict[str, Any]], set[str] | None]:
    """Stage 1: the served baseline calls of the window, and the ids ``filters.where`` keeps."""
    try:
        with LogStore.open(log_dir) as store:
            rows = cast("list[dict[str, Any]]", queries.training_calls(store, **window))
            where_ids = _where_ids(store, filters.where, window) if filters.where else None
    except LogStoreError as exc:
        raise DatasetError(str(exc)) from exc
    if not rows:
        route = window["route"]
        raise DatasetError(
            f"no served baseline calls{f' on route {route!r}' if route else ''} in that period"
        )
    return rows, where_ids


def _examples(sel: Selection, redactor: Redactor) -> list[Example]:
    """Stages 5 and 6: one labelled, redacted example per golden or pooled call that has a label."""
    examples: dict[str, Example] = {}
    for split_name, group in (("golden", sel.golden), ("pool", sel.pool)):
        for c in group:
            label = _label(c)
            if label is None:
                continue
            msgs = [_redact_message(m, redactor) for m in c.messages]
            examples[c.call_id] = Example(
                example_id=c.call_id,
                call_id=c.call_id,
                split=split_name,  # the pool is split below
                messages=msgs,
                tools=c.tools,
                completion=_redact_message(label, redactor),
                label_source="relabel" if c.relabelled else "served",
                input_hash=input_hash(input_key(msgs, c.tools)),
                ts=c.ts,
            )
    return list(examples.values())


def _reduce_and_split(
    candidates: list[Example],
    *,
    previous: DatasetVersion | None,
    near_dup_threshold: float | None,
    group_threshold: float | None,
    test_fraction: float,
    salt: str,
    report: Reduction,
) -> list[Example]:
    """Stages 7 and 8: duplicates reduced, then the split; in time order."""
    thresholds = [t for t in (near_dup_threshold, group_threshold) if t is not None]
    similar = similarity_pairs(candidates, min(thresholds)) if thresholds else []
    survivors = reduce_duplicates(candidates, near_dup_threshold, similar, report)
    survivors = assign_splits(
        survivors,
        similar if group_threshold is not None else [],
        test_fraction=test_fraction,
        salt=salt,
        group_threshold=group_threshold if group_threshold is not None else 1.0,
        previous_test=previous_test_inputs(previous, test_fraction, salt),
        report=report,
    )
    return sorted(survivors, key=lambda e: (e.ts or dt.datetime.min.replace(tzinfo=dt.UTC), e.example_id))


def _counts(
    n_rows: int, sel: Selection, final: Sequence[Example], pairs: Sequence[PreferencePair]
) -> dict[str, Any]:
    """The manifest's counts: calls read, examples and pairs made, what each stage removed and why."""
    return {
        "counts": {
            "calls": n_rows,
            "examples": len(final),
            "relabelled": sum(1 for e in final if e.label_source == "relabel"),
            "preference_pairs": len(pairs),
        },
        "removed": sel.removed_by,
        "removed_why": {k: REASONS.get(k, k) for k, v in sel.removed_by.items() if v},
        "splits": {s: sum(1 for e in final if e.split == s) for s in ("train", "test", "golden")},
        "preference_splits": {s: sum(1 for p in pairs if p.split == s) for s in ("train", "test", "golden")},
    }


def _where_ids(store: LogStore, predicate: str, window: dict[str, Any]) -> set[str]:
    try:
        return queries.training_call_ids(store, predicate, **window)
    except LogStoreError as exc:
        raise DatasetError(f"invalid --where predicate: {exc}") from exc


def _label(c: SourceCall) -> dict[str, Any] | None:
    if c.relabelled:
        return {"role": "assistant", "content": c.row["relabel"]}
    return c.served


def _redact_message(m: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    out = dict(m)
    if "content" in out:
        out["content"] = map_text(out["content"], redactor)
    if isinstance(out.get("tool_calls"), list):  # arguments are text too (an address, a key passed on)
        out["tool_calls"] = [_redact_tool_call(c, redactor) for c in out["tool_calls"]]
    return out


def _redact_tool_call(call: Any, redactor: Redactor) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    return {**call, "function": {**fn, "arguments": redactor(fn["arguments"])}}


def _choice_message(choice: Any) -> dict[str, Any]:
    """A response choice's message; empty for a choice (or message) of another shape."""
    msg = choice.get("message") if isinstance(choice, dict) else None
    return msg if isinstance(msg, dict) else {}


def _sides(examples: Sequence[Example]) -> dict[str, str]:
    """Call id, and user-visible input, -> the split its example took (preference pairs follow it)."""
    out: dict[str, str] = {}
    for e in examples:
        out[split_key(e.messages)] = e.split
    for e in examples:
        out[e.call_id] = e.split
    return out


def _near_sides(
    pairs: list[PreferencePair], examples: Sequence[Example], sides: dict[str, str], threshold: float
) -> list[PreferencePair]:
    """Pairs whose call left no example (a near variant of a golden input, a near duplicate
    dropped, a filtered call) take the side of the examples their input is near, as
    `assign_splits` would have put it: golden first, then test. Their own hash could put a
    variant of a golden or test input in the DPO train split."""
    loose = [p for p in pairs if p.call_id not in sides and split_key(p.messages) not in sides]
    if not loose:
        return pairs
    by_id = {e.example_id: e.split for e in examples}
    tag = {f"\0pair:{p.pair_id}": p for p in loose}  # never an example id
    items = [(e.example_id, e.messages) for e in examples] + [(k, p.messages) for k, p in tag.items()]
    near: dict[str, set[str]] = {}
    for a, b, _ in similar_pairs(items, threshold):
        for x, y in ((a, b), (b, a)):
            if x in tag and y in by_id:
                near.setdefault(tag[x].pair_id, set()).add(by_id[y])
    rank = ("golden", "test", "train")
    out = []
    for p in pairs:
        found = near.get(p.pair_id)
        out.append(dataclasses.replace(p, split=min(found, key=rank.index)) if found else p)
    return out


def _previous_version(log_dir: str, name: str) -> DatasetVersion | None:
    try:
        return load_dataset(log_dir, name)
    except DatasetError:
        return None


def _preferences(
    calls: Sequence[SourceCall],
    redactor: Redactor,
    test_fraction: float,
    salt: str,
    excluded: set[str],
    sides: dict[str, str],
) -> list[PreferencePair]:
    by_id = {c.call_id: c for c in calls}
    by_response = {c.row.get("response_id"): c for c in calls if c.row.get("response_id")}
    raw: list[tuple[SourceCall, dict[str, Any], dict[str, Any], str]] = []
    for c in calls:
        if c.call_id in excluded:
            continue
        if c.relabelled and c.served is not None and c.served.get("content") != c.row["relabel"]:
            raw.append((c, {"role": "assistant", "content": c.row["relabel"]}, c.served, "relabel"))
        later_id = c.row.get("regenerate_of")
        if later_id:
            earlier = by_id.get(later_id) or by_response.get(later_id)
            if (
                earlier is not None
                and earlier.call_id not in excluded
                and earlier.key == c.key
                and earlier.served is not None
                and c.served is not None
                and answered_ok(c.row)
                and not c.row.get("regenerated")
                and not c.row.get("thumbs_down")
                and earlier.served != c.served
            ):
                raw.append((earlier, c.served, earlier.served, "regeneration"))
        choice = c.row.get("choice")
        two = (c.response or {}).get("choices")
        if choice in ("a", "b") and isinstance(two, list) and len(two) >= 2:
            options = [assistant_message(_choice_message(ch)) for ch in two[:2]]
            idx = 0 if choice == "a" else 1
            if options[0] != options[1]:
                raw.append((c, options[idx], options[1 - idx], "choice"))
        elif choice and choice not in ("a", "b"):
            other = by_id.get(choice) or by_response.get(choice)
            if (
                other is not None
                and other.call_id != c.call_id
                and other.key == c.key
                and other.served
                and c.served
            ) and other.served != c.served:
                raw.append((c, other.served, c.served, "choice"))
    pairs = []
    seen: set[tuple[str, str]] = set()
    for c, chosen, rejected, source in raw:
        if (c.call_id, source) in seen:
            continue
        seen.add((c.call_id, source))
        msgs = [_redact_message(m, redactor) for m in c.messages]
        key = split_key(msgs)
        side = sides.get(c.call_id) or sides.get(key) or assign_split(key, test_fraction, salt)
        pairs.append(
            PreferencePair(
                pair_id=f"{c.call_id}:{source}",
                call_id=c.call_id,
                split=side,
                messages=msgs,
                tools=c.tools,
                chosen=_redact_message(chosen, redactor),
                rejected=_redact_message(rejected, redactor),
                source=source,
            )
        )
    return pairs
