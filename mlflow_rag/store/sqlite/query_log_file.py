"""A served model's own query-log file read in place of a SQLite store's log tables
(``feedback``, ``report`` and ``lineage`` with ``--query-log FILE``).

The file (``MLFLOW_RAG_QUERY_LOG``, :class:`mlflow_rag.serving_log.QueryLog`) holds only the
log's tables: ``queries``, ``retrievals`` and, once a RAG model answered into it,
``generations``, ``citations`` and ``feedback``. What they refer to (documents, chunks) is
in the store. So the file is attached to the store's connection and each log table is
shadowed by a TEMP view over the file's table (SQLite looks names up in ``temp`` first): every
read of the store, joins with its documents included, then sees the file's rows instead of the
store's own log, with no SQL of its own. Nothing is written through the views."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mlflow_rag.errors import InvalidInput
from mlflow_rag.store.backend import Backend

LOG_TABLES = ("queries", "retrievals", "generations", "citations", "feedback")
# The tables every query log has; the answer tables come with a RAG model's first answer.
REQUIRED = ("queries", "retrievals")
SCHEMA = "query_log"


def check_query_log_file(path: Path) -> set[str]:
    """The log tables the file at ``path`` holds, or a one-line error naming it (missing,
    not SQLite, not a query log). Opened read-only: nothing is created or changed."""
    if not path.is_file():
        raise InvalidInput(f"the query log {path} does not exist (give the file "
                           "MLFLOW_RAG_QUERY_LOG or the model's query_log named)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            names = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise InvalidInput(f"{path} is not a query log (not a SQLite database: {exc})") from None
    missing = [table for table in REQUIRED if table not in names]
    if missing:
        raise InvalidInput(f"{path} is not a query log (no {' or '.join(missing)} table); give "
                           "the file a served model logs to (MLFLOW_RAG_QUERY_LOG)")
    return {table for table in LOG_TABLES if table in names}


def read_log_from(backend: Backend, path: Path, *, read_only: bool, location: str) -> None:
    """Make a store opened read-only read its log tables from the file at ``path``."""
    from mlflow_rag.store.sqlite.backend import SqliteBackend

    if not isinstance(backend, SqliteBackend):
        raise InvalidInput(f"a query-log file is read beside a SQLite store; {location} is "
                           "not one (a PostgreSQL store's served answers are in the store)")
    if not read_only:
        raise InvalidInput("a query-log file is read only with the store opened read-only")
    present = check_query_log_file(path)
    conn = backend.conn
    # The store's read-only connection takes URIs, so the file is attached read-only too.
    conn.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (f"{path.resolve().as_uri()}?mode=ro",))
    attached = {row[1]: row[2] for row in conn.execute("PRAGMA database_list")}
    if attached.get(SCHEMA) != str(path.resolve()):  # a URI taken as a file name
        conn.execute(f"DETACH DATABASE {SCHEMA}")
        raise InvalidInput(f"the query log {path} could not be attached read-only")
    for table in LOG_TABLES:
        columns = [row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")]
        if table in present:
            theirs = {row[1] for row in conn.execute(f"PRAGMA {SCHEMA}.table_info({table})")}
            missing = [c for c in columns if c not in theirs]
            if missing:
                raise InvalidInput(f"{path} is not a query log of this store's version (its "
                                   f"{table} table has no {', '.join(missing)})")
            source = f"SELECT {', '.join(columns)} FROM {SCHEMA}.{table}"
        else:  # a retriever's log: no answers yet
            source = f"SELECT {', '.join(columns)} FROM main.{table} WHERE 0"
        conn.execute(f"CREATE TEMP VIEW {table} AS {source}")
