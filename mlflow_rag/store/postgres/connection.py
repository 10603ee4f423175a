"""PostgreSQL connections: connecting to a location (:mod:`~mlflow_rag.store.postgres.location`),
migrating, the write transaction.

Writers serialise on a transaction-level advisory lock of the store's schema, taken first
thing in every write transaction: two writers on two hosts take turns, and each reads, inside
its transaction, what the one before it committed (READ COMMITTED gives every statement a
fresh snapshot). Readers take a REPEATABLE READ snapshot and never wait.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from mlflow_rag.errors import DatabaseUnavailable, ForeignStore, SchemaTooNew, StoreNotFound
from mlflow_rag.store.files import StorageError
from mlflow_rag.store.postgres import guard
from mlflow_rag.store.postgres.location import Location
from mlflow_rag.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from mlflow_rag.store.tables import STORE_FORMAT, new_id, utc_now

# SQLSTATE classes that mean the storage failed, not the data: 53 insufficient resources
# (disk full, out of memory), 58 system error (I/O error).
_STORAGE_CLASSES = ("53", "58")
CONNECT_TIMEOUT_S = 10


def connect(location: Location) -> Any:
    """An autocommit connection whose search path is the store's schema (created if
    missing: creating a store makes its schema)."""
    import psycopg

    # A connection lost inside executemany makes psycopg log "error ignored terminating
    # <Pipeline [BAD]>" besides raising; the raise reaches the caller as one line, and the log
    # record, with no handler configured, would print a second through logging's last resort.
    # A NullHandler stops only that: configured handlers still get it.
    psycopg_log = logging.getLogger("psycopg")
    if not psycopg_log.handlers:
        psycopg_log.addHandler(logging.NullHandler())

    try:
        conn = psycopg.connect(location.conninfo, autocommit=True,
                               connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {location.shown}: {_connect_reason(exc, location)}") from None
    try:
        conn.execute(f'SET search_path TO "{location.schema}"')
        # JIT compiling costs 0.5-1 s per BM25 query when the planner's estimates are high
        # (a freshly loaded store, not yet analysed), hundreds of times what the query costs.
        conn.execute("SET jit = off")
    except BaseException:
        conn.close()
        raise
    return conn


# What to fix, by what libpq said (its second line, cut from the one-line message, is a hint
# of its own for some of these).
_CONNECT_HINTS = (
    ("password authentication failed", "check the role's password (PGPASSWORD, ~/.pgpass, "
     "or the location)"),
    ("no password supplied", "give the role's password (PGPASSWORD or ~/.pgpass)"),
    ("does not exist", "fix the location, or create the database or role first"),
    ("permission denied", "GRANT CONNECT ON DATABASE to the role"),
    ("no pg_hba.conf entry", "allow this host and role in the server's pg_hba.conf"),
    ("Connection refused", "is the server running and listening on that host and port?"),
    ("No such file or directory", "is the server running, with its socket in that folder?"),
    ("timeout expired", "is the server up and reachable from here (firewall, host name)?"),
    ("could not translate host name", "fix the host name"),
    ("shutting down", "the server is stopping; run this again once it is back"),
    ("starting up", "the server is starting; run this again in a moment"),
    ("in recovery mode", "the server is recovering; run this again in a moment"),
)


def _connect_reason(exc: BaseException, location: Location) -> str:
    """libpq's reason without its preamble (``connection failed: connection to server at
    ... failed:``, which repeats the location; kept when the host came from PGHOST or the
    default socket), and what to do about it."""
    reason = _first_line(exc, location)
    if urlsplit(location.conninfo).hostname:  # else libpq's preamble names where it went
        reason = reason.rsplit(" failed: ", 1)[-1]
    reason = reason.replace("FATAL:  ", "")
    for marker, hint in _CONNECT_HINTS:
        if marker in reason:
            return f"{reason}; {hint}"
    return reason


def _first_line(exc: BaseException, location: Location) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return message.replace(location.conninfo, location.shown)


def schema_exists(conn: Any, schema: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def _has_usage(conn: Any, schema: str) -> bool:
    """Without USAGE the schema's tables are invisible (``current_schema()`` is NULL), so a
    store would look missing: say so instead."""
    return bool(conn.execute("SELECT has_schema_privilege(%s, 'USAGE')", (schema,)).fetchone()[0])


def is_store_schema(conn: Any) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'store_meta'"
    ).fetchone()
    if row is None:
        return False
    fmt = conn.execute("SELECT value FROM store_meta WHERE key = 'format'").fetchone()
    return fmt is not None and fmt[0] == STORE_FORMAT


def schema_version(conn: Any) -> int:
    row = conn.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() "
        "AND tablename = 'schema_migrations'"
    ).fetchone()
    if row is None:
        return 0
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])


def applied_versions(conn: Any) -> set[int]:
    """The migrations applied to this schema (its ``schema_migrations`` rows)."""
    if schema_version(conn) == 0:
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}


def check_version(conn: Any, location: Location) -> int:
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{location.shown} has schema version {version}, newer than this mlflow-rag knows "
            f"({SCHEMA_VERSION}); upgrade mlflow-rag to open it"
        )
    return version


def open_schema(conn: Any, location: Location, *, create: bool, read_only: bool) -> None:
    """Check (read-only) or migrate the store's schema; ``create`` makes a missing one."""
    if not schema_exists(conn, location.schema):
        if not create or read_only:
            raise StoreNotFound(
                f"no store at {location.shown}; create one with "
                f"`mlflow-rag ingest SOURCE --store {location.shown}`")
    elif not _has_usage(conn, location.schema):
        user = conn.execute("SELECT current_user").fetchone()[0]
        raise DatabaseUnavailable(
            f"role {user} has no USAGE on schema {location.schema} of {location.shown}; as its "
            f"owner: GRANT USAGE ON SCHEMA {location.schema} TO {user}, and SELECT (to read) "
            "or INSERT, UPDATE, DELETE (to write) on its tables")
    elif schema_version(conn) and not is_store_schema(conn):
        raise ForeignStore(f"schema {location.schema} of {location.shown} is not a mlflow-rag store")
    if read_only:
        if not is_store_schema(conn):
            raise ForeignStore(f"schema {location.schema} of {location.shown} is not a "
                               "mlflow-rag store")
        check_version(conn, location)
        return
    migrate(conn, location)


def migrate(conn: Any, location: Location) -> int:
    """Apply pending migrations in order, each in its own transaction, under the store's
    write lock (so two processes creating one store take turns, each re-reading what is
    applied). Pending means not applied, not only above the highest applied: migration
    numbers are handed out ahead, so a store may hold 4 and still lack 2.
    """
    check_version(conn, location)
    applied = applied_versions(conn)
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        with write_lock_transaction(conn, location):
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{location.schema}"')
            applied = applied_versions(conn)
            if migration.version in applied:
                continue
            if not applied and conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchone()[0]:
                raise ForeignStore(f"schema {location.schema} of {location.shown} holds tables "
                                   "but is not a mlflow-rag store")
            conn.execute(migration.sql)
            if migration.version == 1:
                _init_meta(conn)
                conn.execute(
                    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                         (migration.version, migration.name, utc_now()))
            applied.add(migration.version)
    return schema_version(conn)


def _init_meta(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO store_meta(key, value) VALUES (%s, %s)",
            [("format", STORE_FORMAT), ("store_id", new_id()), ("created_at", utc_now()),
             ("generation", "0"), ("next_id", "1")],
        )


def is_storage_failure(exc: BaseException) -> bool:
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state[:2] in _STORAGE_CLASSES


@contextmanager
def write_lock_transaction(conn: Any, location: Location, *, begun: bool = False) -> Iterator[None]:
    """A transaction holding the store's write lock from its start; commits, or rolls back
    on any error (nothing of it lands). ``begun``: the caller has sent BEGIN already.

    A connection lost before COMMIT means the server rolled the transaction back; one lost
    during COMMIT leaves its outcome unknown: each is its own one-line error, never retried."""
    import psycopg

    try:
        if not begun:
            conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (location.lock_key,))
        yield
        try:
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            if guard.is_connection_failure(exc):
                raise guard.unavailable(exc, location, outcome=guard.AT_COMMIT) from exc
            raise
    except BaseException as exc:
        if not (conn.closed or conn.broken):
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        if is_storage_failure(exc):
            raise StorageError(f"cannot write {location.shown}: {exc}; the transaction was "
                               "rolled back", filename=location.shown) from exc
        if guard.is_connection_failure(exc) or guard.is_permission_failure(exc):
            raise guard.unavailable(exc, location, outcome=guard.IN_WRITE) from exc
        raise


def set_read_only(conn: Any) -> None:
    """Every transaction of this connection read-only (a store opened ``read_only``)."""
    conn.execute("SET default_transaction_read_only = on")
