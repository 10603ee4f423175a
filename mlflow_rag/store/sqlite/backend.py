"""The SQLite backend: every SQL statement of a store kept in one SQLite file.

:class:`SqliteBackend` implements :class:`~mlflow_rag.store.backend.Backend` over one
connection (opened, checked and migrated by :mod:`mlflow_rag.store.sqlite.connection`);
filters are rendered by :mod:`mlflow_rag.store.sqlite.filter_sql`. Vectors are float32
BLOBs, BM25 is FTS5, and a write transaction is ``BEGIN IMMEDIATE`` (one writer at a time,
readers never wait: WAL).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow_rag import codec
from mlflow_rag.errors import ForeignStore, RagError
from mlflow_rag.store import layout
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.files import StorageError, exclusive_lock
from mlflow_rag.store.filters import Plan
from mlflow_rag.store.schema import QUERY_LOG_SCHEMA, SCHEMA_VERSION
from mlflow_rag.store.sqlite import connection
from mlflow_rag.store.sqlite.answers import SqliteAnswers
from mlflow_rag.store.sqlite.connection import (
    BUSY_TIMEOUT_MS,
    FREE_PAGES_ZEROED,
    is_storage_failure,
)
from mlflow_rag.store.sqlite.filter_sql import fts_query, render_sql
from mlflow_rag.store.sqlite.governance import SqliteGovernance
from mlflow_rag.store.sqlite.monitoring import SqliteMonitoring
from mlflow_rag.store.sqlite.vectors import HIT_COLUMNS, SqliteVectors, batches
from mlflow_rag.store.tables import TABLES, utc_now

CHUNK_COLUMNS = (
    "id, document_id, chunk_index, chunk_type, text, start_char, end_char, token_count, metadata"
)
CHECKPOINT_WAIT_MS = 2_000


class SqliteBackend(SqliteAnswers, SqliteGovernance, SqliteMonitoring, SqliteVectors, Backend):
    """A store's database in one SQLite file (``metadata.db`` in the store's folder)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, immutable: bool = False) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.immutable = immutable

    @classmethod
    def open(cls, root: Path, *, read_only: bool, immutable: bool, mmap: bool = False
             ) -> SqliteBackend:
        """Connect to the store's database, checked (read-only) or migrated (writable).
        ``mmap`` (read-only or immutable only): read its pages through a memory map
        (:func:`~mlflow_rag.store.sqlite.connection.connect`)."""
        db_path = root / layout.DB_FILE
        conn = connection.connect(db_path, read_only=read_only, immutable=immutable,
                                  mmap=mmap and (read_only or immutable))
        with connection.closed_on_failure(conn, db_path):
            if read_only or immutable:
                if not connection.is_store_database(conn):
                    raise ForeignStore(f"{db_path} is not a mlflow-rag store database")
                connection.check_version(conn, db_path)
            elif connection.schema_version(conn) < SCHEMA_VERSION:
                # Two processes creating one store must not both run the migrations
                # (both saw user_version 0): one at a time, each re-reading the version.
                with exclusive_lock(root / layout.LOCK_FILE):
                    connection.migrate(conn, db_path)
            else:
                connection.migrate(conn, db_path)
        return cls(conn, db_path, immutable=immutable)

    def row_key_reader(self) -> SqliteBackend:
        return SqliteBackend(connection.connect(self.path, read_only=True, immutable=self.immutable),
                             self.path, immutable=self.immutable)

    def interrupt(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed meanwhile
                self._conn.interrupt()

    @classmethod
    def create_file(cls, path: Path) -> SqliteBackend:
        """A new, empty store database at ``path`` (no folder around it: a bundle's copy)."""
        if path.exists():
            raise RagError(f"{path} exists; a copy is written only to a new file")
        conn = connection.connect(path)
        with connection.closed_on_failure(conn, path):
            connection.migrate(conn, path)
        return cls(conn, path)

    @classmethod
    def open_query_log(cls, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> SqliteBackend:
        """A file holding only the query log's tables (a served replica's own log)."""
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_ms / 1000)
        with connection.closed_on_failure(conn, path):
            conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            with connection.immediate_transaction(conn):  # two workers creating tables take turns
                for statement in connection.statements(QUERY_LOG_SCHEMA):
                    conn.execute(statement)
        return cls(conn, path)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RagError("the store is closed")
        return self._conn

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ transactions

    def immediate_transaction(self) -> contextlib.AbstractContextManager[None]:
        return connection.immediate_transaction(self.conn)

    @contextmanager
    def write_transaction(self) -> Iterator[int]:
        """``BEGIN IMMEDIATE``; bumps and yields the generation; commits or rolls back."""
        with self.immediate_transaction():
            generation = int(self.get_meta("generation")) + 1
            self.set_meta("generation", str(generation))
            yield generation

    @contextmanager
    def read_transaction(self) -> Iterator[None]:
        """One snapshot for several reads (WAL readers see only committed data)."""
        if self.conn.in_transaction:  # nested use: the outer transaction already pins the snapshot
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def get_meta(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM store_meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise ForeignStore(f"store_meta has no {key!r}: not a complete mlflow-rag store")
        return str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO store_meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def generation(self) -> int:
        return int(self.get_meta("generation"))

    def allocate_ids(self, count: int) -> int:
        """Reserve ``count`` ids from the never-reused sequence; returns the first. In a write txn."""
        first = int(self.get_meta("next_id"))
        self.set_meta("next_id", str(first + count))
        return first

    # ------------------------------------------------------------------ models

    def model_rows(self) -> list[tuple[Any, ...]]:
        """(name, slug, dimension, embedder, model_version, index_type, index_params JSON)."""
        return self.conn.execute(
            "SELECT name, slug, dimension, embedder, model_version, index_type, index_params "
            "FROM models ORDER BY name"
        ).fetchall()

    def insert_model(
        self, *, name: str, slug: str, dimension: int, embedder: str | None,
        model_version: str | None, index_type: str, index_params: dict[str, Any],
    ) -> None:
        self.conn.execute(
            "INSERT INTO models(name, slug, dimension, embedder, model_version, index_type, "
            "index_params, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, slug, dimension, embedder, model_version, index_type,
             codec.dumps(index_params), utc_now()),
        )

    def update_model_index(
        self, name: str, *, index_type: str, index_params: dict[str, Any]
    ) -> None:
        self.conn.execute(
            "UPDATE models SET index_type = ?, index_params = ? WHERE name = ?",
            (index_type, codec.dumps(index_params), name),
        )

    def update_model_fit(
        self, name: str, *, dimension: int, model_version: str | None
    ) -> None:
        """A refitted model (tfidf): its new dimension and version (its vectors are replaced too)."""
        self.conn.execute(
            "UPDATE models SET dimension = ?, model_version = ? WHERE name = ?",
            (dimension, model_version, name),
        )

    def delete_model_vectors(self, model_name: str) -> None:
        self.conn.execute("DELETE FROM embeddings WHERE model_name = ?", (model_name,))

    def has_vectors(self, model_name: str) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM embeddings WHERE model_name = ? LIMIT 1", (model_name,)
        ).fetchone() is not None

    def vector_count(self, model_name: str) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM embeddings WHERE model_name = ?", (model_name,)
            ).fetchone()[0]
        )

    # ------------------------------------------------------------------ documents

    def _document_columns(
        self, ids: Sequence[str], columns: str
    ) -> Iterator[tuple[Any, ...]]:
        """(id, *columns) of the documents with these ids that exist; ``columns`` is this
        module's own text, never input."""
        for part in batches(ids, 500):
            marks = ",".join("?" * len(part))
            yield from self.conn.execute(f"SELECT id, {columns} FROM documents WHERE id IN ({marks})", part)

    def document_states(
        self, ids: Sequence[str]
    ) -> dict[str, tuple[str | None, str]]:
        """id -> (content_hash, metadata JSON) for the ids that exist."""
        return {row[0]: (row[1], row[2]) for row in self._document_columns(ids, "content_hash, metadata")}

    def document_sources(
        self, ids: Sequence[str]
    ) -> dict[str, tuple[str, str | None]]:
        """id -> (source_path, content_hash) for the ids that exist."""
        return {row[0]: (row[1], row[2])
                for row in self._document_columns(ids, "source_path, content_hash")}

    def documents_by_source(self, paths: Sequence[str]) -> list[tuple[str, str]]:
        """(source_path, id) of the documents stored from these source paths."""
        out: list[tuple[str, str]] = []
        for part in batches(list(dict.fromkeys(paths)), 500):
            marks = ",".join("?" * len(part))
            out.extend(self.conn.execute(
                f"SELECT source_path, id FROM documents WHERE source_path IN ({marks}) ORDER BY id", part
            ).fetchall())
        return out

    def delete_document(self, document_id: str) -> bool:
        cursor = self.conn.execute("DELETE FROM documents WHERE id = ?", (document_id,))
        return cursor.rowcount > 0

    def delete_chunks_of(self, document_ids: Sequence[str]) -> None:
        """Delete these documents' chunks (their vectors and field rows cascade)."""
        for part in batches(list(document_ids), 500):
            marks = ",".join("?" * len(part))
            self.conn.execute(f"DELETE FROM chunks WHERE document_id IN ({marks})", part)

    def upsert_documents(
        self, rows: Sequence[tuple[Any, ...]], *, now: str
    ) -> None:
        """rows: (id, source_path, source_type, content_hash, metadata, raw_text). A new id gets
        imported_at = now; an existing one keeps imported_at and gets updated_at = now."""
        self.conn.executemany(
            "INSERT INTO documents(id, source_path, source_type, content_hash, imported_at, "
            "updated_at, metadata, raw_text) VALUES (?, ?, ?, ?, ?, NULL, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET source_path = excluded.source_path, "
            "source_type = excluded.source_type, content_hash = excluded.content_hash, "
            "updated_at = ?, metadata = excluded.metadata, raw_text = excluded.raw_text",
            [(i, p, t, h, now, m, r, now) for i, p, t, h, m, r in rows],
        )

    def replace_document_fields(
        self, replaced: Sequence[str], rows: Sequence[tuple[str, str, Any]]
    ) -> None:
        """Drop the field rows of the ``replaced`` documents, then insert ``rows``
        (document_id, key, value). New documents have no rows to drop (they cascade on delete)."""
        for part in batches(list(replaced), 500):
            marks = ",".join("?" * len(part))
            self.conn.execute(f"DELETE FROM document_fields WHERE document_id IN ({marks})", part)
        self.conn.executemany("INSERT INTO document_fields(document_id, key, value) VALUES (?, ?, ?)", rows)

    def insert_chunks(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """rows: (id, document_id, chunk_index, chunk_type, text, start_char, end_char,
        token_count, metadata, text_hash, fts_rowid). Also indexes the text for BM25."""
        rows = list(rows)
        self.conn.executemany(
            "INSERT INTO chunks(id, document_id, chunk_index, chunk_type, text, start_char, "
            "end_char, token_count, metadata, text_hash, fts_rowid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self.conn.executemany(
            "INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)", [(r[10], r[4]) for r in rows]
        )

    def insert_chunk_fields(self, rows: Iterable[tuple[str, str, Any]]) -> None:
        """rows: (chunk_id, key, value)."""
        self.conn.executemany("INSERT INTO chunk_fields(chunk_id, key, value) VALUES (?, ?, ?)", rows)

    def document_row(self, document_id: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(
            "SELECT id, source_path, source_type, content_hash, imported_at, updated_at, "
            "metadata, raw_text FROM documents WHERE id = ?",
            (document_id,),
        ).fetchone()
        return row

    def chunk_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = ? ORDER BY chunk_index",
            (document_id,),
        ).fetchall()

    def neighbour_rows(self, chunk_id: str, n: int) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = "
            "(SELECT document_id FROM chunks WHERE id = :id) AND chunk_index BETWEEN "
            "(SELECT chunk_index FROM chunks WHERE id = :id) - :n AND "
            "(SELECT chunk_index FROM chunks WHERE id = :id) + :n ORDER BY chunk_index",
            {"id": chunk_id, "n": n},
        ).fetchall()

    def find_document_rows(self, plan: Plan | None, limit: int) -> list[tuple[Any, ...]]:
        where, params = render_sql(plan) if plan is not None else ("1", [])
        # Filters may name chunk fields, so match documents through their chunks.
        return self.conn.execute(
            "SELECT d.id, d.source_path, d.source_type, d.content_hash, d.imported_at, d.updated_at, "
            "d.metadata, NULL FROM documents d WHERE d.id IN (SELECT c.document_id FROM chunks c "
            "JOIN documents d ON d.id = c.document_id WHERE " + where + ") "
            "ORDER BY d.imported_at, d.id LIMIT ?",
            (*params, limit),
        ).fetchall()

    def counts(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), "
            "(SELECT count(*) FROM embeddings), (SELECT count(*) FROM queries), "
            "(SELECT count(*) FROM retrievals)"
        ).fetchone()
        return dict(zip(("documents", "chunks", "embeddings", "queries", "retrievals"), row, strict=True))

    def source_type_counts(self) -> dict[str, int]:
        return dict(
            self.conn.execute("SELECT source_type, count(*) FROM documents GROUP BY source_type").fetchall()
        )

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])

    def bm25_rows(self, text: str, k: int, plan: Plan | None) -> list[tuple[Any, ...]]:
        """(score, *HIT_COLUMNS) best first; score = -bm25 so that higher is better."""
        match = fts_query(text)
        if not match:
            return []
        where, params = render_sql(plan) if plan is not None else ("1", [])
        return self.conn.execute(
            f"SELECT -bm25(chunks_fts) AS score, {HIT_COLUMNS} FROM chunks_fts "
            "JOIN chunks c ON c.fts_rowid = chunks_fts.rowid JOIN documents d ON d.id = c.document_id "
            "WHERE chunks_fts MATCH ? AND (" + where + ") ORDER BY bm25(chunks_fts) LIMIT ?",
            (match, *params, k),
        ).fetchall()

    def lexical_index_check(self) -> None:
        self.conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")

    # ------------------------------------------------------------------ query log

    def insert_query(
        self, *, query_id: str, text: str, embedding: bytes | None,
        model_name: str | None, timestamp: str, metadata: str,
        retrievals: Sequence[tuple[str, str, int, float, str]],
    ) -> None:
        """retrievals: (id, chunk_id, rank, score, metadata)."""
        self.conn.execute(
            "INSERT INTO queries(id, query_text, query_embedding, model_name, timestamp, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (query_id, text, embedding, model_name, timestamp, metadata),
        )
        self.conn.executemany(
            "INSERT INTO retrievals(id, query_id, chunk_id, rank, score, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(rid, query_id, chunk_id, rank, score, meta) for rid, chunk_id, rank, score, meta in retrievals],
        )

    def delete_queries_before(self, timestamp: str) -> int:
        cursor = self.conn.execute("DELETE FROM queries WHERE timestamp < ?", (timestamp,))
        return cursor.rowcount

    def reclaim_space(self) -> None:
        """Rewrite the database without its free pages, then checkpoint the WAL into it and
        truncate the WAL, so deleted rows leave neither file."""
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def lexical_index_bytes(self) -> int:
        """Bytes of the full-text (BM25) index: the pages of the FTS5 tables (SQLite's dbstat)."""
        try:
            row = self.conn.execute(
                "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name LIKE 'chunks_fts%'"
            ).fetchone()
        except Exception:  # a SQLite built without dbstat: the size is unknown, not an error
            return 0
        return int(row[0])

    def compact_lexical_index(self) -> None:
        """Merge the FTS5 index into one segment. Deleting a row only appends delete markers that
        carry its terms; a full merge drops the deleted entries, markers and terms alike."""
        with self.immediate_transaction():
            self.conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")

    def erase_free_space(self) -> str:
        """Leave no deleted content in the database's files: VACUUM once if free pages may predate
        secure_delete, then checkpoint the WAL into the main file and truncate it. Returns why
        that could not complete ("" if it did): another connection holding a read snapshot keeps
        old pages in the WAL until a later checkpoint, or a busy database defers the VACUUM.
        Disk failures raise. Call outside a transaction."""
        problem = ""
        row = self.conn.execute("SELECT value FROM store_meta WHERE key = ?", (FREE_PAGES_ZEROED,)).fetchone()
        if row is None:
            try:
                self.conn.execute("VACUUM")
            except sqlite3.OperationalError as exc:
                if is_storage_failure(exc):
                    raise
                problem = (f"free pages written before secure_delete may still hold deleted text "
                           f"(VACUUM failed: {exc}); the next erase tries again")
            else:
                with self.immediate_transaction():
                    self.set_meta(FREE_PAGES_ZEROED, "1")
        # A truncating checkpoint waits for every reader's snapshot to end; searches hold one for
        # milliseconds, so wait a little, not the 30 s a writer waits for the write lock.
        self.conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            busy, _log, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if busy:
            problem = problem or ("another connection holds a read snapshot, so old pages stay in "
                                  "the WAL until the next checkpoint")
        return problem

    def copy_to(self, target: Path) -> None:
        """A consistent copy of the database (never a file copy of a live WAL database)."""
        self.conn.execute("VACUUM INTO ?", (str(target),))

    # ------------------------------------------------------------------ fitted embedders

    def save_model_files(self, model_name: str, version: str, files: dict[str, bytes]) -> None:
        """The store's folder holds them (models/<slug>/): every process reads that."""

    def model_files(self, model_name: str, version: str) -> dict[str, bytes]:
        return {}

    def drop_model_files_except(self, model_name: str, version: str | None) -> None:
        """Nothing kept here: a refit rewrites the files in the store's folder."""

    # ------------------------------------------------------------------ copies

    def dump_rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        columns = ", ".join(TABLES[table])
        yield from self.conn.execute(f"SELECT {columns} FROM {table}")

    def load_rows(self, table: str, rows: Iterable[tuple[Any, ...]]) -> None:
        if table == "chunks":
            self.insert_chunks(rows)  # with their BM25 index rows
            return
        columns = TABLES[table]
        verb = "INSERT OR REPLACE" if table == "store_meta" else "INSERT"
        marks = ", ".join("?" * len(columns))
        self.conn.executemany(f"{verb} INTO {table}({', '.join(columns)}) VALUES ({marks})", rows)

    # ------------------------------------------------------------------ schema and failures

    def schema_version(self) -> int:
        return connection.schema_version(self.conn)

    def schema_sql(self) -> str:
        return connection.schema_sql(self.conn)

    def is_storage_failure(self, exc: BaseException) -> bool:
        return is_storage_failure(exc)

    def storage_failure(self, exc: BaseException, *, outcome: str) -> StorageError:
        return connection.storage_failure(self.conn, exc, outcome=outcome)

    def open_failure(self, exc: Exception) -> Exception | None:
        return connection.open_failure(exc, self.path)
