"""The review benchmark's call log: N compact calls over D days, written by the store's own writer path.

Rows are generated in batches with DuckDB (vectorised: 10M rows in minutes, not hours) and
each batch is committed by `gateway.store.table.commit_segment` -- the function the log
writer's thread calls for every WAL segment: the same Parquet files (zstd, one per day
partition and segment), the same Delta commits with the writer's app transaction. Only the
WAL hop is skipped (at ~8k rows/s through the WAL, 10M calls would take ~20 minutes).

The traffic, by row number ``i`` (time-ordered, the last row ``now``):

* 2 % unrouted: no route, 401 ``invalid_api_key`` (the edge refused them);
* route ``support``: canary, the candidate's share stepping 5 -> 10 -> 25 % over the
  window (route versions 1, 2, 3), everything served;
* route ``extract``: shadow, each served baseline call followed by its candidate shadow
  sibling (``parent_call_id``, ``served = false``);
* route ``summarize``: off, baseline only.

About 1 % of calls error (500 ``upstream_error``). Events: a user thumb on ~8 % of served
calls (up 70 %, the candidate a little less), a regeneration on ~2 %, and a reviewer
relabel on ~0.1 %. Call ids encode their time like `gateway.store.ids.new_id`.
"""

from __future__ import annotations

import time
from typing import Any

import duckdb
import pyarrow as pa

from gateway.store import layout
from gateway.store import table as tables
from gateway.store.schema import CALLS_SCHEMA, EVENTS_SCHEMA

_ALPHA = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _b32(expr: str, chars: int) -> str:
    """SQL: ``expr`` (a non-negative integer) as ``chars`` Crockford base32 digits, most significant first."""
    parts = [f"substr('{_ALPHA}', (({expr}) >> {5 * (chars - 1 - k)}) % 32 + 1, 1)" for k in range(chars)]
    return " || ".join(parts)


def _id(prefix: str, ms: str, seq: str) -> str:
    # 10 digits: 48 bits of milliseconds and 2 bits of seq; 16 digits: seq (unique per row)
    return f"'{prefix}_' || {_b32(f'({ms}) * 4 + ({seq}) % 4', 10)} || {_b32(f'({seq}) // 4', 16)}"


_CALLS = """
WITH base AS (
  SELECT i, ($t0 + i * $step)::BIGINT AS ts_us, hash(i * 7919 + $salt) AS h FROM range($lo, $hi) t(i)
), r AS (
  SELECT *,
    CASE WHEN h % 50 = 0 THEN NULL
         WHEN (i // 2) % 3 = 0 THEN 'support' WHEN (i // 2) % 3 = 1 THEN 'extract' ELSE 'summarize' END AS route,
    (i - $lo_all)::DOUBLE / $n AS frac
  FROM base
), v AS (
  SELECT *,
    CASE WHEN route IS NULL THEN NULL
         WHEN route = 'extract' THEN (CASE WHEN i % 2 = 1 THEN 'candidate' ELSE 'baseline' END)
         WHEN route = 'support' AND h % 100 < (CASE WHEN frac < 0.3 THEN 5 WHEN frac < 0.6 THEN 10 ELSE 25 END)
              THEN 'candidate'
         ELSE 'baseline' END AS variant,
    CASE WHEN route = 'support' THEN (CASE WHEN frac < 0.3 THEN 1 WHEN frac < 0.6 THEN 2 ELSE 3 END) ELSE 1 END
      AS route_version
  FROM r
)
SELECT 2::SMALLINT AS schema_version,
  {call_id} AS call_id,
  CASE WHEN route = 'extract' AND i % 2 = 1 THEN {parent_id} END AS parent_call_id,
  make_timestamptz(ts_us) AS ts, 'chat.completions' AS endpoint, route, variant,
  NOT coalesce(route = 'extract' AND i % 2 = 1, false) AS served,
  CASE route WHEN 'support' THEN 'canary' WHEN 'extract' THEN 'shadow' WHEN 'summarize' THEN 'off' END AS mode,
  route_version::BIGINT AS route_version,
  CASE WHEN variant = 'candidate' THEN 'tuned' ELSE 'openai' END AS upstream,
  CASE WHEN variant = 'candidate' THEN 'ft:tiny-date-v3' ELSE 'gpt-4o-mini' END AS upstream_model,
  'openai' AS provider, 'app' AS client_key, 'user-' || (h // 7 % 200000)::VARCHAR AS "user",
  NULL::VARCHAR AS session_id, NULL::VARCHAR[] AS tags, i % 2 = 0 AS stream,
  CASE WHEN route IS NULL THEN NULL ELSE
    '{{"model":"' || route || '","messages":[{{"role":"user","content":"When is order ' || (h % 100000)::VARCHAR
    || ' due?"}}]}}' END AS request,
  CASE WHEN route IS NULL THEN NULL ELSE
    '{{"choices":[{{"message":{{"role":"assistant","content":"{{\\"date\\": \\"2024-0' || (h % 9 + 1)::VARCHAR
    || '-1' || (h % 9)::VARCHAR || '\\"}}"}}}}]}}' END AS response,
  CASE WHEN route IS NULL THEN NULL ELSE 'chatcmpl-' || i::VARCHAR END AS response_id,
  CASE WHEN route IS NULL THEN NULL ELSE
    '{{"date": "2024-0' || (h % 9 + 1)::VARCHAR || '-1' || (h % 9)::VARCHAR || '"}}' END AS output_text,
  CASE WHEN route IS NULL THEN NULL ELSE 'stop' END AS finish_reason,
  (CASE WHEN route IS NULL THEN 401 WHEN h % 100 = 7 THEN 500 ELSE 200 END)::INTEGER AS status,
  CASE WHEN route IS NULL THEN 'invalid_api_key' WHEN h % 100 = 7 THEN 'upstream_error' END AS error_type,
  CASE WHEN route IS NULL THEN 'invalid API key' WHEN h % 100 = 7 THEN 'upstream answered 500' END
    AS error_message,
  CASE WHEN route IS NULL THEN 0.3 ELSE
    (CASE WHEN variant = 'candidate' THEN 120 ELSE 300 END + (h // 101) % 900)::DOUBLE END AS latency_ms,
  NULL::DOUBLE AS ttft_ms, NULL::DOUBLE AS upstream_ms, 0.2 AS overhead_ms,
  40::BIGINT AS input_tokens, 12::BIGINT AS output_tokens,
  CASE WHEN route IS NULL THEN NULL WHEN variant = 'candidate' THEN 0.00001 ELSE 0.00012 END AS cost_usd,
  NULL::VARCHAR AS regenerate_of, NULL::VARCHAR AS metadata,
  strftime(make_timestamptz(ts_us), '%Y-%m-%d') AS date
FROM v
"""

_EVENTS = """
SELECT 2::SMALLINT AS schema_version,
  replace(call_id, 'call_', 'evt_') || k AS event_id, call_id,
  ts + INTERVAL 30 SECOND AS ts, kind,
  CASE kind WHEN 'thumbs' THEN (CASE WHEN g % 100 < (CASE WHEN variant = 'candidate' THEN 64 ELSE 70 END)
                                     THEN 'up' ELSE 'down' END)
            WHEN 'relabel' THEN output_text END AS value,
  NULL::DOUBLE AS value_num, NULL::VARCHAR AS comment,
  CASE WHEN kind = 'relabel' THEN NULL ELSE "user" END AS "user",
  CASE WHEN kind = 'relabel' THEN 'reviewer' ELSE 'api' END AS source,
  NULL::VARCHAR AS data, CASE WHEN kind = 'relabel' THEN NULL ELSE 'app' END AS client_key,
  NULL::VARCHAR AS key_id, CASE WHEN kind = 'relabel' THEN 'bench' END AS reviewer,
  date
FROM (
  SELECT *, hash(call_id) AS g FROM batch WHERE served AND route IS NOT NULL
) c, LATERAL (VALUES ('t', 'thumbs', g % 1000 < 80), ('r', 'regeneration', g % 1000 >= 980),
                     ('l', 'relabel', g % 1000 = 500)) AS x(k, kind, keep)
WHERE keep
"""


def _by_day(con: duckdb.DuckDBPyConnection, rel: str, schema: pa.Schema) -> list[tuple[str, pa.Table]]:
    out = []
    for (day,) in con.execute(f"SELECT DISTINCT date FROM {rel} ORDER BY 1").fetchall():
        t = con.sql(f"SELECT * EXCLUDE (date) FROM {rel} WHERE date = '{day}' ORDER BY ts")
        out.append((day, t.to_arrow_table().cast(schema)))
    return out


def generate(
    log_dir: str, n: int, *, days: float = 7.0, now: float | None = None, batch: int = 500_000
) -> dict[str, Any]:
    """Write ``n`` calls ending at ``now`` over ``days``; returns counts and timings."""
    now = time.time() if now is None else now
    t_start = time.perf_counter()
    layout.ensure_store(log_dir, create_bucket=True)
    step = int(days * 86_400e6 / n)
    t0 = int(now * 1e6) - step * n
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = true")
    ms = "ts_us // 1000"
    call_id = _id("call", ms, "i")
    parent_id = _id("call", "(ts_us - $step) // 1000", "i - 1")
    sql = _CALLS.format(call_id=call_id, parent_id=parent_id)
    calls = events = 0
    for seq, lo in enumerate(range(0, n, batch), start=1):
        hi = min(n, lo + batch)
        params = {"t0": t0, "step": step, "lo": lo, "hi": hi, "lo_all": 0, "n": n, "salt": 17}
        con.execute("CREATE OR REPLACE TEMP TABLE batch AS " + sql, params)
        con.execute("CREATE OR REPLACE TEMP TABLE ev AS " + _EVENTS)
        groups = {"calls": _by_day(con, "batch", CALLS_SCHEMA), "events": _by_day(con, "ev", EVENTS_SCHEMA)}
        calls += sum(t.num_rows for _, t in groups["calls"])
        events += sum(t.num_rows for _, t in groups["events"])
        tables.commit_segment(log_dir, f"bench-{int(now)}.{seq}", groups)
    con.close()
    return {"calls": calls, "events": events, "generate_s": round(time.perf_counter() - t_start, 1)}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log_dir")
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--days", type=float, default=7.0)
    a = ap.parse_args()
    print(generate(a.log_dir, a.calls, days=a.days))
