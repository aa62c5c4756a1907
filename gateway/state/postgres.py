"""The PostgreSQL backend: control-plane state shared by every worker of every replica.

psycopg 3 with a connection pool (``pip install 'shadowtune[postgres]'``). Versioned
migrations (`MIGRATIONS`) are applied at start, under an advisory lock so that the workers
of a fleet starting at once apply each exactly once. Every change commits together with
``NOTIFY shadowtune_state, 'routes' | 'keys'``; a listener thread per process (its own
connection, ``LISTEN``) passes the notification on, so a change reaches every worker in
milliseconds; polling stays the fallback while the listener reconnects.

Times of leases come from the database's clock (``clock_timestamp()``), so hosts with
skewed clocks agree on who holds a lease. Any failure to reach the database raises
`StateUnavailable` (nothing was changed) and is reported by `Health`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gateway.state.base import Health, Lease, RouteChange, StateUnavailable

log = logging.getLogger("shadowtune.state")

CHANNEL = "shadowtune_state"
_NOW = "extract(epoch from clock_timestamp())::double precision"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE route_state (
            id int PRIMARY KEY CHECK (id = 1),
            version bigint NOT NULL,
            doc jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE route_history (
            seq bigserial PRIMARY KEY,
            ts double precision NOT NULL,
            version bigint NOT NULL,
            route text,
            entry jsonb NOT NULL
        );
        CREATE INDEX route_history_route ON route_history (route, seq);
        CREATE TABLE client_keys (
            hash text PRIMARY KEY,
            name text NOT NULL,
            revoked double precision,
            doc jsonb NOT NULL
        );
        CREATE UNIQUE INDEX client_keys_active_name ON client_keys (name) WHERE revoked IS NULL;
        CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);
        CREATE TABLE documents (
            kind text NOT NULL,
            name text NOT NULL,
            doc jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, name)
        );
        CREATE TABLE records (
            seq bigserial PRIMARY KEY,
            kind text NOT NULL,
            route text,
            doc jsonb NOT NULL
        );
        CREATE INDEX records_kind_route ON records (kind, route, seq);
        CREATE TABLE leases (
            name text PRIMARY KEY,
            owner text NOT NULL,
            expires_at double precision NOT NULL,
            last_run double precision
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE response_origins (
            id text PRIMARY KEY,
            doc jsonb NOT NULL,
            expires_at double precision NOT NULL
        );
        CREATE INDEX response_origins_expiry ON response_origins (expires_at);
        """,
    ),
]
_SWEEP_EVERY = 256  # notes between two deletions of expired response ids (per process)


def redact(url: str) -> str:
    """The URL without its password (for logs, health and errors)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url.split("?", 1)[0]
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class PostgresBackend:
    kind = "postgresql"

    def __init__(self, url: str, *, timeout: float = 3.0, min_size: int = 1, max_size: int = 4) -> None:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:  # pragma: no cover - the extra is not installed
            raise RuntimeError(
                "store.state_url is a PostgreSQL URL but psycopg is not installed: "
                "pip install 'shadowtune[postgres]'"
            ) from exc
        self.url = url
        self.timeout = timeout
        self.health = Health(self.kind, redact(url))
        self._callbacks: list[Callable[[str], None]] = []
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        self._recover_lock = threading.Lock()
        self._notes = 0
        self.pool = self._new_pool(min_size, max_size)
        try:
            self.migrate()
        except StateUnavailable:
            self.pool.close()
            raise

    # -- connections -----------------------------------------------------------------------
    def _new_pool(self, min_size: int = 1, max_size: int = 4) -> Any:
        from psycopg_pool import ConnectionPool

        self._sizes = (min_size, max_size)
        kwargs = {"connect_timeout": max(1, int(self.timeout)), "application_name": "shadowtune"}
        pool = ConnectionPool(
            self.url,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=self.timeout,
            open=False,
            check=ConnectionPool.check_connection,  # a connection broken by a restart is never handed out
            configure=self._configure,
        )
        pool.open(wait=False)
        return pool

    def _configure(self, conn: Any) -> None:
        """Session limits of every pooled connection. Without them a row lock held by a session
        whose host froze or was cut off mid-transaction (its socket stays open: the server notices
        after hours) hangs every other worker's lease and route calls; now they are refused within
        ``timeout`` (`StateUnavailable`) and the server ends such a session, releasing its locks,
        after a few timeouts (our transactions are never idle for long)."""
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', %s, false)",
            (f"{max(1, int(self.timeout * 1000))}ms", f"{max(1, int(4 * self.timeout * 1000))}ms"),
        )
        conn.commit()

    def _recover(self) -> None:
        """While the database is down: one direct connection says whether it is back (fast refusal
        otherwise), and a fresh pool replaces the one whose connections the outage broke."""
        import psycopg

        with self._recover_lock:
            if self.health.ok:
                return
            with psycopg.connect(self.url, connect_timeout=max(1, int(self.timeout))):
                pass
            old, self.pool = self.pool, self._new_pool(*self._sizes)
            threading.Thread(target=old.close, daemon=True).start()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """A connection in a transaction; any database failure becomes `StateUnavailable`."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            if not self.health.ok:
                self._recover()
            with self.pool.connection(timeout=self.timeout) as conn, conn.transaction():
                yield conn
        except (
            psycopg.OperationalError,
            psycopg.InterfaceError,
            PoolTimeout,
            # a server that became a read-only standby (a failover that moved the address, or the old
            # primary come back): unavailable for writes, and the pool is replaced to reach the new one
            psycopg.errors.ReadOnlySqlTransaction,
        ) as exc:
            self.health.failure(exc)
            raise StateUnavailable(
                f"the state database ({self.health.location}) is unavailable; nothing was changed: "
                f"{type(exc).__name__}"
            ) from exc
        self.health.success()

    def migrate(self) -> None:
        with self._tx() as conn:
            conn.execute("SET LOCAL lock_timeout = 0")  # wait for a worker applying the migrations
            conn.execute("SELECT pg_advisory_xact_lock(727311)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("state database: applied migration %d", version)

    @staticmethod
    def _json(value: Any) -> Any:
        from psycopg.types.json import Jsonb

        return Jsonb(value)

    # -- routes ----------------------------------------------------------------------------
    def routes_if_newer(self, version: int) -> tuple[int, dict[str, Any]] | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT version, doc FROM route_state WHERE id = 1 AND version > %s", (version,)
            ).fetchone()
        return (int(row[0]), dict(row[1])) if row else None

    def change_routes(self, fn: RouteChange) -> int:
        with self._tx() as conn:
            conn.execute("INSERT INTO route_state VALUES (1, 0, '{}') ON CONFLICT DO NOTHING")
            version, doc = conn.execute(
                "SELECT version, doc FROM route_state WHERE id = 1 FOR UPDATE"
            ).fetchone()
            new_doc, entry = fn(int(version), {**doc, "version": int(version)})
            new = int(version) + 1
            new_doc = {**new_doc, "version": new}
            conn.execute(
                "UPDATE route_state SET version = %s, doc = %s, updated_at = now() WHERE id = 1",
                (new, self._json(new_doc)),
            )
            entry = {"ts": time.time(), "version": new, **entry}
            conn.execute(
                "INSERT INTO route_history (ts, version, route, entry) VALUES (%s, %s, %s, %s)",
                (entry["ts"], new, entry.get("route"), self._json(entry)),
            )
            conn.execute("SELECT pg_notify(%s, 'routes')", (CHANNEL,))
        return new

    def history(self, route: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT entry FROM (SELECT seq, entry FROM route_history "
                "WHERE %(route)s::text IS NULL OR route = %(route)s ORDER BY seq DESC LIMIT %(limit)s) t "
                "ORDER BY seq",
                {"route": route, "limit": limit or None},
            ).fetchall()
        return [dict(r[0]) for r in rows]

    # -- keys ------------------------------------------------------------------------------
    def keys_if_changed(self, marker: Any) -> tuple[Any, list[dict[str, Any]]] | None:
        with self._tx() as conn:
            row = conn.execute("SELECT value FROM counters WHERE name = 'keys'").fetchone()
            current = int(row[0]) if row else 0
            if marker is not None and current == marker:
                return None
            rows = conn.execute("SELECT doc, revoked FROM client_keys ORDER BY doc->>'created'").fetchall()
        return current, [{**dict(doc), "revoked": revoked} for doc, revoked in rows]

    def _keys_changed(self, conn: Any) -> None:
        conn.execute(
            "INSERT INTO counters VALUES ('keys', 1) "
            "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1"
        )
        conn.execute("SELECT pg_notify(%s, 'keys')", (CHANNEL,))

    def add_key(self, record: dict[str, Any]) -> None:
        import psycopg

        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO client_keys (hash, name, revoked, doc) VALUES (%s, %s, NULL, %s)",
                    (record["hash"], record["name"], self._json(record)),
                )
                self._keys_changed(conn)
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"a key named {record['name']!r} already exists") from None

    def revoke_key(self, name: str, at: float) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE client_keys SET revoked = %s WHERE name = %s AND revoked IS NULL", (at, name)
            )
            if cur.rowcount == 0:
                raise ValueError(f"no active key named {name!r}")
            self._keys_changed(conn)

    # -- documents and records -------------------------------------------------------------
    def get_doc(self, kind: str, name: str) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT doc FROM documents WHERE kind = %s AND name = %s", (kind, name)
            ).fetchone()
        return dict(row[0]) if row else None

    def put_doc(self, kind: str, name: str, doc: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO documents (kind, name, doc) VALUES (%s, %s, %s) "
                "ON CONFLICT (kind, name) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()",
                (kind, name, self._json(doc)),
            )

    def update_doc(
        self, kind: str, name: str, fn: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        with self._tx() as conn:
            # the row exists (an empty placeholder, rolled back with the rest if ``fn`` fails), so
            # that two first writers also wait for each other on its lock
            conn.execute(
                "INSERT INTO documents (kind, name, doc) VALUES (%s, %s, %s) ON CONFLICT (kind, name) DO NOTHING",
                (kind, name, self._json({})),
            )
            row = conn.execute(
                "SELECT doc FROM documents WHERE kind = %s AND name = %s FOR UPDATE", (kind, name)
            ).fetchone()
            doc = fn(dict(row[0]) if row and row[0] else None)
            conn.execute(
                "UPDATE documents SET doc = %s, updated_at = now() WHERE kind = %s AND name = %s",
                (self._json(doc), kind, name),
            )
            return doc

    def list_docs(self, kind: str) -> list[dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute("SELECT doc FROM documents WHERE kind = %s ORDER BY name", (kind,)).fetchall()
        return [dict(r[0]) for r in rows]

    def append_record(self, kind: str, record: dict[str, Any]) -> None:
        import json

        doc = json.loads(json.dumps(record, default=str))  # numpy numbers and the like as JSON
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO records (kind, route, doc) VALUES (%s, %s, %s)",
                (kind, record.get("route"), self._json(doc)),
            )

    def records(self, kind: str, route: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT doc FROM (SELECT seq, doc FROM records WHERE kind = %(kind)s "
                "AND (%(route)s::text IS NULL OR route = %(route)s) ORDER BY seq DESC LIMIT %(limit)s) t "
                "ORDER BY seq",
                {"kind": kind, "route": route, "limit": limit or None},
            ).fetchall()
        return [dict(r[0]) for r in rows]

    # -- leases ----------------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, ttl: float) -> Lease:
        with self._tx() as conn:
            row = conn.execute(
                f"INSERT INTO leases AS l (name, owner, expires_at, last_run) "
                f"VALUES (%(name)s, %(owner)s, {_NOW} + %(ttl)s, {_NOW}) "
                f"ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at "
                f"WHERE l.owner = EXCLUDED.owner OR l.expires_at < {_NOW} "
                f"RETURNING owner, expires_at, last_run, {_NOW}",
                {"name": name, "owner": owner, "ttl": ttl},
            ).fetchone()
            if row is None:
                row = conn.execute(
                    f"SELECT owner, expires_at, last_run, {_NOW} FROM leases WHERE name = %s", (name,)
                ).fetchone()
        holder, expires, last_run, now = row
        return Lease(name, holder, holder == owner, float(expires), last_run, float(now))

    def mark_run(self, name: str, owner: str, not_after: float, at: float | None = None) -> float | None:
        with self._tx() as conn:
            row = conn.execute(
                f"UPDATE leases SET last_run = coalesce(%s, {_NOW}) WHERE name = %s AND owner = %s "
                f"AND expires_at >= {_NOW} AND (last_run IS NULL OR last_run <= %s) RETURNING last_run",
                (at, name, owner, not_after),
            ).fetchone()
        return float(row[0]) if row else None

    def release_lease(self, name: str, owner: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE leases SET expires_at = 0 WHERE name = %s AND owner = %s", (name, owner))

    # -- Responses API ids -----------------------------------------------------------------
    def note_response(self, response_id: str, origin: dict[str, Any], ttl: float) -> None:
        self._notes += 1
        sweep = self._notes % _SWEEP_EVERY == 0
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO response_origins (id, doc, expires_at) VALUES (%s, %s, {_NOW} + %s) "
                "ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, expires_at = EXCLUDED.expires_at",
                (response_id, self._json(origin), ttl),
            )
            if sweep:
                conn.execute(f"DELETE FROM response_origins WHERE expires_at < {_NOW}")

    def response_origin(self, response_id: str) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT doc FROM response_origins WHERE id = %s AND expires_at >= {_NOW}", (response_id,)
            ).fetchone()
        return dict(row[0]) if row else None

    def forget_response(self, response_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM response_origins WHERE id = %s", (response_id,))

    # -- notifications ---------------------------------------------------------------------
    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)
        if self._listener is None:
            self.health.listening = False
            self._listener = threading.Thread(target=self._listen, name="state-listener", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        import psycopg

        delay = 0.2
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=max(1, int(self.timeout))
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.health.listening = True
                    delay = 0.2
                    self._deliver("reconnected")  # changes made while we were not listening
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._deliver(note.payload)
                        conn.execute("SELECT 1")  # notices a dead server within a second
            except psycopg.Error as exc:
                self.health.failure(exc)
                if self.health.listening:
                    log.warning(
                        "state listener lost its connection (%s); polling meanwhile", type(exc).__name__
                    )
                self.health.listening = False
            self._closed.wait(delay)
            delay = min(delay * 2, 2.0)

    def _deliver(self, what: str) -> None:
        for cb in list(self._callbacks):
            try:
                cb(what)
            except Exception as exc:  # a callback's failure must not end the listener (nor its reconnects)
                log.error("state notification handler failed: %r", exc)

    def close(self) -> None:
        self._closed.set()
        self.pool.close()
