"""All SQL of the store lives here: connections, migrations, transactions, reads and writes.

Connections serve docs/reliability.md's promises 1-3 (kill -9, disk errors, readers see
only committed data): WAL, ``synchronous=FULL`` for the writer, ``busy_timeout``,
``foreign_keys=ON`` on every connection, ``isolation_level=None`` with explicit transactions.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag import codec
from mlflow_rag.errors import ForeignStore, SchemaTooNew
from mlflow_rag.store.files import StorageError
from mlflow_rag.store.schema import MIGRATIONS, QUERY_LOG_SCHEMA, SCHEMA_VERSION

BUSY_TIMEOUT_MS = 30_000
STORE_FORMAT = "mlflow-rag-store"

# Columns every hydrated hit carries, in the order ``hit_row`` readers expect.
HIT_COLUMNS = (
    "c.id, c.document_id, c.chunk_type, c.chunk_index, c.text, c.metadata, "
    "d.source_path, d.metadata"
)


def utc_now() -> str:
    """ISO-8601 UTC with microseconds: sorts lexicographically, filters compare as text."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- connections


def connect(path: Path, *, read_only: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """Open ``path``. Read-only connections never create or change the file."""
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
    return conn


def configure_writer(conn: sqlite3.Connection) -> None:
    """WAL + full fsync + secure delete. Called only once the file is known to be ours (or
    empty). secure_delete overwrites deleted content with zeros (at a small cost in writes),
    so a deleted document leaves nothing readable in free pages (see erase_free_pages)."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")


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
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        with immediate_transaction(conn):  # a disk failure rolls back and names the file
            if schema_version(conn) >= migration.version:
                # Another process applied it since we looked (the version is re-read inside
                # the write transaction, where nobody else can be migrating).
                version = schema_version(conn)
                continue
            # executescript would COMMIT our transaction; run statement by statement.
            for statement in _statements(migration.sql):
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
            conn.execute(f"PRAGMA user_version = {migration.version}")
        version = migration.version
    return version


def _statements(script: str) -> Iterator[str]:
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


def ensure_query_log_schema(conn: sqlite3.Connection) -> None:
    for statement in _statements(QUERY_LOG_SCHEMA):
        conn.execute(statement)


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


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[int]:
    """``BEGIN IMMEDIATE``; bumps and yields the generation; commits or rolls back."""
    with immediate_transaction(conn):
        generation = int(get_meta(conn, "generation")) + 1
        set_meta(conn, "generation", str(generation))
        yield generation


@contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One snapshot for several reads (WAL readers see only committed data)."""
    if conn.in_transaction:  # nested use: the outer transaction already pins the snapshot
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def get_meta(conn: sqlite3.Connection, key: str) -> str:
    row = conn.execute("SELECT value FROM store_meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise ForeignStore(f"store_meta has no {key!r}: not a complete mlflow-rag store")
    return str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO store_meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def generation(conn: sqlite3.Connection) -> int:
    return int(get_meta(conn, "generation"))


def allocate_ids(conn: sqlite3.Connection, count: int) -> int:
    """Reserve ``count`` ids from the never-reused sequence; returns the first. In a write txn."""
    first = int(get_meta(conn, "next_id"))
    set_meta(conn, "next_id", str(first + count))
    return first


# --------------------------------------------------------------------------- models


def model_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """(name, slug, dimension, embedder, model_version, index_type, index_params JSON)."""
    return conn.execute(
        "SELECT name, slug, dimension, embedder, model_version, index_type, index_params "
        "FROM models ORDER BY name"
    ).fetchall()


def insert_model(
    conn: sqlite3.Connection, *, name: str, slug: str, dimension: int, embedder: str | None,
    model_version: str | None, index_type: str, index_params: dict[str, Any],
) -> None:
    conn.execute(
        "INSERT INTO models(name, slug, dimension, embedder, model_version, index_type, "
        "index_params, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (name, slug, dimension, embedder, model_version, index_type,
         codec.dumps(index_params), utc_now()),
    )


def update_model_index(
    conn: sqlite3.Connection, name: str, *, index_type: str, index_params: dict[str, Any]
) -> None:
    conn.execute(
        "UPDATE models SET index_type = ?, index_params = ? WHERE name = ?",
        (index_type, codec.dumps(index_params), name),
    )


def update_model_fit(
    conn: sqlite3.Connection, name: str, *, dimension: int, model_version: str | None
) -> None:
    """A refitted model (tfidf): its new dimension and version (its vectors are replaced too)."""
    conn.execute(
        "UPDATE models SET dimension = ?, model_version = ? WHERE name = ?",
        (dimension, model_version, name),
    )


def delete_model_vectors(conn: sqlite3.Connection, model_name: str) -> None:
    conn.execute("DELETE FROM embeddings WHERE model_name = ?", (model_name,))


def has_vectors(conn: sqlite3.Connection, model_name: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM embeddings WHERE model_name = ? LIMIT 1", (model_name,)
    ).fetchone() is not None


def vector_count(conn: sqlite3.Connection, model_name: str) -> int:
    return int(
        conn.execute(
            "SELECT count(*) FROM embeddings WHERE model_name = ?", (model_name,)
        ).fetchone()[0]
    )


# --------------------------------------------------------------------------- documents


def _document_columns(
    conn: sqlite3.Connection, ids: Sequence[str], columns: str
) -> Iterator[tuple[Any, ...]]:
    """(id, *columns) of the documents with these ids that exist; ``columns`` is this
    module's own text, never input."""
    for part in _batches(ids, 500):
        marks = ",".join("?" * len(part))
        yield from conn.execute(f"SELECT id, {columns} FROM documents WHERE id IN ({marks})", part)


def document_states(
    conn: sqlite3.Connection, ids: Sequence[str]
) -> dict[str, tuple[str | None, str]]:
    """id -> (content_hash, metadata JSON) for the ids that exist."""
    return {row[0]: (row[1], row[2]) for row in _document_columns(conn, ids, "content_hash, metadata")}


def document_sources(
    conn: sqlite3.Connection, ids: Sequence[str]
) -> dict[str, tuple[str, str | None]]:
    """id -> (source_path, content_hash) for the ids that exist."""
    return {row[0]: (row[1], row[2])
            for row in _document_columns(conn, ids, "source_path, content_hash")}


def documents_by_source(conn: sqlite3.Connection, paths: Sequence[str]) -> list[tuple[str, str]]:
    """(source_path, id) of the documents stored from these source paths."""
    out: list[tuple[str, str]] = []
    for part in _batches(list(dict.fromkeys(paths)), 500):
        marks = ",".join("?" * len(part))
        out.extend(conn.execute(
            f"SELECT source_path, id FROM documents WHERE source_path IN ({marks}) ORDER BY id", part
        ).fetchall())
    return out


def delete_document(conn: sqlite3.Connection, document_id: str) -> bool:
    cursor = conn.execute("DELETE FROM documents WHERE id = ?", (document_id,))
    return cursor.rowcount > 0


def embeddings_of_documents(
    conn: sqlite3.Connection, document_ids: Sequence[str]
) -> list[tuple[Any, ...]]:
    """(document_id, text_hash, model_name, model_version, vector_dimension, vector, metadata)
    of every vector on these documents' chunks: what replacing the chunks would remove."""
    out: list[tuple[Any, ...]] = []
    for part in _batches(list(document_ids), 500):
        marks = ",".join("?" * len(part))
        out.extend(
            conn.execute(
                "SELECT c.document_id, c.text_hash, e.model_name, e.model_version, "
                "e.vector_dimension, e.vector, e.metadata FROM chunks c "
                f"JOIN embeddings e ON e.chunk_id = c.id WHERE c.document_id IN ({marks})",
                part,
            ).fetchall()
        )
    return out


def chunks_with_vectors(conn: sqlite3.Connection, model_name: str) -> list[tuple[str, str, str]]:
    """(chunk_id, document_id, text) of every chunk holding a vector of this model."""
    return conn.execute(
        "SELECT c.id, c.document_id, c.text FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
        "WHERE e.model_name = ? ORDER BY e.vector_id",
        (model_name,),
    ).fetchall()


def sample_vectors_with_text(
    conn: sqlite3.Connection, model_name: str, vector_ids: Sequence[int]
) -> list[tuple[int, str, bytes]]:
    """(vector_id, chunk text, vector) for these vector ids of a model."""
    out: list[tuple[int, str, bytes]] = []
    for part in _batches(list(vector_ids), 500):
        marks = ",".join("?" * len(part))
        out.extend(
            conn.execute(
                "SELECT e.vector_id, c.text, e.vector FROM embeddings e "
                f"JOIN chunks c ON c.id = e.chunk_id WHERE e.model_name = ? "
                f"AND e.vector_id IN ({marks}) ORDER BY e.vector_id",
                (model_name, *part),
            ).fetchall()
        )
    return out


def delete_chunks_of(conn: sqlite3.Connection, document_ids: Sequence[str]) -> None:
    """Delete these documents' chunks (their vectors and field rows cascade)."""
    for part in _batches(list(document_ids), 500):
        marks = ",".join("?" * len(part))
        conn.execute(f"DELETE FROM chunks WHERE document_id IN ({marks})", part)


def upsert_documents(
    conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], *, now: str
) -> None:
    """rows: (id, source_path, source_type, content_hash, metadata, raw_text). A new id gets
    imported_at = now; an existing one keeps imported_at and gets updated_at = now."""
    conn.executemany(
        "INSERT INTO documents(id, source_path, source_type, content_hash, imported_at, "
        "updated_at, metadata, raw_text) VALUES (?, ?, ?, ?, ?, NULL, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET source_path = excluded.source_path, "
        "source_type = excluded.source_type, content_hash = excluded.content_hash, "
        "updated_at = ?, metadata = excluded.metadata, raw_text = excluded.raw_text",
        [(i, p, t, h, now, m, r, now) for i, p, t, h, m, r in rows],
    )


def replace_document_fields(
    conn: sqlite3.Connection, replaced: Sequence[str], rows: Sequence[tuple[str, str, Any]]
) -> None:
    """Drop the field rows of the ``replaced`` documents, then insert ``rows``
    (document_id, key, value). New documents have no rows to drop (they cascade on delete)."""
    for part in _batches(list(replaced), 500):
        marks = ",".join("?" * len(part))
        conn.execute(f"DELETE FROM document_fields WHERE document_id IN ({marks})", part)
    conn.executemany("INSERT INTO document_fields(document_id, key, value) VALUES (?, ?, ?)", rows)


def insert_chunks(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """rows: (id, document_id, chunk_index, chunk_type, text, start_char, end_char,
    token_count, metadata, text_hash, fts_rowid). Also indexes the text for BM25."""
    rows = list(rows)
    conn.executemany(
        "INSERT INTO chunks(id, document_id, chunk_index, chunk_type, text, start_char, "
        "end_char, token_count, metadata, text_hash, fts_rowid) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.executemany(
        "INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)", [(r[10], r[4]) for r in rows]
    )


def insert_chunk_fields(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, Any]]) -> None:
    """rows: (chunk_id, key, value)."""
    conn.executemany("INSERT INTO chunk_fields(chunk_id, key, value) VALUES (?, ?, ?)", rows)


def insert_embeddings(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """rows: (id, chunk_id, model_name, model_version, vector_dimension, vector, created_at,
    metadata, vector_id)."""
    conn.executemany(
        "INSERT INTO embeddings(id, chunk_id, model_name, model_version, vector_dimension, "
        "vector, created_at, metadata, vector_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def delete_embeddings_for(conn: sqlite3.Connection, model_name: str, chunk_ids: Sequence[str]) -> None:
    for part in _batches(chunk_ids, 500):
        marks = ",".join("?" * len(part))
        conn.execute(
            f"DELETE FROM embeddings WHERE model_name = ? AND chunk_id IN ({marks})",
            (model_name, *part),
        )


def document_row(conn: sqlite3.Connection, document_id: str) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(
        "SELECT id, source_path, source_type, content_hash, imported_at, updated_at, "
        "metadata, raw_text FROM documents WHERE id = ?",
        (document_id,),
    ).fetchone()
    return row


CHUNK_COLUMNS = (
    "id, document_id, chunk_index, chunk_type, text, start_char, end_char, token_count, metadata"
)


def chunk_rows(conn: sqlite3.Connection, document_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = ? ORDER BY chunk_index",
        (document_id,),
    ).fetchall()


def neighbour_rows(conn: sqlite3.Connection, chunk_id: str, n: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = "
        "(SELECT document_id FROM chunks WHERE id = :id) AND chunk_index BETWEEN "
        "(SELECT chunk_index FROM chunks WHERE id = :id) - :n AND "
        "(SELECT chunk_index FROM chunks WHERE id = :id) + :n ORDER BY chunk_index",
        {"id": chunk_id, "n": n},
    ).fetchall()


def find_document_rows(
    conn: sqlite3.Connection, where: str, params: Sequence[Any], limit: int
) -> list[tuple[Any, ...]]:
    # Filters may name chunk fields, so match documents through their chunks.
    return conn.execute(
        "SELECT d.id, d.source_path, d.source_type, d.content_hash, d.imported_at, d.updated_at, "
        "d.metadata, NULL FROM documents d WHERE d.id IN (SELECT c.document_id FROM chunks c "
        "JOIN documents d ON d.id = c.document_id WHERE " + where + ") "
        "ORDER BY d.imported_at, d.id LIMIT ?",
        (*params, limit),
    ).fetchall()


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), "
        "(SELECT count(*) FROM embeddings), (SELECT count(*) FROM queries), "
        "(SELECT count(*) FROM retrievals)"
    ).fetchone()
    return dict(zip(("documents", "chunks", "embeddings", "queries", "retrievals"), row, strict=True))


def source_type_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(
        conn.execute("SELECT source_type, count(*) FROM documents GROUP BY source_type").fetchall()
    )


def integrity_check(conn: sqlite3.Connection) -> str:
    return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# --------------------------------------------------------------------------- vectors


def _vectors_from_rows(rows: list[tuple[int, bytes]], dimension: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, dimension), dtype=np.float32)
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dimension)
    return ids, matrix.astype(np.float32, copy=False)


def vectors_after(
    conn: sqlite3.Connection, model_name: str, after_vector_id: int, dimension: int
) -> tuple[np.ndarray, np.ndarray]:
    """(vector_ids, float32 matrix) of the model's vectors with id > after, in id order."""
    # From 0 (a build), walk the model's index. After an id (replaying new rows), walk the
    # vector_id index from that id: left to itself SQLite picks the model index, which reads
    # every vector of the model (0.25 s at 100K) to find the usually empty rest ("+" stops it).
    model_term = "model_name = ?" if after_vector_id <= 0 else "+model_name = ?"
    rows = conn.execute(
        f"SELECT vector_id, vector FROM embeddings WHERE vector_id > ? AND {model_term} "
        "ORDER BY vector_id",
        (after_vector_id, model_name),
    ).fetchall()
    return _vectors_from_rows(rows, dimension)


def vectors_by_ids(
    conn: sqlite3.Connection, vector_ids: Sequence[int], dimension: int
) -> np.ndarray:
    """The float32 vectors of ``vector_ids``, in that order (each id must exist)."""
    if not vector_ids:
        return np.zeros((0, dimension), dtype=np.float32)
    marks = ",".join("?" * len(vector_ids))
    blobs = dict(conn.execute(
        f"SELECT vector_id, vector FROM embeddings WHERE vector_id IN ({marks})",
        [int(v) for v in vector_ids],
    ).fetchall())
    return _vectors_from_rows([(v, blobs[v]) for v in vector_ids], dimension)[1]


def vectors_for_chunks(
    conn: sqlite3.Connection, model_name: str, chunk_ids: Sequence[str]
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for part in _batches(chunk_ids, 500):
        marks = ",".join("?" * len(part))
        for chunk_id, blob in conn.execute(
            f"SELECT chunk_id, vector FROM embeddings WHERE model_name = ? "
            f"AND chunk_id IN ({marks})",
            (model_name, *part),
        ):
            out[chunk_id] = codec.blob_to_vector(blob)
    return out


def deletions_since(conn: sqlite3.Connection, model_name: str, since_generation: int) -> np.ndarray:
    rows = conn.execute(
        "SELECT vector_id FROM vector_deletions WHERE model_name = ? AND generation > ?",
        (model_name, since_generation),
    ).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def cached_vectors(
    conn: sqlite3.Connection, model_name: str, text_hashes: Sequence[str]
) -> dict[str, bytes]:
    """text_hash -> vector bytes for texts this model already embedded (the embedding cache)."""
    out: dict[str, bytes] = {}
    for part in _batches(list(dict.fromkeys(text_hashes)), 500):
        marks = ",".join("?" * len(part))
        for text_hash, blob in conn.execute(
            "SELECT c.text_hash, e.vector FROM chunks c JOIN embeddings e ON e.chunk_id = c.id "
            f"WHERE e.model_name = ? AND c.text_hash IN ({marks})",
            (model_name, *part),
        ):
            out[text_hash] = blob
    return out


def chunks_without_vectors(
    conn: sqlite3.Connection, model_name: str, document_ids: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(chunk_id, text, text_hash) of the documents' chunks that lack this model's vector."""
    out: list[tuple[str, str, str]] = []
    for part in _batches(document_ids, 500):
        marks = ",".join("?" * len(part))
        out.extend(
            conn.execute(
                f"SELECT c.id, c.text, c.text_hash FROM chunks c WHERE c.document_id IN ({marks}) "
                "AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id "
                "AND e.model_name = ?) ORDER BY c.document_id, c.chunk_index",
                (*part, model_name),
            ).fetchall()
        )
    return out


def vector_keys(
    conn: sqlite3.Connection, model_name: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """(vector ids ascending, their chunk ids, their document ids) for one model's vectors."""
    rows = conn.execute(
        "SELECT e.vector_id, e.chunk_id, c.document_id FROM embeddings e "
        "JOIN chunks c ON c.id = e.chunk_id WHERE e.model_name = ? ORDER BY e.vector_id",
        (model_name,),
    ).fetchall()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return ids, [r[1] for r in rows], [r[2] for r in rows]


def matching_ids(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[str]:
    """The ids one filter condition selects (``sql`` comes from the filter compiler)."""
    return [r[0] for r in conn.execute(sql, params).fetchall()]


def hits_by_vector_ids(
    conn: sqlite3.Connection, vector_ids: Sequence[int]
) -> dict[int, tuple[Any, ...]]:
    """vector_id -> hit row (``HIT_COLUMNS``), in one query."""
    if not vector_ids:
        return {}
    marks = ",".join("?" * len(vector_ids))
    rows = conn.execute(
        f"SELECT e.vector_id, {HIT_COLUMNS} FROM embeddings e "
        "JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id "
        f"WHERE e.vector_id IN ({marks})",
        [int(v) for v in vector_ids],
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def bm25_rows(
    conn: sqlite3.Connection, match: str, k: int, where: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    """(score, *HIT_COLUMNS) best first; score = -bm25 so that higher is better."""
    return conn.execute(
        f"SELECT -bm25(chunks_fts) AS score, {HIT_COLUMNS} FROM chunks_fts "
        "JOIN chunks c ON c.fts_rowid = chunks_fts.rowid JOIN documents d ON d.id = c.document_id "
        "WHERE chunks_fts MATCH ? AND (" + where + ") ORDER BY bm25(chunks_fts) LIMIT ?",
        (match, *params, k),
    ).fetchall()


def fts_integrity_check(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")


# --------------------------------------------------------------------------- query log


def insert_query(
    conn: sqlite3.Connection, *, query_id: str, text: str, embedding: bytes | None,
    model_name: str | None, timestamp: str, metadata: str,
    retrievals: Sequence[tuple[str, str, int, float, str]],
) -> None:
    """retrievals: (id, chunk_id, rank, score, metadata)."""
    conn.execute(
        "INSERT INTO queries(id, query_text, query_embedding, model_name, timestamp, metadata) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (query_id, text, embedding, model_name, timestamp, metadata),
    )
    conn.executemany(
        "INSERT INTO retrievals(id, query_id, chunk_id, rank, score, metadata) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(rid, query_id, chunk_id, rank, score, meta) for rid, chunk_id, rank, score, meta in retrievals],
    )


def delete_queries_before(conn: sqlite3.Connection, timestamp: str) -> int:
    cursor = conn.execute("DELETE FROM queries WHERE timestamp < ?", (timestamp,))
    return cursor.rowcount


# --------------------------------------------------------------------------- snapshots


# store_meta key: set once every free page of the file is known to hold zeros (a new store, or
# after one VACUUM of a store written before secure_delete was turned on).
FREE_PAGES_ZEROED = "free_pages_zeroed"
CHECKPOINT_WAIT_MS = 2_000


def vacuum_and_truncate_wal(conn: sqlite3.Connection) -> None:
    """Rewrite the database without its free pages, then checkpoint the WAL into it and
    truncate the WAL, so deleted rows leave neither file."""
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def fts_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the full-text (BM25) index: the pages of the FTS5 tables (SQLite's dbstat)."""
    try:
        row = conn.execute(
            "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name LIKE 'chunks_fts%'"
        ).fetchone()
    except Exception:  # a SQLite built without dbstat: the size is unknown, not an error
        return 0
    return int(row[0])


def fts_optimize(conn: sqlite3.Connection) -> None:
    """Merge the FTS5 index into one segment. Deleting a row only appends delete markers that
    carry its terms; a full merge drops the deleted entries, markers and terms alike."""
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")


def erase_free_pages(conn: sqlite3.Connection) -> str:
    """Leave no deleted content in the database's files: VACUUM once if free pages may predate
    secure_delete, then checkpoint the WAL into the main file and truncate it. Returns why
    that could not complete ("" if it did): another connection holding a read snapshot keeps
    old pages in the WAL until a later checkpoint, or a busy database defers the VACUUM.
    Disk failures raise. Call outside a transaction."""
    problem = ""
    row = conn.execute("SELECT value FROM store_meta WHERE key = ?", (FREE_PAGES_ZEROED,)).fetchone()
    if row is None:
        try:
            conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            if is_storage_failure(exc):
                raise
            problem = (f"free pages written before secure_delete may still hold deleted text "
                       f"(VACUUM failed: {exc}); the next erase tries again")
        else:
            with immediate_transaction(conn):
                set_meta(conn, FREE_PAGES_ZEROED, "1")
    # A truncating checkpoint waits for every reader's snapshot to end; searches hold one for
    # milliseconds, so wait a little, not the 30 s a writer waits for the write lock.
    conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
    try:
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if busy:
        problem = problem or ("another connection holds a read snapshot, so old pages stay in "
                              "the WAL until the next checkpoint")
    return problem


def vacuum_into(conn: sqlite3.Connection, target: Path) -> None:
    """A consistent copy of the database (never a file copy of a live WAL database)."""
    conn.execute("VACUUM INTO ?", (str(target),))


def finalize_snapshot(target: Path) -> None:
    """Bundles are opened immutable and read-only: make them self-contained rollback-journal files."""
    conn = sqlite3.connect(str(target), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
