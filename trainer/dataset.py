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

Records, reading and writing versions live in `trainer._examples` (re-exported here). A
version directory is written in full under a temporary name and renamed into place, so a
reader never sees half a version, and two builds never take the same number.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from gateway.durations import parse_moment
from gateway.protocol import transform as request_transform
from gateway.protocol.messages import map_text
from gateway.store import LogStore, LogStoreError, LogWriter, queries
from gateway.store.ids import new_id
from gateway.store.layout import is_remote, local_path
from trainer._coverage import region_warnings
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


@dataclass(frozen=True)
class Filters:
    """Optional quality filters; each one is checked for removing a region of the input space."""

    thumbs_up_only: bool = False
    """Keep only calls with a thumbs up and no thumbs down (a user's or a reviewer's)."""
    min_rating: float | None = None
    """Keep only calls rated at least this (unrated calls are dropped)."""
    no_flags: bool = False
    """Drop calls that were flagged."""
    no_regenerated: bool = False
    """Drop calls the user asked again for."""
    where: str | None = None
    """An SQL predicate over ``calls_with_outcomes`` that kept calls must satisfy."""

    def active(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}


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


@dataclass
class _Call:
    call_id: str
    ts: dt.datetime
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    served: dict[str, Any] | None  # the served assistant message
    response: dict[str, Any] | None
    row: dict[str, Any]
    key: str = ""

    @property
    def relabelled(self) -> bool:
        return self.row.get("relabel") is not None


def _parse_call(row: dict[str, Any]) -> _Call | None:
    try:
        request = json.loads(row["request"]) if row["request"] else None
        response = json.loads(row["response"]) if row["response"] else None
    except json.JSONDecodeError:
        return None
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("messages"), list)
        or not request["messages"]
    ):
        return None
    served = None
    if isinstance(response, dict) and response.get("choices"):
        msg = (response["choices"][0] or {}).get("message")
        if isinstance(msg, dict):
            served = _assistant(msg)
    if served is None and row.get("output_text") is not None:
        served = {"role": "assistant", "content": row["output_text"]}
    tools = request.get("tools") or None
    call = _Call(row["call_id"], row["ts"], request["messages"], tools, served, response, row)
    call.key = input_key(call.messages, call.tools)
    return call


def _assistant(msg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
    if msg.get("tool_calls"):
        out["tool_calls"] = msg["tool_calls"]
    return out


def _ok(row: dict[str, Any]) -> bool:
    status = row.get("status")
    return (status is None or 200 <= status < 300) and not row.get("error_type")


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
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    try:
        redactor = resolve_redactor(redact)
        tf = request_transform.parse(transform)  # a TransformError is a ValueError
    except (ValueError, ImportError) as exc:
        raise DatasetError(str(exc)) from exc
    since_t, until_t = parse_time(since), parse_time(until)
    window: dict[str, Any] = {"route": route, "since": since_t, "until": until_t}
    query, params = queries.training_query(route, since_t, until_t)  # recorded in the manifest
    try:
        with LogStore.open(log_dir) as store:
            rows = cast("list[dict[str, Any]]", queries.training_calls(store, **window))
            where_ids = _where_ids(store, filters.where, window) if filters.where else None
    except LogStoreError as exc:
        raise DatasetError(str(exc)) from exc
    if not rows:
        raise DatasetError(
            f"no served baseline calls{f' on route {route!r}' if route else ''} in that period"
        )

    counts: dict[str, int] = {"calls": len(rows)}
    warnings: list[str] = []
    removed_by: dict[str, int] = {}
    bar.update(1, stage="parse")
    calls = [c for c in (_parse_call(r) for r in rows) if c is not None]
    removed_by["no_body"] = len(rows) - len(calls)
    if tf is not None:  # train on exactly what the candidate is served
        for c in calls:
            c.messages = tf.apply_messages(c.messages)
            c.key = input_key(c.messages, c.tools)
    by_id = {c.call_id: c for c in calls}

    kept = [c for c in calls if not c.row.get("excluded")]
    removed_by["excluded"] = len(calls) - len(kept)
    golden_ids = set(golden_call_ids)
    if golden_tag:
        golden_ids |= {c.call_id for c in kept if golden_tag in (c.row.get("tags") or [])}
    golden = [c for c in kept if c.call_id in golden_ids]
    missing_golden = golden_ids - {c.call_id for c in golden}
    if missing_golden:
        warnings.append(
            f"{len(missing_golden)} golden call(s) not found among the source calls (or excluded)"
        )
    pool = [c for c in kept if c.call_id not in golden_ids]

    steps: list[tuple[str, Any]] = [
        ("errors", lambda c: c.relabelled or (_ok(c.row) and c.served is not None))
    ]
    if filters.thumbs_up_only:
        steps.append(
            (
                "thumbs_up_only",
                lambda c: (
                    c.relabelled
                    or (
                        (c.row["thumbs_up"] or 0) + (c.row["reviewer_thumbs_up"] or 0) > 0
                        and not c.row["thumbs_down"]
                        and not c.row["reviewer_thumbs_down"]
                    )
                ),
            )
        )
    if filters.min_rating is not None:
        floor = filters.min_rating
        steps.append(
            (
                "min_rating",
                lambda c: c.relabelled or (c.row["rating"] is not None and c.row["rating"] >= floor),
            )
        )
    if filters.no_flags:
        steps.append(("no_flags", lambda c: c.relabelled or not c.row["flags"]))
    if filters.no_regenerated:
        steps.append(("no_regenerated", lambda c: c.relabelled or not c.row["regenerated"]))
    if where_ids is not None:
        steps.append(("where", lambda c: c.call_id in where_ids))
    for step, keep in steps:
        after = [c for c in pool if keep(c)]
        removed = {c.call_id for c in pool} - {c.call_id for c in after}
        removed_by[step] = len(removed)
        for rw in region_warnings(step, [(c.call_id, c.messages, c.tools) for c in pool], removed):
            warnings.append(rw.message())
        pool = after

    examples: dict[str, Example] = {}
    for split_name, group in (("golden", golden), ("pool", pool)):
        for c in group:
            label = _label(c)
            if label is None:
                continue
            msgs = [_redact_message(m, redactor) for m in c.messages]
            key = input_key(msgs, c.tools)
            examples[c.call_id] = Example(
                example_id=c.call_id,
                call_id=c.call_id,
                split="golden" if split_name == "golden" else "pool",  # the pool is split below
                messages=msgs,
                tools=c.tools,
                completion=_redact_message(label, redactor),
                label_source="relabel" if c.relabelled else "served",
                input_hash=input_hash(key),
                ts=c.ts,
            )
    report = Reduction()
    candidates = list(examples.values())
    thresholds = [t for t in (near_dup_threshold, group_threshold) if t is not None]
    bar.update(1, stage="near-duplicates")
    similar = similarity_pairs(candidates, min(thresholds)) if thresholds else []
    survivors = reduce_duplicates(candidates, near_dup_threshold, similar, report)
    previous = _previous_version(log_dir, name)
    survivors = assign_splits(
        survivors,
        similar if group_threshold is not None else [],
        test_fraction=test_fraction,
        salt=salt,
        group_threshold=group_threshold if group_threshold is not None else 1.0,
        previous_test=previous_test_inputs(previous, test_fraction, salt),
        report=report,
    )
    removed_by.update(report.removed)
    final = sorted(survivors, key=lambda e: (e.ts or dt.datetime.min.replace(tzinfo=dt.UTC), e.example_id))
    pairs = _preferences(
        calls,
        by_id,
        redactor,
        test_fraction,
        salt,
        excluded={c.call_id for c in calls} - {c.call_id for c in kept},
        sides=_sides(final),
    )
    golden_inputs = {e.input_hash for e in final if e.split == "golden"}
    pairs = [p for p in pairs if _hash_of(p) not in golden_inputs]

    splits = {s: sum(1 for e in final if e.split == s) for s in ("train", "test", "golden")}
    counts.update(
        examples=len(final),
        relabelled=sum(1 for e in final if e.label_source == "relabel"),
        preference_pairs=len(pairs),
    )
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
            "golden": sorted(golden_ids),
            "golden_tag": golden_tag,
            "last_call_ts": max(c.ts for c in calls).isoformat() if calls else None,
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
        "counts": counts,
        "removed": removed_by,
        "removed_why": {k: REASONS.get(k, k) for k, v in removed_by.items() if v},
        "splits": splits,
        "preference_splits": {s: sum(1 for p in pairs if p.split == s) for s in ("train", "test", "golden")},
        "warnings": warnings,
    }
    dv = _write_version(log_dir, name, final, pairs, manifest)
    if warn:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    bar.set(3, stage="written")
    bar.close()
    return dv


def _where_ids(store: LogStore, predicate: str, window: dict[str, Any]) -> set[str]:
    try:
        return queries.training_call_ids(store, predicate, **window)
    except LogStoreError as exc:
        raise DatasetError(f"invalid --where predicate: {exc}") from exc


def _label(c: _Call) -> dict[str, Any] | None:
    if c.relabelled:
        return {"role": "assistant", "content": c.row["relabel"]}
    return c.served


def _redact_message(m: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    out = dict(m)
    if "content" in out:
        out["content"] = map_text(out["content"], redactor)
    return out


def _sides(examples: Sequence[Example]) -> dict[str, str]:
    """Call id, and user-visible input, -> the split its example took (preference pairs follow it)."""
    out: dict[str, str] = {}
    for e in examples:
        out[split_key(e.messages)] = e.split
    for e in examples:
        out[e.call_id] = e.split
    return out


def _previous_version(log_dir: str, name: str) -> DatasetVersion | None:
    try:
        return load_dataset(log_dir, name)
    except DatasetError:
        return None


def _preferences(
    calls: Sequence[_Call],
    by_id: dict[str, _Call],
    redactor: Redactor,
    test_fraction: float,
    salt: str,
    excluded: set[str],
    sides: dict[str, str],
) -> list[PreferencePair]:
    by_response = {c.row.get("response_id"): c for c in calls if c.row.get("response_id")}
    raw: list[tuple[_Call, dict[str, Any], dict[str, Any], str]] = []
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
                and _ok(c.row)
                and not c.row.get("regenerated")
                and not c.row.get("thumbs_down")
                and earlier.served != c.served
            ):
                raw.append((earlier, c.served, earlier.served, "regeneration"))
        choice = c.row.get("choice")
        if choice in ("a", "b") and c.response and len(c.response.get("choices") or []) >= 2:
            options = [_assistant((ch or {}).get("message") or {}) for ch in c.response["choices"][:2]]
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
