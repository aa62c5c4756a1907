"""Operator commands: ``logs`` (read the call log in place), ``routes`` (steer a running
gateway through its admin API) and ``feedback`` (post an outcome signal)."""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

import click

from gateway.clikit.options import (
    DURATION,
    MOMENT,
    default_url,
    gateway_options,
    handle_errors,
    json_option,
    log_dir_option,
)
from gateway.clikit.output import echo_json, emit
from gateway.logs_view import call_feedback, call_table, describe_event, list_sql

_log_dir = log_dir_option
_json = json_option
_echo_json = echo_json


def _store(log_dir: str) -> Any:
    from gateway.store import LogStore, LogStoreError

    try:
        return LogStore.open(log_dir)
    except LogStoreError as exc:
        raise click.ClickException(str(exc)) from None


# -- logs ----------------------------------------------------------------------------------
@click.group()
def logs() -> None:
    """Read the call log in place (works while the gateway runs)."""


@logs.command("path")
@_log_dir
@_json
def logs_path(log_dir: str, as_json: bool) -> None:
    """Print the call log's location."""
    path = os.path.abspath(log_dir) if "://" not in log_dir else log_dir
    emit({"log_dir": path}, as_json, path)


@logs.command("status")
@_log_dir
@_json
def logs_status(log_dir: str, as_json: bool) -> None:
    """Rows, files, bytes, oldest/newest call, writer lag and quarantined records."""
    from gateway.store import layout, quarantine

    store = _store(log_dir)
    out: dict[str, Any] = {"log_dir": log_dir}
    for table in ("calls", "events"):
        files = layout.parquet_files(log_dir, table)
        out[table] = {"rows": store.count(table), "files": len(files), "bytes": sum(s for _, _, s in files)}
    row = store.sql("SELECT min(ts) AS oldest, max(ts) AS newest FROM calls")[0]
    out["oldest"], out["newest"] = row["oldest"], row["newest"]
    wal_dir = store.wal_dir
    wal = layout.wal_summary(wal_dir)  # while the gateway runs: segments come and go
    out["wal"] = {"segments": wal.segments, "bytes": wal.bytes}
    oldest = wal.oldest_mtime
    out["writer_lag_s"] = round(dt.datetime.now().timestamp() - oldest, 3) if oldest else 0.0
    q = quarantine.scan(wal_dir)
    out["quarantine"] = {k: q[k] for k in ("records", "by_reason", "latest")} | {
        "dir": quarantine.directory(wal_dir)
    }
    if as_json:
        _echo_json(out)
        return
    for table in ("calls", "events"):
        t = out[table]
        click.echo(f"{table:<7} {t['rows']:>10} rows  {t['files']:>5} files  {t['bytes'] / 1e6:8.2f} MB")
    click.echo(f"oldest  {out['oldest']}\nnewest  {out['newest']}")
    click.echo(
        f"wal     {out['wal']['segments']} segment(s), {out['wal']['bytes']} bytes, lag {out['writer_lag_s']} s"
    )
    if q["records"]:
        latest = q["latest"] or {}
        click.echo(
            f"quarantine  {q['records']} record(s) that could not become rows, in {out['quarantine']['dir']}"
            f" (latest: {latest.get('reason')})"
        )


@logs.command("list")
@_log_dir
@_json
@click.option("--route", help="Only this route.")
@click.option("--variant", type=click.Choice(["baseline", "candidate"]))
@click.option("--status", "status_", help="HTTP status, or 'error' / 'ok'.")
@click.option("--since", type=MOMENT, help="7d, 24h, 1.5h, 30m (ago) or an ISO date.")
@click.option("--until", type=MOMENT, help="Same forms as --since.")
@click.option("--user", help="Only this user.")
@click.option("-q", "--query", help="Text search in request and response.")
@click.option("-n", "--count", default=20, show_default=True, help="How many (0: all).")
def logs_list(
    log_dir: str,
    as_json: bool,
    route: str | None,
    variant: str | None,
    status_: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    user: str | None,
    query: str | None,
    count: int,
) -> None:
    """List calls, newest first."""
    where: list[str] = []
    params: list[Any] = []
    if route:
        where.append("route = ?")
        params.append(route)
    if variant:
        where.append("variant = ?")
        params.append(variant)
    if status_ == "error":
        where.append("(status >= 400 OR error_type IS NOT NULL)")
    elif status_ == "ok":
        where.append("status < 400")
    elif status_:
        where.append("status = ?")
        params.append(int(status_))
    if since:
        where.append("ts >= ?")
        params.append(since)
    if until:
        where.append("ts < ?")
        params.append(until)
    if user:
        where.append('"user" = ?')
        params.append(user)
    if query:
        where.append("(request ILIKE ? OR response ILIKE ?)")
        params += [f"%{query}%"] * 2
    page = (
        "SELECT * FROM calls"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY ts DESC, call_id DESC"
        + (f" LIMIT {int(count)}" if count else "")
    )
    rows = _store(log_dir).sql(list_sql(page), params)
    if as_json:
        _echo_json(rows)
    elif not rows:
        click.echo("no calls match", err=True)
    else:
        click.echo(call_table(rows))


@logs.command("show")
@click.argument("call_id")
@_log_dir
@_json
def logs_show(call_id: str, log_dir: str, as_json: bool) -> None:
    """Show one call (by call id or the response's chatcmpl- id) as a conversation."""
    store = _store(log_dir)
    rows = store.sql(
        "SELECT * FROM calls_with_outcomes WHERE call_id = ? OR response_id = ? ORDER BY served DESC LIMIT 1",
        [call_id, call_id],
    )
    if not rows:
        raise click.ClickException(f"no call {call_id!r} in {log_dir}")
    row = rows[0]
    events = call_feedback(store, row["call_id"])
    if as_json:
        _echo_json({**row, "feedback": events})
        return
    click.echo(
        f"{row['call_id']}  {row['ts']}  route={row['route']} variant={row['variant']} mode={row['mode']}"
    )
    click.echo(
        f"status={row['status']} latency={row['latency_ms']}ms tokens={row['input_tokens']}/{row['output_tokens']}"
    )
    try:
        req = json.loads(row["request"] or "{}")
    except ValueError:
        req = {}
    for m in req.get("messages") or ():
        content = m.get("content")
        if not isinstance(content, str):
            content = json.dumps(content)
        click.echo(click.style(f"\n[{m.get('role')}]", bold=True) + f"\n{content}")
    try:
        resp = json.loads(row["response"] or "{}")
    except ValueError:
        resp = {}
    for ch in resp.get("choices") or ():
        msg = ch.get("message") or {}
        click.echo(
            click.style(f"\n[assistant #{ch.get('index', 0)}]", bold=True) + f"\n{msg.get('content') or ''}"
        )
        for tc in msg.get("tool_calls") or ():
            fn = tc.get("function") or {}
            click.echo(f"  -> tool {fn.get('name')}({fn.get('arguments')})")
    if row.get("error_message"):
        click.echo(click.style(f"\n[error {row['error_type']}]", fg="red") + f"\n{row['error_message']}")
    if events:
        click.echo(click.style(f"\n[feedback: {len(events)}]", bold=True))
        for ev in events:
            click.echo(describe_event(ev))


@logs.command("sql")
@click.argument("query")
@_log_dir
@_json
def logs_sql(query: str, log_dir: str, as_json: bool) -> None:
    """Run a read-only SQL query (views: calls, events, outcomes, calls_with_outcomes)."""
    from gateway.store import LogStoreError

    try:
        rows = _store(log_dir).sql(query)
    except LogStoreError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("(no rows)")
        return
    cols = list(rows[0])
    click.echo("\t".join(cols))
    for r in rows:
        click.echo("\t".join("" if r[c] is None else str(r[c]) for c in cols))


@logs.command("export")
@_log_dir
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="jsonl", show_default=True)
@click.option("--out", "out_path", required=True, help="Output file.")
@click.option("--table", default="calls", type=click.Choice(["calls", "events", "calls_with_outcomes"]))
@click.option("--since", type=MOMENT, help="7d, 24h (ago) or an ISO date.")
@click.option("--route", help="Only this route.")
@_json
def logs_export(
    log_dir: str,
    fmt: str,
    out_path: str,
    table: str,
    since: dt.datetime | None,
    route: str | None,
    as_json: bool,
) -> None:
    """Export calls (or events) to Parquet or JSON Lines."""
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise click.ClickException(f"cannot write {out_path}: the directory {out_dir} does not exist")
    where: list[str] = []
    params: list[Any] = []
    if since:
        where.append("ts >= ?")
        params.append(since)
    if route and table != "events":
        where.append("route = ?")
        params.append(route)
    sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY ts"
    data = _store(log_dir).arrow(sql, params)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(data, out_path, compression="zstd")
        else:
            with open(out_path, "w") as f:
                for row in data.to_pylist():
                    f.write(json.dumps(row, default=str) + "\n")
    except OSError as exc:
        raise click.ClickException(f"cannot write {out_path}: {exc.strerror or exc}") from None
    if as_json:
        _echo_json({"rows": data.num_rows, "out": out_path, "format": fmt})
    else:
        click.echo(f"{data.num_rows} rows -> {out_path}", err=True)


@logs.command("compact")
@_log_dir
@_json
def logs_compact(log_dir: str, as_json: bool) -> None:
    """Merge each day's small Parquet files."""
    from gateway.store import layout

    removed = layout.compact(log_dir, layout.default_wal_dir(log_dir))
    emit({"compacted_files": removed}, as_json, f"compacted {removed} file(s)")


@logs.command("migrate")
@_log_dir
@click.option(
    "--wal-dir", help="The host's WAL directory (default: <log-dir>/wal, ./shadowtune-wal for URIs)."
)
@_json
def logs_migrate(log_dir: str, wal_dir: str | None, as_json: bool) -> None:
    """Register an old store's loose Parquet files into the Delta tables (layout 1 -> 2; idempotent)."""
    from gateway.store import layout
    from gateway.store.table import migrate_layout_1

    try:
        layout.check_marker(log_dir, layout.read_marker(log_dir) or {"schema_version": 1})
        done = migrate_layout_1(log_dir, wal_dir or layout.default_wal_dir(log_dir))
        layout.ensure_store(log_dir, wal_dir=wal_dir)
    except (OSError, layout.LogStoreError) as exc:
        raise click.ClickException(str(exc)) from None
    emit({"registered_files": done}, as_json, f"registered {done} file(s)")


@logs.command("prune")
@_log_dir
@click.option(
    "--before", required=True, type=MOMENT, help="Delete days before this date (YYYY-MM-DD) or age (30d)."
)
@click.option("--yes", is_flag=True, help="Do not ask.")
@_json
def logs_prune(log_dir: str, before: dt.datetime, yes: bool, as_json: bool) -> None:
    """Delete the log's partitions older than a date (retention)."""
    from gateway.store import layout

    cutoff = before
    if not yes:
        click.confirm(f"delete every call and event before {cutoff.date()} in {log_dir}?", abort=True)
    n = layout.prune(log_dir, cutoff.date())
    emit({"deleted_files": n, "before": str(cutoff.date())}, as_json, f"deleted {n} file(s)")


@logs.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@_log_dir
@click.option("--route", help="Route of the imported calls (default: each request's model).")
@_json
def logs_import(file: str, log_dir: str, route: str | None, as_json: bool) -> None:
    """Import existing traffic from a JSONL file (one call a line), in one atomic commit."""
    from gateway.store.imports import run_cli

    run_cli(file, log_dir, route=route, as_json=as_json)


# -- routes (admin API) --------------------------------------------------------------------
def _admin_call(target: Any, fn: Any, *args: Any) -> Any:
    from gateway.admin_client import AdminClient

    with handle_errors(), AdminClient.for_target(target) as client:
        return fn(client, *args)


_admin_opts = gateway_options


@click.group()
def routes() -> None:
    """Steer traffic splits of a running gateway (no restart)."""


@routes.command("list")
@_admin_opts
@_json
def routes_list(target: Any, as_json: bool) -> None:
    """List routes and their modes."""
    data = _admin_call(target, lambda c: c.routes())
    if as_json:
        _echo_json(data)
        return
    click.echo(f"version {data['version']}")
    for r in data["data"]:
        share = f" share={r['share']}%" if r["mode"] == "canary" else ""
        click.echo(
            f"{r['route']:<20} {r['mode']:<8} baseline={r['baseline']} candidate={r['candidate']}{share}"
        )


@routes.command("show")
@click.argument("route")
@_admin_opts
@_json
def routes_show(route: str, target: Any, as_json: bool) -> None:
    """Show one route's state (JSON)."""
    _echo_json(_admin_call(target, lambda c: c.get_route(route)))


@routes.command("set")
@click.argument("route")
@click.option("--mode", type=click.Choice(["off", "shadow", "canary", "primary"]))
@click.option("--share", type=float, help="Canary share in percent (0-100).")
@click.option("--candidate", help="Candidate upstream.")
@click.option("--baseline", help="Baseline upstream.")
@click.option("--shadow-rate", type=float, help="Fraction mirrored in shadow (0-1).")
@click.option("--sticky-key", help="user, session, client_key or header:<name>.")
@click.option("--salt", help="Canary hash salt.")
@click.option("--reason", help="Why (kept in the audit history).")
@_admin_opts
@_json
def routes_set(route: str, target: Any, reason: str | None, as_json: bool, **changes: Any) -> None:
    """Change a route's split, e.g. --mode canary --share 10 --reason 'ticket 123'; prints its new state (JSON)."""
    body = {k: v for k, v in changes.items() if v is not None}
    if not body:
        raise click.UsageError("nothing to change")
    body["reason"] = reason
    body["actor"] = os.environ.get("USER") or "cli"
    _echo_json(_admin_call(target, lambda c: c.set_route(route, body)))


@routes.command("history")
@click.argument("route", required=False)
@_admin_opts
@_json
@click.option("-n", "--count", default=50, show_default=True)
def routes_history(route: str | None, target: Any, as_json: bool, count: int) -> None:
    """Audit history of route changes (who, when, why, before, after)."""
    rows = _admin_call(target, lambda c: c.history(route, count))
    if as_json:
        _echo_json(rows)
        return
    for h in rows:
        when = dt.datetime.fromtimestamp(h["ts"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        before = h.get("before") or {}
        after = h.get("after") or {}
        changed = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
        what = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items() if k != "route")
        click.echo(
            f"v{h['version']}  {when}  {h.get('route') or h.get('upstream')}  by {h['actor']}  {what}  ({h.get('reason') or ''})"
        )


# -- feedback ------------------------------------------------------------------------------
@click.group()
def feedback() -> None:
    """Outcome signals posted against a call."""


@feedback.command("add")
@click.argument("call_id")
@click.argument("kind")
@click.argument("value")
@click.option("--comment", help="Free text.")
@click.option("--user", help="Who gave the feedback.")
@click.option(
    "--url",
    default=default_url,
    show_default="$SHADOWTUNE_URL or http://127.0.0.1:8000",
    help="Running gateway.",
)
@click.option(
    "--api-key",
    default=lambda: os.environ.get("SHADOWTUNE_API_KEY"),
    help="Client key (env SHADOWTUNE_API_KEY).",
)
@_json
def feedback_add(
    call_id: str,
    kind: str,
    value: str,
    comment: str | None,
    user: str | None,
    url: str,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Record feedback, e.g. `feedback add call_01J... thumbs down` or `... rating 4`; prints its event id."""
    from gateway.admin_client import AdminClient

    parsed: Any = value
    if kind in ("rating",) or kind not in ("thumbs", "choice", "flag"):
        try:
            parsed = float(value)
        except ValueError:
            parsed = {"true": True, "false": False}.get(value.lower(), value)
    body = {"call_id": call_id, "kind": kind, "value": parsed, "comment": comment, "user": user}
    body = {k: v for k, v in body.items() if v is not None}
    with handle_errors(), AdminClient(url, api_key) as client:
        data = client.post_feedback(body)
    emit(data, as_json, str(data.get("id")))


@feedback.command("orphans")
@_log_dir
@_json
@click.option(
    "--window",
    type=DURATION,
    default="1h",
    show_default=True,
    help="Join window: older feedback with no call is reported.",
)
def feedback_orphans(log_dir: str, as_json: bool, window: dt.timedelta) -> None:
    """Feedback naming a call id that matches no logged call after the join window (kept, reported)."""
    from gateway.signals.feedback import orphan_feedback

    window_s = window.total_seconds()
    rows = orphan_feedback(_store(log_dir), window_s)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no orphan feedback")
    for r in rows:
        click.echo(
            f"{r['event_id']}  {r['call_id']}  {r['kind']}={r['value']}  age {r['age_s']:.0f}s  ({r['source']})"
        )
