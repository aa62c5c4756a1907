"""The call log's schema: one row per call, one row per outcome event.

Contract (read by `trainer` and `evals` through `gateway.store.LogStore`):

* ``calls``: one row per upstream call the gateway made, served to the user or not
  (shadow and fallback attempts are rows of their own, linked by ``parent_call_id``).
  ``request`` and ``response`` hold the full JSON bodies as text (the response is
  assembled from the stream when the call was streamed), so any field can be read with
  DuckDB's JSON functions; the most used ones are also columns of their own.
* ``events``: append-only outcome events keyed by ``call_id`` (thumbs, ratings,
  choices, flags, regenerations, relabels, custom metrics).

Changes are additive only: a new column gets a new ``SCHEMA_VERSION`` and old files
read it as NULL (DuckDB ``union_by_name``). The record the request path appends is
`gateway.protocol.record.CallRecord`: its ``to_wal`` makes every value fit its column. A store written by a newer, incompatible
major version refuses to open (`LogStoreError`).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2
"""Version of the on-disk layout; bumped on every additive change (2: ``calls.metadata`` and who
posted an event)."""

CALLS_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("call_id", pa.string(), nullable=False),
        pa.field("parent_call_id", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("endpoint", pa.string()),  # chat.completions | embeddings
        pa.field("route", pa.string()),
        pa.field("variant", pa.string()),  # baseline | candidate
        pa.field("served", pa.bool_()),  # whether the user saw this answer
        pa.field("mode", pa.string()),  # off | shadow | canary | primary
        pa.field("route_version", pa.int64()),
        pa.field("upstream", pa.string()),  # upstream name in the config
        pa.field("upstream_model", pa.string()),  # model id sent upstream
        pa.field("provider", pa.string()),
        pa.field("client_key", pa.string()),  # name of the client API key (never the key)
        pa.field("user", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("stream", pa.bool_()),
        pa.field("request", pa.string()),  # full request JSON (None if the route stores no bodies)
        pa.field("response", pa.string()),  # full response JSON, assembled from the stream if streamed
        pa.field("response_id", pa.string()),  # the upstream's chatcmpl-... id
        pa.field("output_text", pa.string()),  # first choice's assistant text
        pa.field("finish_reason", pa.string()),
        pa.field("status", pa.int32()),
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("latency_ms", pa.float64()),
        pa.field("ttft_ms", pa.float64()),
        pa.field("upstream_ms", pa.float64()),
        pa.field("overhead_ms", pa.float64()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("regenerate_of", pa.string()),  # explicit x-shadowtune-regenerate-of header
        pa.field("metadata", pa.string()),  # the request's metadata, JSON text of string values (v2)
    ]
)

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("call_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(
            "kind", pa.string(), nullable=False
        ),  # thumbs|rating|choice|flag|regeneration|relabel|<custom>
        pa.field("value", pa.string()),  # textual value: "up", "down", "a", "b", the relabelled answer, ...
        pa.field("value_num", pa.float64()),  # numeric value: 1/0 for thumbs, the rating, a custom metric
        pa.field("comment", pa.string()),
        pa.field("user", pa.string()),
        pa.field("source", pa.string()),  # api | admin | cli | reviewer (older logs: review) | detector
        pa.field("data", pa.string()),  # JSON for anything else
        pa.field("client_key", pa.string()),  # name of the client key that posted it (as calls.client_key)
        pa.field("key_id", pa.string()),  # short SHA-256 id of that key (a reissued name is a new id)
        pa.field("reviewer", pa.string()),  # who posted it on the review page (source = reviewer)
    ]
)

TABLES: dict[str, pa.Schema] = {"calls": CALLS_SCHEMA, "events": EVENTS_SCHEMA}
"""Table name -> Arrow schema. Each table lives under ``<log_dir>/<table>/date=YYYY-MM-DD/``."""
