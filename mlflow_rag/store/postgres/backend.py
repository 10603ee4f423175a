"""The PostgreSQL backend: every SQL statement of a store kept in a PostgreSQL schema.

:class:`PostgresBackend` implements :class:`~mlflow_rag.store.backend.Backend` over one
psycopg connection (opened and migrated by :mod:`mlflow_rag.store.postgres.connection`).
Writers serialise on the store's advisory lock; readers use REPEATABLE READ snapshots; the
generation, the id sequence and the deletion log are the same rows and trigger as SQLite's,
so every process and host keeps its FAISS indexes current the same way. BM25 is computed
from ``chunk_terms`` with FTS5's formula (k1 = 1.2, b = 0.75), so scores match SQLite's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from mlflow_rag import codec
from mlflow_rag.errors import DatabaseUnavailable, ForeignStore, RagError
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.files import StorageError
from mlflow_rag.store.filters import Plan
from mlflow_rag.store.postgres import connection, guard, terms
from mlflow_rag.store.postgres.answers import PostgresAnswers
from mlflow_rag.store.postgres.connection import is_storage_failure
from mlflow_rag.store.postgres.filter_sql import field_columns, render_sql
from mlflow_rag.store.postgres.governance import PostgresGovernance
from mlflow_rag.store.postgres.location import Location, parse_location
from mlflow_rag.store.postgres.monitoring import PostgresMonitoring
from mlflow_rag.store.postgres.session import Session
from mlflow_rag.store.postgres.vectors import HIT_COLUMNS, PostgresVectors
from mlflow_rag.store.tables import TABLES, utc_now

CHUNK_COLUMNS = (
    "id, document_id, chunk_index, chunk_type, text, start_char, end_char, token_count, metadata"
)
BM25_K1, BM25_B = 1.2, 0.75
_FILTER_JOIN = ("JOIN chunks c ON c.fts_rowid = sc.fts_rowid "
                "JOIN documents d ON d.id = c.document_id WHERE ")


@guard.guarded
class PostgresBackend(
    PostgresAnswers, PostgresGovernance, PostgresMonitoring, PostgresVectors, Backend
):
    """A store's database in one schema of a PostgreSQL database."""

    def __init__(self, conn: Any, location: Location, *, read_only: bool = False) -> None:
        self._session = Session(conn, location, read_only=read_only)
        self._location = location

    @classmethod
    def open(cls, location: str | Location, *, create: bool, read_only: bool) -> PostgresBackend:
        """Connect, then check (read-only) or migrate the store's schema."""
        where = location if isinstance(location, Location) else parse_location(location)
        conn = connection.connect(where)
        try:
            connection.open_schema(conn, where, create=create, read_only=read_only)
            if read_only:
                connection.set_read_only(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, Exception) and not isinstance(exc, RagError):
                named = open_failure(exc, where)
                if named is not None:
                    raise named from exc
            raise
        return cls(conn, where, read_only=read_only)

    @property
    def conn(self) -> Any:
        return self._session.conn

    def _outcome(self) -> str:
        return self._session.outcome()

    @property
    def location(self) -> str:
        return self._location.shown

    @property
    def store_location(self) -> Location:
        return self._location

    def close(self) -> None:
        self._session.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, params).fetchall())

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql, list(rows))

    # ------------------------------------------------------------------ transactions

    def immediate_transaction(self) -> contextlib.AbstractContextManager[None]:
        return self._session.write_transaction()

    @contextmanager
    def write_transaction(self) -> Iterator[int]:
        with self.immediate_transaction():
            generation = int(self.get_meta("generation")) + 1
            self.set_meta("generation", str(generation))
            yield generation

    def read_transaction(self) -> contextlib.AbstractContextManager[None]:
        return self._session.read_transaction()

    def get_meta(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM store_meta WHERE key = %s", (key,)).fetchone()
        if row is None:
            raise ForeignStore(f"store_meta has no {key!r}: not a complete mlflow-rag store")
        return str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO store_meta(key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def generation(self) -> int:
        return int(self.get_meta("generation"))

    def allocate_ids(self, count: int) -> int:
        first = int(self.get_meta("next_id"))
        self.set_meta("next_id", str(first + count))
        return first

    # ------------------------------------------------------------------ models

    def model_rows(self) -> list[tuple[Any, ...]]:
        return self._rows(
            "SELECT name, slug, dimension, embedder, model_version, index_type, index_params "
            "FROM models ORDER BY name"
        )

    def insert_model(
        self, *, name: str, slug: str, dimension: int, embedder: str | None,
        model_version: str | None, index_type: str, index_params: dict[str, Any],
    ) -> None:
        self.conn.execute(
            "INSERT INTO models(name, slug, dimension, embedder, model_version, index_type, "
            "index_params, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (name, slug, dimension, embedder, model_version, index_type,
             codec.dumps(index_params), utc_now()),
        )

    def update_model_index(
        self, name: str, *, index_type: str, index_params: dict[str, Any]
    ) -> None:
        self.conn.execute("UPDATE models SET index_type = %s, index_params = %s WHERE name = %s",
                          (index_type, codec.dumps(index_params), name))

    def update_model_fit(self, name: str, *, dimension: int, model_version: str | None) -> None:
        self.conn.execute("UPDATE models SET dimension = %s, model_version = %s WHERE name = %s",
                          (dimension, model_version, name))

    def delete_model_vectors(self, model_name: str) -> None:
        self.conn.execute("DELETE FROM embeddings WHERE model_name = %s", (model_name,))

    def has_vectors(self, model_name: str) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM embeddings WHERE model_name = %s LIMIT 1", (model_name,)
        ).fetchone() is not None

    def vector_count(self, model_name: str) -> int:
        return int(self.conn.execute(
            "SELECT count(*) FROM embeddings WHERE model_name = %s", (model_name,)
        ).fetchone()[0])

    # ------------------------------------------------------------------ documents and chunks

    def document_states(self, ids: Sequence[str]) -> dict[str, tuple[str | None, str]]:
        rows = self._rows("SELECT id, content_hash, metadata FROM documents WHERE id = ANY(%s)",
                          (list(ids),))
        return {r[0]: (r[1], r[2]) for r in rows}

    def document_sources(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        rows = self._rows("SELECT id, source_path, content_hash FROM documents WHERE id = ANY(%s)",
                          (list(ids),))
        return {r[0]: (r[1], r[2]) for r in rows}

    def documents_by_source(self, paths: Sequence[str]) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._rows(
            "SELECT source_path, id FROM documents WHERE source_path = ANY(%s) ORDER BY id",
            (list(dict.fromkeys(paths)),))]

    def delete_document(self, document_id: str) -> bool:
        cursor = self.conn.execute("DELETE FROM documents WHERE id = %s", (document_id,))
        return bool(cursor.rowcount > 0)

    def upsert_documents(self, rows: Sequence[tuple[Any, ...]], *, now: str) -> None:
        self._many(
            "INSERT INTO documents(id, source_path, source_type, content_hash, imported_at, "
            "updated_at, metadata, raw_text) VALUES (%s, %s, %s, %s, %s, NULL, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET source_path = excluded.source_path, "
            "source_type = excluded.source_type, content_hash = excluded.content_hash, "
            "updated_at = %s, metadata = excluded.metadata, raw_text = excluded.raw_text",
            [(i, p, t, h, now, m, r, now) for i, p, t, h, m, r in rows],
        )

    def replace_document_fields(
        self, replaced: Sequence[str], rows: Sequence[tuple[str, str, Any]]
    ) -> None:
        if replaced:
            self.conn.execute("DELETE FROM document_fields WHERE document_id = ANY(%s)",
                              (list(replaced),))
        self._many("INSERT INTO document_fields(document_id, key, txt, num) "
                   "VALUES (%s, %s, %s, %s)",
                   [(owner, key, *field_columns(value)) for owner, key, value in rows])

    def delete_chunks_of(self, document_ids: Sequence[str]) -> None:
        if document_ids:
            self.conn.execute("DELETE FROM chunks WHERE document_id = ANY(%s)", (list(document_ids),))

    def insert_chunks(self, rows: Iterable[tuple[Any, ...]]) -> None:
        rows = list(rows)
        chunk_rows: list[tuple[Any, ...]] = []
        term_rows: list[tuple[str, int, int]] = []
        for row, (counts, length) in zip(rows, terms.term_counts([r[4] for r in rows]), strict=True):
            chunk_rows.append((*row, length))
            term_rows.extend((term, row[10], tf) for term, tf in counts.items())
        with self.conn.cursor() as cur:
            with cur.copy(
                "COPY chunks (id, document_id, chunk_index, chunk_type, text, start_char, "
                "end_char, token_count, metadata, text_hash, fts_rowid, lex_length) FROM STDIN"
            ) as copy:
                for chunk in chunk_rows:
                    copy.write_row(chunk)
            with cur.copy("COPY chunk_terms (term, fts_rowid, tf) FROM STDIN") as copy:
                for term_row in term_rows:
                    copy.write_row(term_row)

    def insert_chunk_fields(self, rows: Iterable[tuple[str, str, Any]]) -> None:
        self._many("INSERT INTO chunk_fields(chunk_id, key, txt, num) VALUES (%s, %s, %s, %s)",
                   [(owner, key, *field_columns(value)) for owner, key, value in rows])

    def document_row(self, document_id: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(
            "SELECT id, source_path, source_type, content_hash, imported_at, updated_at, "
            "metadata, raw_text FROM documents WHERE id = %s",
            (document_id,),
        ).fetchone()
        return row

    def chunk_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        return self._rows(
            f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = %s ORDER BY chunk_index",
            (document_id,),
        )

    def neighbour_rows(self, chunk_id: str, n: int) -> list[tuple[Any, ...]]:
        return self._rows(
            f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = "
            "(SELECT document_id FROM chunks WHERE id = %(id)s) AND chunk_index BETWEEN "
            "(SELECT chunk_index FROM chunks WHERE id = %(id)s) - %(n)s AND "
            "(SELECT chunk_index FROM chunks WHERE id = %(id)s) + %(n)s ORDER BY chunk_index",
            {"id": chunk_id, "n": n},  # type: ignore[arg-type]
        )

    def find_document_rows(self, plan: Plan | None, limit: int) -> list[tuple[Any, ...]]:
        where, params = render_sql(plan) if plan is not None else ("TRUE", [])
        return self._rows(
            "SELECT d.id, d.source_path, d.source_type, d.content_hash, d.imported_at, "
            "d.updated_at, d.metadata, NULL FROM documents d WHERE d.id IN (SELECT c.document_id "
            "FROM chunks c JOIN documents d ON d.id = c.document_id WHERE " + where + ") "
            "ORDER BY d.imported_at, d.id LIMIT %s",
            (*params, limit),
        )

    def counts(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), "
            "(SELECT count(*) FROM embeddings), (SELECT count(*) FROM queries), "
            "(SELECT count(*) FROM retrievals)"
        ).fetchone()
        names = ("documents", "chunks", "embeddings", "queries", "retrievals")
        return dict(zip(names, (int(v) for v in row), strict=True))

    def source_type_counts(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self._rows(
            "SELECT source_type, count(*) FROM documents GROUP BY source_type")}

    # ------------------------------------------------------------------ search

    def bm25_rows(self, text: str, k: int, plan: Plan | None) -> list[tuple[Any, ...]]:
        counted = terms.query_term_counts(text)
        if not counted:
            return []
        query, times = list(counted), list(counted.values())
        where, params = render_sql(plan) if plan is not None else ("", [])
        # FTS5's bm25: idf = ln((N - df + 0.5) / (df + 0.5)), floored at 1e-6, summed over the
        # query's terms with tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len)).
        return self._rows(
            # The statistics are scalar subqueries, not a joined CTE: before a freshly loaded
            # store is analysed the planner takes lex_stats for ~2,000 rows, multiplies every
            # join by it and spills a hash join to disk (0.5 s a query at 2,000 chunks).
            # A term counts once per query word it comes from, as FTS5 counts phrases.
            "WITH weights AS (SELECT t.term, min(q.times) * greatest(ln(((SELECT chunks "
            "FROM lex_stats) - count(*) + 0.5) / (count(*) + 0.5)), 1e-6) AS idf "
            "FROM chunk_terms t JOIN unnest(%s::text[], %s::int[]) AS q(term, times) "
            "ON q.term COLLATE \"C\" = t.term WHERE t.term = ANY(%s) GROUP BY t.term), "
            "scored AS (SELECT t.fts_rowid, sum(w.idf * t.tf * %s / (t.tf + %s * (%s + %s * "
            "c.lex_length / (SELECT tokens::float8 / greatest(chunks, 1) FROM lex_stats)))) "
            "AS score FROM chunk_terms t JOIN weights w ON w.term = t.term "
            "JOIN chunks c ON c.fts_rowid = t.fts_rowid WHERE t.term = ANY(%s) "
            "GROUP BY t.fts_rowid), "
            # Ranked first, hydrated after: only the k best rows fetch their text and
            # metadata (the filter, when there is one, needs the chunk's and document's
            # columns, so it joins them while ranking).
            "top AS (SELECT sc.fts_rowid, sc.score FROM scored sc "
            + (_FILTER_JOIN + where if plan is not None else "")
            + " ORDER BY sc.score DESC, sc.fts_rowid LIMIT %s) "
            f"SELECT top.score, {HIT_COLUMNS} FROM top JOIN chunks c "
            "ON c.fts_rowid = top.fts_rowid JOIN documents d ON d.id = c.document_id "
            "ORDER BY top.score DESC, top.fts_rowid",
            (query, times, query, BM25_K1 + 1, BM25_K1, 1 - BM25_B, BM25_B, query, *params,
             k),
        )

    # ------------------------------------------------------------------ query log

    def insert_query(
        self, *, query_id: str, text: str, embedding: bytes | None,
        model_name: str | None, timestamp: str, metadata: str,
        retrievals: Sequence[tuple[str, str, int, float, str]],
    ) -> None:
        self.conn.execute(
            "INSERT INTO queries(id, query_text, query_embedding, model_name, timestamp, "
            "metadata) VALUES (%s, %s, %s, %s, %s, %s)",
            (query_id, text, embedding, model_name, timestamp, metadata),
        )
        # A served bundle may name chunks deleted from the live store since: those rows are
        # skipped (their chunk is gone), the query and its other hits are kept.
        self.conn.execute(
            "INSERT INTO retrievals(id, query_id, chunk_id, rank, score, metadata) "
            "SELECT r.id, %s, r.chunk_id, r.rank, r.score, r.metadata FROM unnest("
            "%s::text[], %s::text[], %s::int[], %s::float8[], %s::text[]) "
            "AS r(id, chunk_id, rank, score, metadata) "
            "WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.id = r.chunk_id)",
            (query_id, *([list(column) for column in zip(*retrievals, strict=True)]
                         if retrievals else [[], [], [], [], []])),
        )

    def delete_queries_before(self, timestamp: str) -> int:
        cursor = self.conn.execute("DELETE FROM queries WHERE timestamp < %s", (timestamp,))
        return int(cursor.rowcount)

    # ------------------------------------------------------------------ fitted embedders

    def save_model_files(self, model_name: str, version: str, files: dict[str, bytes]) -> None:
        with self.immediate_transaction():
            self.conn.execute("DELETE FROM model_files WHERE model_name = %s AND "
                              "model_version = %s", (model_name, version))
            self._many("INSERT INTO model_files(model_name, model_version, path, content) "
                       "VALUES (%s, %s, %s, %s)",
                       [(model_name, version, path, content) for path, content in files.items()])

    def drop_model_files_except(self, model_name: str, version: str | None) -> None:
        self.conn.execute("DELETE FROM model_files WHERE model_name = %s AND "
                          "model_version IS DISTINCT FROM %s", (model_name, version))

    def model_files(self, model_name: str, version: str) -> dict[str, bytes]:
        return {r[0]: bytes(r[1]) for r in self._rows(
            "SELECT path, content FROM model_files WHERE model_name = %s AND model_version = %s",
            (model_name, version))}

    # ------------------------------------------------------------------ copies

    def dump_rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        columns = TABLES[table]
        if table.endswith("_fields"):
            with self.conn.cursor() as cur:
                cur.execute(f"SELECT {columns[0]}, key, txt, num FROM {table}")
                for owner, key, txt, num in cur:
                    yield owner, key, txt if num is None else _number(num)
            return
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(columns)} FROM {table}")
            for row in cur:
                yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)

    def load_rows(self, table: str, rows: Iterable[tuple[Any, ...]]) -> None:
        if table == "chunks":
            self.insert_chunks(rows)  # with their BM25 terms
            return
        if table.endswith("_fields"):
            rows = ((owner, key, *field_columns(value)) for owner, key, value in rows)
            columns: tuple[str, ...] = (TABLES[table][0], "key", "txt", "num")
        else:
            columns = TABLES[table]
        if table == "store_meta":
            for key, value in rows:
                self.set_meta(key, value)
            return
        with self.conn.cursor() as cur, cur.copy(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    # ------------------------------------------------------------------ upkeep

    def schema_version(self) -> int:
        return connection.schema_version(self.conn)

    def schema_sql(self) -> str:
        """Tables, columns and indexes of the store's schema, in a stable order."""
        columns = self._rows(
            "SELECT table_name, column_name, data_type, is_nullable FROM "
            "information_schema.columns WHERE table_schema = current_schema() "
            "ORDER BY table_name, ordinal_position")
        indexes = self._rows(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "ORDER BY indexname")
        return "".join(f"-- column {t}.{c} {d} {n}\n" for t, c, d, n in columns) + \
            "".join(f"{i};\n" for (i,) in indexes)

    def integrity_check(self) -> str:
        """PostgreSQL checks its pages itself; what is checked here is the bookkeeping BM25
        reads: the kept chunk count and length against the chunks."""
        n, tokens = self.conn.execute("SELECT chunks, tokens FROM lex_stats").fetchone()
        real_n, real_tokens = self.conn.execute(
            "SELECT count(*), coalesce(sum(lex_length), 0) FROM chunks").fetchone()
        if (int(n), int(tokens)) != (int(real_n), int(real_tokens)):
            return f"lex_stats holds {n} chunks / {tokens} tokens, the chunks {real_n} / {real_tokens}"
        return "ok"

    def lexical_index_check(self) -> None:
        problem = self.integrity_check()
        if problem != "ok":
            raise RagError(problem)

    def lexical_index_bytes(self) -> int:
        row = self.conn.execute(
            "SELECT pg_total_relation_size('chunk_terms') + pg_total_relation_size('lex_stats')"
        ).fetchone()
        return int(row[0])

    def compact_lexical_index(self) -> None:
        """Deleted chunks' terms leave with their rows (a cascade): nothing to merge."""

    def erase_free_space(self) -> str:
        """VACUUM the tables that held the deleted rows, so their space is reused; old row
        versions may stay in the server's files until then, and in its WAL and backups."""
        for table in ("documents", "chunks", "chunk_terms", "document_fields", "chunk_fields",
                      "embeddings", "queries", "retrievals", "generations", "citations", "feedback",
                      "model_files"):
            self.conn.execute(f"VACUUM {table}")
        return ""

    def reclaim_space(self) -> None:
        self.conn.execute("VACUUM queries")
        self.conn.execute("VACUUM retrievals")

    def copy_to(self, target: Path) -> None:
        """A SQLite file holding this store's rows as of one snapshot (a bundle's database)."""
        from mlflow_rag.store.sqlite.backend import SqliteBackend
        from mlflow_rag.store.transfer import copy_rows

        copy = SqliteBackend.create_file(target)
        try:
            copy_rows(self, copy)
        finally:
            copy.close()

    def is_storage_failure(self, exc: BaseException) -> bool:
        return is_storage_failure(exc)

    def storage_failure(self, exc: BaseException, *, outcome: str) -> StorageError:
        return StorageError(f"cannot write {self.location}: {exc}; {outcome}",
                            filename=self.location, strerror=str(exc))

    def open_failure(self, exc: Exception) -> Exception | None:
        return open_failure(exc, self._location)


def open_failure(exc: Exception, location: Location) -> Exception | None:
    """A failure while opening, named: a lost server, a missing permission."""
    import psycopg

    if is_storage_failure(exc):
        return StorageError(f"cannot write {location.shown}: {exc}; the store was not opened",
                            filename=location.shown)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return DatabaseUnavailable(
            f"{location.shown}: permission denied ({str(exc).splitlines()[0]}); grant the role "
            f"CREATE on the database (to make the store) or USAGE and SELECT on schema "
            f"{location.schema}")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable(f"lost {location.shown}: {str(exc).splitlines()[0]}")
    return None


def _number(value: Decimal) -> int | float:
    """A stored ``numeric`` as the Python number it was written from."""
    exponent = value.as_tuple().exponent
    return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
