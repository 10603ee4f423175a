"""The SQL of vectors in SQLite (float32 BLOBs in ``embeddings``): writes, the reads the index
cache replays and rebuilds from, the embedding cache, and the id lookups of filtered and
hydrated search. Mixed into :class:`~mlflow_rag.store.sqlite.backend.SqliteBackend`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mlflow_rag import codec
from mlflow_rag.store.filters import Condition
from mlflow_rag.store.schema import HASH_PREFIX_CHARS
from mlflow_rag.store.sqlite.filter_sql import condition_ids_sql

# Columns every hydrated hit carries, in the order ``hit_row`` readers expect.
HIT_COLUMNS = (
    "c.id, c.document_id, c.chunk_type, c.chunk_index, c.text, c.metadata, "
    "d.source_path, d.metadata"
)


class SqliteVectors:
    """Backend methods of the vector table; ``conn`` is the backend's connection."""

    @property
    def conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def insert_embeddings(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """rows: (id, chunk_id, model_name, model_version, vector_dimension, vector, created_at,
        metadata, vector_id)."""
        self.conn.executemany(
            "INSERT INTO embeddings(id, chunk_id, model_name, model_version, vector_dimension, "
            "vector, created_at, metadata, vector_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def delete_embeddings_for(self, model_name: str, chunk_ids: Sequence[str]) -> None:
        for part in batches(chunk_ids, 500):
            marks = ",".join("?" * len(part))
            self.conn.execute(
                f"DELETE FROM embeddings WHERE model_name = ? AND chunk_id IN ({marks})",
                (model_name, *part),
            )

    def embeddings_of_documents(
        self, document_ids: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """(document_id, text_hash, model_name, model_version, vector_dimension, vector, metadata)
        of every vector on these documents' chunks: what replacing the chunks would remove."""
        out: list[tuple[Any, ...]] = []
        for part in batches(list(document_ids), 500):
            marks = ",".join("?" * len(part))
            out.extend(
                self.conn.execute(
                    "SELECT c.document_id, c.text_hash, e.model_name, e.model_version, "
                    "e.vector_dimension, e.vector, e.metadata FROM chunks c "
                    f"JOIN embeddings e ON e.chunk_id = c.id WHERE c.document_id IN ({marks})",
                    part,
                ).fetchall()
            )
        return out

    def chunks_with_vectors(self, model_name: str) -> list[tuple[str, str, str]]:
        """(chunk_id, document_id, text) of every chunk holding a vector of this model."""
        return self.conn.execute(
            "SELECT c.id, c.document_id, c.text FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
            "WHERE e.model_name = ? ORDER BY e.vector_id",
            (model_name,),
        ).fetchall()

    def sample_vectors_with_text(
        self, model_name: str, vector_ids: Sequence[int]
    ) -> list[tuple[int, str, bytes]]:
        """(vector_id, chunk text, vector) for these vector ids of a model."""
        out: list[tuple[int, str, bytes]] = []
        for part in batches(list(vector_ids), 500):
            marks = ",".join("?" * len(part))
            out.extend(
                self.conn.execute(
                    "SELECT e.vector_id, c.text, e.vector FROM embeddings e "
                    f"JOIN chunks c ON c.id = e.chunk_id WHERE e.model_name = ? "
                    f"AND e.vector_id IN ({marks}) ORDER BY e.vector_id",
                    (model_name, *part),
                ).fetchall()
            )
        return out

    def vectors_after(
        self, model_name: str, after_vector_id: int, dimension: int, *, limit: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(vector_ids, float32 matrix) of the model's vectors with id > after, in id order;
        the first ``limit`` of them if ``limit`` > 0."""
        # From 0 (a build), walk the model's index. After an id (replaying new rows, or the
        # next block of a build), walk the vector_id index from that id: left to itself SQLite
        # picks the model index, which reads every vector of the model (0.25 s at 100K) to
        # find the usually empty rest ("+" stops it).
        # A block (``limit``) walks the vector_id index too: by the model index SQLite would
        # sort all of the model's rows to find the first few.
        by_model = after_vector_id <= 0 and limit <= 0
        model_term = "model_name = ?" if by_model else "+model_name = ?"
        rows = self.conn.execute(
            f"SELECT vector_id, vector FROM embeddings WHERE vector_id > ? AND {model_term} "
            "ORDER BY vector_id" + (" LIMIT ?" if limit > 0 else ""),
            (after_vector_id, model_name, *((limit,) if limit > 0 else ())),
        ).fetchall()
        return _vectors_from_rows(rows, dimension)

    def vectors_by_ids(
        self, vector_ids: Sequence[int], dimension: int
    ) -> np.ndarray:
        """The float32 vectors of ``vector_ids``, in that order (each id must exist)."""
        if not vector_ids:
            return np.zeros((0, dimension), dtype=np.float32)
        marks = ",".join("?" * len(vector_ids))
        blobs = dict(self.conn.execute(
            f"SELECT vector_id, vector FROM embeddings WHERE vector_id IN ({marks})",
            [int(v) for v in vector_ids],
        ).fetchall())
        return _vectors_from_rows([(v, blobs[v]) for v in vector_ids], dimension)[1]

    def vectors_for_chunks(
        self, model_name: str, chunk_ids: Sequence[str]
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part in batches(chunk_ids, 500):
            marks = ",".join("?" * len(part))
            for chunk_id, blob in self.conn.execute(
                f"SELECT chunk_id, vector FROM embeddings WHERE model_name = ? "
                f"AND chunk_id IN ({marks})",
                (model_name, *part),
            ):
                out[chunk_id] = codec.blob_to_vector(blob)
        return out

    def deletions_since(self, model_name: str, since_generation: int) -> np.ndarray:
        rows = self.conn.execute(
            "SELECT vector_id FROM vector_deletions WHERE model_name = ? AND generation > ?",
            (model_name, since_generation),
        ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def cached_vectors(
        self, model_name: str, text_hashes: Sequence[str]
    ) -> dict[str, bytes]:
        """text_hash -> vector bytes for texts this model already embedded (the embedding cache)."""
        out: dict[str, bytes] = {}
        for part in batches(list(dict.fromkeys(text_hashes)), 500):
            marks = ",".join("?" * len(part))
            # The index holds a prefix of each hash (schema migration 6): look up by it, then
            # compare the whole hash.
            for text_hash, blob in self.conn.execute(
                # CROSS JOIN: chunks first, by the prefix index (without statistics SQLite
                # would walk every vector of the model instead).
                "SELECT c.text_hash, e.vector FROM chunks c CROSS JOIN embeddings e "
                f"ON e.chunk_id = c.id WHERE e.model_name = ? "
                f"AND substr(c.text_hash, 1, {HASH_PREFIX_CHARS}) "
                f"IN ({marks}) AND c.text_hash IN ({marks})",
                (model_name, *(h[:HASH_PREFIX_CHARS] for h in part), *part),
            ):
                out[text_hash] = blob
        return out

    def chunks_without_vectors(
        self, model_name: str, document_ids: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        """(chunk_id, text, text_hash) of the documents' chunks that lack this model's vector."""
        out: list[tuple[str, str, str]] = []
        for part in batches(document_ids, 500):
            marks = ",".join("?" * len(part))
            out.extend(
                self.conn.execute(
                    f"SELECT c.id, c.text, c.text_hash FROM chunks c WHERE c.document_id IN ({marks}) "
                    "AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id "
                    "AND e.model_name = ?) ORDER BY c.document_id, c.chunk_index",
                    (*part, model_name),
                ).fetchall()
            )
        return out

    def vector_keys(
        self, model_name: str
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """(vector ids ascending, their chunk ids, their document ids) for one model's vectors."""
        rows = self.conn.execute(
            "SELECT e.vector_id, e.chunk_id, c.document_id FROM embeddings e "
            "JOIN chunks c ON c.id = e.chunk_id WHERE e.model_name = ? ORDER BY e.vector_id",
            (model_name,),
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, [r[1] for r in rows], [r[2] for r in rows]

    def condition_ids(self, condition: Condition) -> list[str]:
        """The document or chunk ids (by ``condition.owner``) one filter condition selects."""
        sql, params = condition_ids_sql(condition)
        # One JSON array instead of a row per id: stepping 50,000 one-column rows through
        # the cursor took ~45 ms, json_group_array and json.loads ~10 (100K store, 50 %).
        (text,) = self.conn.execute(
            f"WITH ids(id) AS ({sql}) SELECT json_group_array(id) FROM ids", params
        ).fetchone()
        ids: list[str] = json.loads(text)
        return ids

    def hits_by_vector_ids(
        self, vector_ids: Sequence[int]
    ) -> dict[int, tuple[Any, ...]]:
        """vector_id -> hit row (``HIT_COLUMNS``), in one query."""
        if not vector_ids:
            return {}
        marks = ",".join("?" * len(vector_ids))
        rows = self.conn.execute(
            f"SELECT e.vector_id, {HIT_COLUMNS} FROM embeddings e "
            "JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id "
            f"WHERE e.vector_id IN ({marks})",
            [int(v) for v in vector_ids],
        ).fetchall()
        return {row[0]: row[1:] for row in rows}

    def chunk_row_keys(
        self, model_name: str, after_vector_id: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(vector ids, their chunks' and documents' rowids, their chunk ids) of the model's
        vectors with id > ``after_vector_id``, as three JSON arrays (a row per vector costs
        more in Python than the query). From 0 every lookup is a covering index in key order:
        chunks (document_id, id, rowid), then embeddings (chunk_id, model_name, vector_id),
        then documents (id, rowid); "+" keeps SQLite off the model index, which reads every
        embeddings row (1.5 KB of vector each: 10 s instead of 3 at 1M under load). After an
        id, the vector_id index finds the few new rows."""
        if after_vector_id <= 0:
            sql = ("FROM chunks c CROSS JOIN embeddings e CROSS JOIN documents d "
                   "WHERE e.chunk_id = c.id AND +e.model_name = ? AND d.id = c.document_id")
            params: tuple[Any, ...] = (model_name,)
        else:
            sql = ("FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
                   "JOIN documents d ON d.id = c.document_id "
                   "WHERE e.vector_id > ? AND +e.model_name = ?")
            params = (after_vector_id, model_name)
        ids, chunk_rows, document_rows, chunk_ids = self.conn.execute(
            "SELECT json_group_array(e.vector_id), json_group_array(c.rowid), "
            f"json_group_array(d.rowid), json_group_array(c.id) {sql}",
            params,
        ).fetchone()
        return (np.array(json.loads(ids), dtype=np.int64),
                np.array(json.loads(chunk_rows), dtype=np.int64),
                np.array(json.loads(document_rows), dtype=np.int64), json.loads(chunk_ids))

    def hits_by_row_keys(
        self, row_keys: Sequence[tuple[int, int]]
    ) -> dict[int, tuple[Any, ...]]:
        """chunk rowid -> hit row (``HIT_COLUMNS``) for (chunk rowid, document rowid) pairs, in
        one query: two B-tree descents per hit instead of six (vector_id index, embeddings
        row, chunk id index, chunk row, document id index, document row). A document row that
        is not the chunk's document (renumbered rowids) drops the pair."""
        if not row_keys:
            return {}
        pairs = ",".join(["(?, ?)"] * len(row_keys))
        rows = self.conn.execute(
            f"SELECT c.rowid, {HIT_COLUMNS} FROM (VALUES {pairs}) k "
            "JOIN chunks c ON c.rowid = k.column1 "
            "JOIN documents d ON d.rowid = k.column2 AND d.id = c.document_id",
            [key for pair in row_keys for key in pair],
        ).fetchall()
        return {row[0]: row[1:] for row in rows}

    def chunk_rows_by_row_keys(self, row_keys: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """chunk rowid -> (id, document_id, chunk_type, chunk_index, text, metadata): one
        B-tree descent per hit, in the chunks table alone (25 us of the two-table
        statement's 75 at 100K on a quiet machine)."""
        if not row_keys:
            return {}
        rows = self.conn.execute(
            "SELECT rowid, id, document_id, chunk_type, chunk_index, text, metadata FROM chunks "
            f"WHERE rowid IN ({','.join('?' * len(row_keys))})",
            list(row_keys),
        ).fetchall()
        return {row[0]: row[1:] for row in rows}

    def chunk_rows_at_generation(
        self, row_keys: Sequence[int], generation: int
    ) -> dict[int, tuple[Any, ...]] | None:
        # The scalar subquery is evaluated once, in the statement's snapshot: its rows are
        # that generation's. (Outside a transaction this one statement stands for BEGIN, the
        # generation's SELECT and COMMIT of a read transaction: ~30 us a search under load.)
        if not row_keys:
            return None
        rows = self.conn.execute(
            "SELECT rowid, id, document_id, chunk_type, chunk_index, text, metadata, "
            "(SELECT value FROM store_meta WHERE key = 'generation') FROM chunks "
            f"WHERE rowid IN ({','.join('?' * len(row_keys))})",
            list(row_keys),
        ).fetchall()
        if not rows or int(rows[0][7]) != generation:
            return None
        return {row[0]: row[1:7] for row in rows}


def _vectors_from_rows(rows: list[tuple[int, bytes]], dimension: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, dimension), dtype=np.float32)
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dimension)
    return ids, matrix.astype(np.float32, copy=False)


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
