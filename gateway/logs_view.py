"""What ``logs list`` and ``logs show`` print about calls: the list's columns, a call's feedback.

`list_sql` is what ``logs list`` selects: `LIST_COLUMNS` of a page of ``calls`` joined with
their ``outcomes`` (the page is cut first, so the join is on the page only; the JSON rows are
these); `call_table` prints them under a header with the user and a feedback summary
(`feedback_summary`: thumbs, rating, choice, flags, regenerations, reviewers' thumbs,
relabel, exclusion). `call_feedback` is every event posted against one call, oldest first,
with who posted it (`poster`), which ``logs show`` prints under the conversation.
"""

from __future__ import annotations

from typing import Any

from gateway.clikit.output import table

LIST_COLUMNS = (
    'call_id, ts, route, variant, served, mode, status, latency_ms, input_tokens, output_tokens, "user", '
    "output_text, error_type, thumbs_up, thumbs_down, rating, choice, flags, regenerated, "
    "relabel IS NOT NULL AS relabelled, excluded, reviewer_thumbs_up, reviewer_thumbs_down"
)


def list_sql(page: str) -> str:
    """`LIST_COLUMNS` of the calls that the query ``page`` selects (in its order), with their outcomes."""
    return (
        f"WITH page AS ({page}) SELECT {LIST_COLUMNS} FROM page LEFT JOIN outcomes USING (call_id) "
        "ORDER BY ts DESC, call_id DESC"
    )


_EVENT_COLUMNS = (
    'event_id, call_id, ts, kind, value, value_num, comment, "user", source, client_key, key_id, reviewer'
)


def feedback_summary(row: dict[str, Any]) -> str:
    """``up``, ``down x2``, ``rating 4``, ``choice b``, ``flag``, ``regenerated``, ... or ``""``."""
    parts: list[str] = []

    def count(n: Any, label: str) -> None:
        if n:
            parts.append(label if n == 1 else f"{label} x{n}")

    count(row.get("thumbs_up"), "up")
    count(row.get("thumbs_down"), "down")
    if row.get("rating") is not None:
        parts.append(f"rating {row['rating']:g}")
    if row.get("choice"):
        parts.append(f"choice {row['choice']}")
    count(row.get("flags"), "flag")
    if row.get("regenerated"):
        parts.append("regenerated")
    count(row.get("reviewer_thumbs_up"), "review up")
    count(row.get("reviewer_thumbs_down"), "review down")
    if row.get("relabelled"):
        parts.append("relabelled")
    if row.get("excluded"):
        parts.append("excluded")
    return ", ".join(parts)


def _latency(r: dict[str, Any]) -> str:
    return f"{r['latency_ms']:.0f}ms" if r.get("latency_ms") is not None else "-"


def _output(r: dict[str, Any]) -> str:
    return (r.get("output_text") or r.get("error_type") or "").replace("\n", " ")[:60]


def call_table(rows: list[dict[str, Any]]) -> str:
    """``logs list``'s text: one call a line under a header."""
    return table(
        rows,
        [
            ("CALL", lambda r: r["call_id"]),
            ("TIME", lambda r: r["ts"]),
            (
                "ROUTE/VARIANT",
                lambda r: f"{r['route']}/{r['variant']}" + ("" if r["served"] else " (not served)"),
            ),
            ("STATUS", lambda r: r["status"]),
            ("LATENCY", _latency),
            ("USER", lambda r: r.get("user")),
            ("FEEDBACK", lambda r: feedback_summary(r) or None),
            ("OUTPUT", _output),
        ],
    )


def call_feedback(store: Any, call_id: str) -> list[dict[str, Any]]:
    """Every event posted against ``call_id`` (or its response id), oldest first."""
    rows: list[dict[str, Any]] = store.sql(
        f"SELECT {_EVENT_COLUMNS} FROM events_resolved WHERE call_id = ? ORDER BY ts, event_id", [call_id]
    )
    return [{**r, "poster": poster(r)} for r in rows]


def poster(event: dict[str, Any]) -> str:
    """Who posted an event: the reviewer, the user, the client key, else its source."""
    if event.get("reviewer"):
        return f"reviewer {event['reviewer']}"
    who = []
    if event.get("user"):
        who.append(f"user {event['user']}")
    if event.get("client_key"):
        who.append(f"key {event['client_key']}")
    return ", ".join(who) or (event.get("source") or "unknown")


def describe_event(event: dict[str, Any]) -> str:
    """One line: when, what, who, and the comment."""
    value = event.get("value")
    if value is None and event.get("value_num") is not None:
        value = f"{event['value_num']:g}"
    text = str(value or "").replace("\n", " ")
    if len(text) > 60:
        text = text[:59] + "…"
    line = f"  {event['ts']:%Y-%m-%d %H:%M:%S}  {event['kind']}" + (f" {text}" if text else "")
    line += f"  by {event['poster']}"
    if event.get("source") and event["source"] not in event["poster"]:
        line += f" ({event['source']})"
    if event.get("comment"):
        line += f"  \u201c{event['comment']}\u201d"
    return line
