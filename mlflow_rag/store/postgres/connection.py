"""PostgreSQL connections: the location's form, connecting, migrating, the write transaction.

A location is a libpq URL, ``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE``, with one
parameter of ours, ``schema`` (default ``mlflow_rag``): a store is one schema, so several
stores share a database. Credentials best come from the environment (``PGPASSWORD``,
``~/.pgpass``, ``PGUSER``), which libpq reads itself; a password in the URL works but never
appears in a message, a parameter, a manifest or a log (:func:`redacted`).

Writers serialise on a transaction-level advisory lock of the store's schema, taken first
thing in every write transaction: two writers on two hosts take turns, and each reads, inside
its transaction, what the one before it committed (READ COMMITTED gives every statement a
fresh snapshot). Readers take a REPEATABLE READ snapshot and never wait.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from mlflow_rag.errors import DatabaseUnavailable, ForeignStore, RagError, SchemaTooNew, StoreNotFound
from mlflow_rag.store.backend import STORE_FORMAT, new_id, utc_now
from mlflow_rag.store.files import StorageError
from mlflow_rag.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "mlflow_rag"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# SQLSTATE classes that mean the storage failed, not the data: 53 insufficient resources
# (disk full, out of memory), 58 system error (I/O error).
_STORAGE_CLASSES = ("53", "58")
CONNECT_TIMEOUT_S = 10


def is_location(text: str) -> bool:
    return str(text).startswith(SCHEMES)


@dataclass(frozen=True)
class Location:
    """A parsed ``postgresql://`` location: what libpq gets, and the store's schema."""

    conninfo: str
    schema: str
    shown: str  # the location without its password: for messages

    @property
    def lock_key(self) -> str:
        return f"mlflow-rag:{self.schema}"


def parse_location(text: str) -> Location:
    """Split off the ``schema`` parameter and check it; refuse what is not a location."""
    if not is_location(text):
        raise RagError(f"not a PostgreSQL location: {redacted(text)!r}; expected "
                       "postgresql://[USER@]HOST[:PORT]/DATABASE[?schema=NAME]")
    parts = urlsplit(text)
    params = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    kept = []
    for key, value in params:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    if not _SCHEMA_NAME.fullmatch(schema):
        raise RagError(f"bad schema name {schema!r} in {redacted(text)}: use 1-63 lowercase "
                       "letters, digits and underscores, not starting with a digit")
    conninfo = urlunsplit(parts._replace(query=urlencode(kept)))
    return Location(conninfo=conninfo, schema=schema, shown=redacted(text))


def redacted(text: str) -> str:
    """The location with any password (in the URL or a ``password`` parameter) removed."""
    try:
        parts = urlsplit(str(text))
    except ValueError:
        return "postgresql://<unparseable location>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = urlencode([(k, "***" if k == "password" else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                      quote_via=quote, safe="/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def connect(location: Location) -> Any:
    """An autocommit connection whose search path is the store's schema (created if
    missing: creating a store makes its schema)."""
    import psycopg

    try:
        conn = psycopg.connect(location.conninfo, autocommit=True,
                               connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {location.shown}: {_first_line(exc, location)}") from None
    try:
        conn.execute(f'SET search_path TO "{location.schema}"')
    except BaseException:
        conn.close()
        raise
    return conn


def _first_line(exc: BaseException, location: Location) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return message.replace(location.conninfo, location.shown)


def schema_exists(conn: Any, schema: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


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
    applied). A migration is pending when its row is missing, not when its number is below
    the highest applied: numbers are handed out before changes land, so a store may hold 1
    and 4 when 3 arrives.
    """
    version = check_version(conn, location)
    applied = applied_versions(conn)
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        with write_lock_transaction(conn, location):
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{location.schema}"')
            current = schema_version(conn)
            if migration.version in applied_versions(conn):
                version = current
                continue
            if current == 0 and conn.execute(
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
        version = max(version, migration.version)
    return version


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
def write_lock_transaction(conn: Any, location: Location) -> Iterator[None]:
    """A transaction holding the store's write lock from its start; commits, or rolls back
    on any error (nothing of it lands)."""
    import psycopg

    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (location.lock_key,))
        yield
        conn.execute("COMMIT")
    except BaseException as exc:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        if is_storage_failure(exc):
            raise StorageError(f"cannot write {location.shown}: {exc}; the transaction was "
                               "rolled back", filename=location.shown) from exc
        raise
