"""SQLite connections: open, refuse what is not a store, migrate, and the write transaction.

Functions of a raw ``sqlite3.Connection``: they run while a store is being opened (before
its :class:`~mlflow_rag.store.sqlite.backend.SqliteBackend` exists) and under it. They serve
docs/reliability.md's promises 1-3 (kill -9, disk errors, readers see only committed data):
WAL, ``synchronous=FULL`` for the writer, ``busy_timeout``, ``foreign_keys=ON`` on every
connection, ``isolation_level=None`` with explicit transactions.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow_rag.errors import ForeignStore, RagError, SchemaTooNew
from mlflow_rag.store.files import StorageError
from mlflow_rag.store.schema import MIGRATIONS, SCHEMA_VERSION
from mlflow_rag.store.tables import STORE_FORMAT, new_id, utc_now

BUSY_TIMEOUT_MS = 30_000
PAGE_SIZE = 16_384  # bytes, for new files only (configure_writer)
WRITER_CACHE_KIB = 65_536
# A reader's memory map (mmap opens): SQLite caps it at its build's SQLITE_MAX_MMAP_SIZE
# (2 GB in CPython's builds), and reads the pages beyond through read() as before.
MMAP_BYTES = 1 << 40
# store_meta key: set once every free page of the file is known to hold zeros (a new store, or
# after one VACUUM of a store written before secure_delete was turned on).
FREE_PAGES_ZEROED = "free_pages_zeroed"


# --------------------------------------------------------------------------- connections


def connect(
    path: Path, *, read_only: bool = False, immutable: bool = False, mmap: bool = False,
) -> sqlite3.Connection:
    """Open ``path``. Read-only connections never create or change the file.

    ``mmap``: read pages through a memory map of the file instead of a read() per page into
    the connection's 2 MiB cache; a dense search's hits are two page reads each of 16 KiB
    (benchmarks/RESULTS.md, "ann20"). Only for the opens that already map their index
    files (``Store.open(..., mmap=True)``): an I/O error under a mapped page ends the
    process with SIGBUS instead of raising a StorageError (docs/reliability.md, Limits)."""
    if read_only or immutable:
        flags = "mode=ro&immutable=1" if immutable else "mode=ro"
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?{flags}", uri=True, isolation_level=None,
            check_same_thread=False,
        )
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    if mmap:
        conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    return conn


def configure_writer(conn: sqlite3.Connection) -> None:
    """WAL + full fsync + secure delete. Called only once the file is known to be ours (or
    empty). secure_delete overwrites deleted content with zeros (at a small cost in writes),
    so a deleted document leaves nothing readable in free pages (see erase_free_pages).

    A new file gets 16 KiB pages (an existing one keeps its own: SQLite ignores the setting
    once a file has content): a float32 vector row is 1.6 KB at 384 dimensions and 4 KB at
    1,024, so 4 KiB pages leave a fifth of each page empty or push vectors to overflow pages,
    and ingest's page writes and reads take a quarter of the system calls. The writer's page
    cache of 64 MiB holds one write batch's index pages, which it would otherwise spill to
    the WAL and read back (benchmarks/RESULTS.md, "Ingest with precomputed vectors")."""
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")


def is_store_database(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_meta'"
    ).fetchone()
    if row is None:
        return False
    fmt = conn.execute("SELECT value FROM store_meta WHERE key = 'format'").fetchone()
    return fmt is not None and fmt[0] == STORE_FORMAT


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this mlflow-rag knows "
            f"({SCHEMA_VERSION}); upgrade mlflow-rag to open it"
        )
    return version


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Apply pending migrations in order, each in its own transaction. Returns the version.

    A foreign or newer database is refused before anything (even the journal mode) changes.
    """
    version = check_version(conn, path)
    if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise ForeignStore(f"{path} is an SQLite database but not a mlflow-rag store")
    if version > 0 and not is_store_database(conn):
        raise ForeignStore(f"{path} is an SQLite database but not a mlflow-rag store")
    configure_writer(conn)
    # Pending: a migration without its row, not one numbered above user_version (numbers are
    # handed out before changes land, so a store may hold 1 and 3 when 2 arrives).
    applied = applied_versions(conn)
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        with immediate_transaction(conn):  # a disk failure rolls back and names the file
            if migration.version in applied_versions(conn):
                # Another process applied it since we looked (re-read inside the write
                # transaction, where nobody else can be migrating).
                version = schema_version(conn)
                continue
            # executescript would COMMIT our transaction; run statement by statement.
            for statement in statements(migration.sql):
                conn.execute(statement)
            if migration.version == 1:
                _init_meta(conn)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (migration.version, migration.name, utc_now()),
            )
            conn.execute(f"PRAGMA user_version = {max(version, migration.version)}")
        version = max(version, migration.version)
    return version


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    """The migrations applied to this database (its ``schema_migrations`` rows)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                        "AND name = 'schema_migrations'").fetchone():
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}


def statements(script: str) -> Iterator[str]:
    """Split a migration script into complete statements (triggers contain semicolons)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


def _init_meta(conn: sqlite3.Connection) -> None:
    conn.executemany(
        "INSERT INTO store_meta(key, value) VALUES (?, ?)",
        [
            ("format", STORE_FORMAT),
            ("store_id", new_id()),
            ("created_at", utc_now()),
            ("generation", "0"),
            ("next_id", "1"),
            # every page of this file is freed under secure_delete (configure_writer)
            (FREE_PAGES_ZEROED, "1"),
        ],
    )


def schema_sql(conn: sqlite3.Connection) -> str:
    """The schema as text, in a stable order (compared with the checked-in snapshot)."""
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    return "".join(f"-- {kind} {name}\n{sql};\n\n" for kind, name, sql in rows)


# --------------------------------------------------------------------------- transactions


# Primary SQLite result codes that mean the disk failed, not the data: SQLITE_IOERR (all its
# extended codes), SQLITE_FULL, SQLITE_CANTOPEN (e.g. no room for the -wal file).
_STORAGE_CODES = frozenset({10, 13, 14})


def is_storage_failure(exc: BaseException) -> bool:
    """True for SQLite errors caused by the disk (full, file too large, I/O error)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and isinstance(code, int) and code & 0xFF in _STORAGE_CODES


def database_path(conn: sqlite3.Connection) -> str:
    try:
        row = conn.execute("PRAGMA database_list").fetchone()
    except sqlite3.Error:
        return "the store database"
    return str(row[2]) if row and row[2] else "the store database"


def storage_failure(conn: sqlite3.Connection, exc: BaseException, *, outcome: str) -> StorageError:
    """A disk failure inside SQLite as a StorageError naming the database file."""
    path = database_path(conn)
    name = getattr(exc, "sqlite_errorname", "")
    reason = f"{exc} ({name})" if name else str(exc)
    return StorageError(f"cannot write {path}: {reason}; {outcome}", filename=path, strerror=str(exc))


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error. A full disk or an I/O error
    raises StorageError naming the file (the transaction is rolled back: nothing of it lands)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if is_storage_failure(exc):
            raise storage_failure(conn, exc, outcome="nothing was written") from exc
        raise
    try:
        yield
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error is the one to report
                conn.execute("ROLLBACK")
        if is_storage_failure(exc):
            raise storage_failure(conn, exc, outcome="the transaction was rolled back") from exc
        raise


def finalize_snapshot(target: Path) -> None:
    """Bundles are opened immutable and read-only: make them self-contained rollback-journal files."""
    conn = sqlite3.connect(str(target), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


@contextlib.contextmanager
def closed_on_failure(conn: sqlite3.Connection, db_path: Path) -> Iterator[None]:
    """Close ``conn`` if the block fails, and name the failure (:func:`open_failure`)."""
    try:
        yield
    except BaseException as exc:
        conn.close()
        named = open_failure(exc, db_path) if isinstance(exc, Exception) else None
        if named is not None:
            raise named from exc
        raise


def open_failure(exc: Exception, db_path: Path) -> Exception | None:
    """A failure while opening, named: a full disk or I/O error is a StorageError, a file
    SQLite cannot read a ForeignStore; None for anything else (raised as it is)."""
    if isinstance(exc, RagError):
        return None
    if is_storage_failure(exc):
        return StorageError(f"cannot write {db_path}: {exc}; the store was not opened",
                            filename=str(db_path))
    if isinstance(exc, sqlite3.DatabaseError):
        return ForeignStore(f"{db_path} is not a readable SQLite database: {exc}")
    return None
