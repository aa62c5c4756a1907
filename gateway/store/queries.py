"""Typed questions to the call log: what the gateway, trainer and evals ask of `LogStore`, once each.

Every function takes an open `LogStore` and returns typed rows (`TypedDict`: the dicts DuckDB
gives, not copied). The filters that recur are written once, here:

* `served_ok` — a call its caller got that did not fail: ``served AND coalesce(status, 200) < 400``
  (the calls drift samples, triggers count and shadow pairs start from);
* `in_window` — ``ts >= $since AND ts < $until``, open ends filled by `window_params`;
* `training_filters` — served baseline chat calls, what a dataset is built from.

Functions:

========================  ===================================================================
`served_calls`            served, successful calls of a route in a window (a stable sample)
`count_served`            how many such calls came after a time
`shadow_pairs`            served baseline calls joined with their successful shadow candidate
`call_exists`             is there a call with this id
`call_routes`             route and variant of calls, by call id or response id
`regeneration_inputs`     keyed served calls in a window, in batches, with what the regeneration detector reads
`explicit_regenerations`  calls that name the call they regenerate, with the call named
`regenerated_call_ids`    calls already marked as regenerated
`orphan_events`           feedback events older than a cutoff that name no logged call
`training_calls`          the calls a dataset build starts from (with their outcomes)
`training_call_ids`       of those, the ones an SQL predicate keeps
`training_query`          the SQL of `training_calls`, for a dataset's manifest
========================  ===================================================================

The outcome rates per arm (``eval outcomes``, the controller, the review page) are
`gateway.store.outcomes`' own query.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypedDict, cast

if TYPE_CHECKING:
    from gateway.store.reader import LogStore, Params

__all__ = [
    "CallRoute",
    "OrphanEvent",
    "RegenerationInput",
    "ServedCall",
    "ShadowPairRow",
    "TrainingCall",
    "call_exists",
    "call_routes",
    "count_served",
    "explicit_regenerations",
    "in_window",
    "orphan_events",
    "regenerated_call_ids",
    "regeneration_inputs",
    "served_calls",
    "served_ok",
    "shadow_pairs",
    "training_call_ids",
    "training_calls",
    "training_filters",
    "training_query",
    "window_params",
]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


# -- the filters ------------------------------------------------------------------------------
def _col(alias: str, column: str) -> str:
    return f"{alias}.{column}" if alias else column


def served_ok(alias: str = "") -> str:
    """SQL: the call (of table alias ``alias``) was served to its caller and did not fail."""
    return f"{_col(alias, 'served')} AND coalesce({_col(alias, 'status')}, 200) < 400"


def in_window(alias: str = "") -> str:
    """SQL: the call's ``ts`` is in ``[$since, $until)`` (parameters from `window_params`)."""
    return f"{_col(alias, 'ts')} >= $since AND {_col(alias, 'ts')} < $until"


def window_params(since: dt.datetime | None, until: dt.datetime | None) -> dict[str, dt.datetime]:
    """``$since`` and ``$until`` for `in_window`; an open end is the epoch or the far future."""
    return {"since": since or EPOCH, "until": until or FAR_FUTURE}


def training_filters() -> list[str]:
    """SQL conditions of the calls a dataset is built from: served baseline chat calls.

    A row without ``served`` (written before the column existed) counts as served; a row
    without ``endpoint`` as a chat completion.
    """
    return [
        "variant = 'baseline'",
        "coalesce(served, true)",
        "coalesce(endpoint, 'chat.completions') LIKE 'chat%'",
    ]


def _rows(store: LogStore, query: str, params: Params = None) -> list[dict[str, Any]]:
    return store.sql(query, params)


# -- served calls -----------------------------------------------------------------------------
class ServedCall(TypedDict):
    call_id: str
    request: str | None
    output_text: str | None
    response: str | None


def served_calls(
    store: LogStore,
    route: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 5000,
) -> list[ServedCall]:
    """Served, successful calls of ``route`` in ``[since, until)``: a deterministic pseudo-random
    sample of ``limit`` (ordered by a hash of the call id, so a rerun reads the same calls)."""
    query = (
        "SELECT call_id, request, output_text, response FROM calls "
        f"WHERE route = $route AND {served_ok()} AND {in_window()} ORDER BY hash(call_id) LIMIT $limit"
    )
    return cast(
        "list[ServedCall]",
        _rows(store, query, {"route": route, "limit": limit, **window_params(since, until)}),
    )


def count_served(store: LogStore, route: str, *, after: dt.datetime | None = None) -> int:
    """How many served, successful calls ``route`` had after ``after`` (all of them when None)."""
    query = f"SELECT count(*) AS n FROM calls WHERE route = $route AND {served_ok()} AND ts > $after"
    rows = _rows(store, query, {"route": route, "after": after or EPOCH})
    return int(rows[0]["n"])


# -- shadow pairs -----------------------------------------------------------------------------
class ShadowPairRow(TypedDict):
    call_id: str
    candidate_call_id: str
    request: str | None
    baseline_text: str | None
    baseline_response: str | None
    candidate_text: str | None
    candidate_response: str | None
    baseline_model: str | None
    candidate_model: str | None
    baseline_upstream: str | None
    candidate_upstream: str | None


_SHADOW_PAIRS_SQL = f"""
SELECT b.call_id, c.call_id AS candidate_call_id, b.request,
       b.output_text AS baseline_text, b.response AS baseline_response,
       c.output_text AS candidate_text, c.response AS candidate_response,
       coalesce(b.upstream_model, json_extract_string(b.request, '$.model')) AS baseline_model,
       coalesce(c.upstream_model, json_extract_string(c.request, '$.model')) AS candidate_model,
       b.upstream AS baseline_upstream, c.upstream AS candidate_upstream
FROM calls b JOIN calls c ON c.parent_call_id = b.call_id
WHERE b.route = $route AND b.variant = 'baseline' AND {served_ok("b")}
  AND c.variant = 'candidate' AND NOT coalesce(c.served, false) AND coalesce(c.status, 200) < 400
  AND {in_window("b")}
ORDER BY b.ts, b.call_id
LIMIT $limit
"""


def shadow_pairs(
    store: LogStore,
    route: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 500,
) -> list[ShadowPairRow]:
    """Served, successful baseline calls of ``route`` in ``[since, until)`` joined with their
    successful shadow candidate call (not served), oldest first."""
    params = {"route": route, "limit": limit, **window_params(since, until)}
    return cast("list[ShadowPairRow]", _rows(store, _SHADOW_PAIRS_SQL, params))


# -- single calls -----------------------------------------------------------------------------
class CallRoute(TypedDict):
    call_id: str
    response_id: str | None
    route: str | None
    variant: str | None


def call_exists(store: LogStore, call_id: str) -> bool:
    """Whether the log has a call with this ``call_id``."""
    return bool(_rows(store, "SELECT 1 AS x FROM calls WHERE call_id = $id LIMIT 1", {"id": call_id}))


def call_routes(store: LogStore, ids: list[str]) -> list[CallRoute]:
    """Route and variant of the calls whose call id or response id is in ``ids``."""
    query = (
        "SELECT call_id, response_id, route, variant FROM calls "
        "WHERE call_id IN (SELECT unnest($ids)) OR response_id IN (SELECT unnest($ids))"
    )
    return cast("list[CallRoute]", _rows(store, query, {"ids": ids}))


# -- what the signals read ----------------------------------------------------------------------
class RegenerationInput(TypedDict):
    call_id: str
    ts_us: int
    route: str | None
    user: str | None
    session_id: str | None
    client_key: str | None
    request: str | None
    status: int | None
    error_type: str | None


class ExplicitRegeneration(TypedDict):
    call_id: str  # the later call, which names the one it regenerates
    ts_us: int
    target: str  # the call id it names (a response id resolved to its call)
    target_ts_us: int | None  # when that call was made, if it is in the window


_SERVED_IN = "served AND ts >= make_timestamptz($lo) AND ($hi IS NULL OR ts < make_timestamptz($hi))"
_KEYED = "(coalesce(\"user\", '') <> '' OR coalesce(session_id, '') <> '' OR coalesce(client_key, '') <> '')"


def regeneration_inputs(
    store: LogStore, lo_us: int, hi_us: int | None, *, batch_rows: int = 20_000
) -> Iterator[list[RegenerationInput]]:
    """Served calls with a sticky key (``user``, ``session_id`` or ``client_key``) and
    ``lo_us <= ts < hi_us`` (epoch microseconds; no upper end when None), in time order, with the
    columns the regeneration detector compares, ``batch_rows`` at a time: the detector keeps a
    digest of each, never the window's request bodies at once.

    DuckDB materialises a query's whole result (and sorts it in memory) before the first row is
    fetched, so the window is read in time slices of about ``batch_rows`` calls each, planned from
    a count per second over narrow columns: what is held at once is one slice's bodies (one
    second's when a single second holds more), not the window's."""
    from gateway.store import windows  # pyarrow: request workers import this module without it

    seconds = _rows(
        store,
        f"""SELECT epoch_us(ts) // 1000000 AS s, count(*) AS n
            FROM {windows.source(store, "calls", lo_us, hi_us)} WHERE {_SERVED_IN} AND {_KEYED}
            GROUP BY s ORDER BY s""",
        {"lo": lo_us, "hi": hi_us},
    )
    for a, b in _slices([(int(r["s"]), int(r["n"])) for r in seconds], batch_rows, lo_us, hi_us):
        query = f"""
            SELECT call_id, epoch_us(ts) AS ts_us, route, "user", session_id, client_key,
                   request, status, error_type
            FROM {windows.source(store, "calls", a, b)}
            WHERE {_SERVED_IN} AND {_KEYED}
            ORDER BY ts, call_id
            """
        for batch in store.batches(query, {"lo": a, "hi": b}, rows=batch_rows):
            yield cast("list[RegenerationInput]", batch)


def _slices(
    counts: list[tuple[int, int]], rows: int, lo_us: int, hi_us: int | None
) -> Iterator[tuple[int, int | None]]:
    """``[a, b)`` bounds (epoch µs) covering ``[lo_us, hi_us)`` in order, each holding about ``rows``
    calls by ``counts`` (``(second, calls)`` in ascending order), cut at second boundaries."""
    start, held = lo_us, 0
    for second, n in counts:
        if held and held + n > rows:
            cut = second * 1_000_000
            yield start, cut
            start, held = cut, 0
        held += n
    if held:
        yield start, hi_us


def explicit_regenerations(
    store: LogStore, lo_us: int, hi_us: int | None, since_us: int
) -> list[ExplicitRegeneration]:
    """Served calls from ``since_us`` on that name an earlier call in ``regenerate_of`` (its call
    id or response id), with the call named: calls of ``[lo_us, hi_us)`` resolve response ids and
    give the earlier call's time.

    Two reads: the naming calls first (one narrow column, the recent files only), and, only when
    there are any, the window's calls with one of the named ids. The detector asks every 30 s
    over a window of ~20 minutes, and few calls name another: reading every id of the window to
    join them cost ~0.3 µs of CPU per call in it, each time (~12 µs per served call in all).
    """
    from gateway.store import windows  # pyarrow: request workers import this module without it

    start = max(lo_us, since_us)
    later = _rows(
        store,
        f"SELECT call_id, epoch_us(ts) AS ts_us, regenerate_of "
        f"FROM {windows.source(store, 'calls', start, hi_us)} "
        f"WHERE regenerate_of IS NOT NULL AND {_SERVED_IN} ORDER BY ts_us, call_id",
        {"lo": start, "hi": hi_us},
    )
    if not later:
        return []
    names = {r["regenerate_of"] for r in later}
    named = _rows(
        store,
        f"""SELECT call_id, response_id, epoch_us(ts) AS ts_us
            FROM {windows.source(store, "calls", lo_us, hi_us)}
            WHERE {_SERVED_IN}
              AND (call_id IN (SELECT unnest($names)) OR response_id IN (SELECT unnest($names)))""",
        {"lo": lo_us, "hi": hi_us, "names": sorted(names)},
    )
    by_response: dict[str, tuple[int, str]] = {}  # response id -> its latest call
    first: dict[str, int] = {}  # call id -> when it was first made
    for r in named:
        if r["response_id"] in names and (r["ts_us"], r["call_id"]) > by_response.get(
            r["response_id"], (-1, "")
        ):
            by_response[r["response_id"]] = (r["ts_us"], r["call_id"])
        first[r["call_id"]] = min(r["ts_us"], first.get(r["call_id"], r["ts_us"]))
    out: list[ExplicitRegeneration] = []
    for r in later:
        found = by_response.get(r["regenerate_of"])
        target = found[1] if found is not None else r["regenerate_of"]
        out.append(
            {
                "call_id": r["call_id"],
                "ts_us": r["ts_us"],
                "target": target,
                "target_ts_us": first.get(target),
            }
        )
    return out


def regenerated_call_ids(store: LogStore, lo_us: int | None = None) -> set[str]:
    """Calls that already have a ``regeneration`` event (marked from ``lo_us`` on, when given: a mark
    is never older than the call it marks)."""
    from gateway.store import windows  # pyarrow: request workers import this module without it

    if lo_us is None:
        rows = _rows(store, "SELECT DISTINCT call_id FROM events WHERE kind = 'regeneration'")
    else:
        rows = _rows(
            store,
            f"SELECT DISTINCT call_id FROM {windows.source(store, 'events', lo_us, None)} "
            "WHERE kind = 'regeneration' AND ts >= make_timestamptz($lo)",
            {"lo": lo_us},
        )
    return {r["call_id"] for r in rows}


class OrphanEvent(TypedDict):
    event_id: str
    call_id: str
    ts: dt.datetime
    kind: str
    value: str | None
    source: str | None
    user: str | None
    ts_us: int


def orphan_events(store: LogStore, cutoff_us: int) -> list[OrphanEvent]:
    """Events before ``cutoff_us`` (epoch microseconds) whose ``call_id`` is neither a call id nor
    a response id in the log, oldest first; the gateway's own (``source = 'detector'``) left out."""
    query = """
        SELECT e.event_id, e.call_id, e.ts, e.kind, e.value, e.source, e.user,
               epoch_us(e.ts) AS ts_us
        FROM events e
        WHERE epoch_us(e.ts) < $cutoff
          AND coalesce(e.source, '') <> 'detector'
          AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.call_id = e.call_id)
          AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.response_id = e.call_id)
        ORDER BY e.ts, e.event_id
        """
    return cast("list[OrphanEvent]", _rows(store, query, {"cutoff": cutoff_us}))


# -- what a dataset is built from -----------------------------------------------------------------
TRAINING_COLUMNS = (
    "call_id, ts, route, status, error_type, tags, request, response, output_text, regenerate_of, "
    "response_id, thumbs_up, thumbs_down, rating, choice, flags, regenerated, relabel, excluded, "
    "reviewer_thumbs_up, reviewer_thumbs_down"
)


class TrainingCall(TypedDict):
    call_id: str
    ts: dt.datetime
    route: str | None
    status: int | None
    error_type: str | None
    tags: list[str] | None
    request: str | None
    response: str | None
    output_text: str | None
    regenerate_of: str | None
    response_id: str | None
    thumbs_up: int | None
    thumbs_down: int | None
    rating: float | None
    choice: str | None
    flags: int | None
    regenerated: bool | None
    relabel: str | None
    excluded: bool | None
    reviewer_thumbs_up: int | None
    reviewer_thumbs_down: int | None


def training_query(
    route: str | None = None, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> tuple[str, list[Any]]:
    """The SQL of `training_calls` and its parameters (a dataset's manifest records both)."""
    where = training_filters()
    params: list[Any] = []
    for column, op, value in (("route", "=", route), ("ts", ">=", since), ("ts", "<", until)):
        if value is not None:
            where.append(f"{column} {op} ?")
            params.append(value)
    query = (
        f"SELECT {TRAINING_COLUMNS} FROM calls_with_outcomes WHERE {' AND '.join(where)} ORDER BY ts, call_id"
    )
    return query, params


def training_calls(
    store: LogStore,
    *,
    route: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[TrainingCall]:
    """Served baseline chat calls (of ``route``, in ``[since, until)``) with their outcomes, by time."""
    query, params = training_query(route, since, until)
    return cast("list[TrainingCall]", _rows(store, query, params))


def training_call_ids(
    store: LogStore,
    predicate: str,
    *,
    route: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> set[str]:
    """The ids of the `training_calls` that satisfy ``predicate`` (SQL over ``calls_with_outcomes``).

    The store is read-only, so a predicate can only read; a bad one raises `LogStoreError`.
    """
    query, params = training_query(route, since, until)
    inner = query.replace(f"SELECT {TRAINING_COLUMNS} FROM", "SELECT call_id FROM", 1).rsplit(" ORDER BY", 1)[
        0
    ]
    return {r["call_id"] for r in _rows(store, f"{inner} AND ({predicate})", params)}
