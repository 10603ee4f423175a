"""The SQL of vectors in PostgreSQL (float32 ``bytea`` in ``embeddings``): writes, the reads
the index cache replays and rebuilds from, the embedding cache, and the id lookups of
filtered and hydrated search. Mixed into
:class:`~mlflow_rag.store.postgres.backend.PostgresBackend`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mlflow_rag import codec
from mlflow_rag.store.filters import Condition
from mlflow_rag.store.postgres import guard
from mlflow_rag.store.postgres.filter_sql import condition_ids_sql
from mlflow_rag.store.schema import HASH_PREFIX_CHARS

# Columns every hydrated hit carries, in the order ``hit_row`` readers expect.
HIT_COLUMNS = (
    "c.id, c.document_id, c.chunk_type, c.chunk_index, c.text, c.metadata, "
    "d.source_path, d.metadata"
)


@guard.guarded  # its methods fail as the backend's do: one line when the server is gone
class PostgresVectors:
    """Backend methods of the vector table; ``conn`` is the backend's psycopg connection."""

    @property
    def conn(self) -> Any:
        raise NotImplementedError

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def insert_embeddings(self, rows: Iterable[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cur, cur.copy(
            "COPY embeddings (id, chunk_id, model_name, model_version, vector_dimension, "
            "vector, created_at, metadata, vector_id) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    def delete_embeddings_for(self, model_name: str, chunk_ids: Sequence[str]) -> None:
        self.conn.execute("DELETE FROM embeddings WHERE model_name = %s AND chunk_id = ANY(%s)",
                          (model_name, list(chunk_ids)))

    def embeddings_of_documents(self, document_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        return [(*r[:5], bytes(r[5]), r[6]) for r in self._rows(
            "SELECT c.document_id, c.text_hash, e.model_name, e.model_version, "
            "e.vector_dimension, e.vector, e.metadata FROM chunks c "
            "JOIN embeddings e ON e.chunk_id = c.id WHERE c.document_id = ANY(%s)",
            (list(document_ids),))]

    def chunks_with_vectors(self, model_name: str) -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[2]) for r in self._rows(
            "SELECT c.id, c.document_id, c.text FROM embeddings e JOIN chunks c "
            "ON c.id = e.chunk_id WHERE e.model_name = %s ORDER BY e.vector_id", (model_name,))]

    def sample_vectors_with_text(
        self, model_name: str, vector_ids: Sequence[int]
    ) -> list[tuple[int, str, bytes]]:
        return [(int(r[0]), r[1], bytes(r[2])) for r in self._rows(
            "SELECT e.vector_id, c.text, e.vector FROM embeddings e JOIN chunks c "
            "ON c.id = e.chunk_id WHERE e.model_name = %s AND e.vector_id = ANY(%s) "
            "ORDER BY e.vector_id", (model_name, [int(v) for v in vector_ids]))]

    def vectors_after(
        self, model_name: str, after_vector_id: int, dimension: int, *, limit: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(
            "SELECT vector_id, vector FROM embeddings WHERE model_name = %s AND vector_id > %s "
            "ORDER BY vector_id" + (" LIMIT %s" if limit > 0 else ""),
            (model_name, after_vector_id, *((limit,) if limit > 0 else ())))
        return _vectors_from_rows(rows, dimension)

    def vectors_by_ids(self, vector_ids: Sequence[int], dimension: int) -> np.ndarray:
        if not vector_ids:
            return np.zeros((0, dimension), dtype=np.float32)
        blobs = {int(r[0]): r[1] for r in self._rows(
            "SELECT vector_id, vector FROM embeddings WHERE vector_id = ANY(%s)",
            ([int(v) for v in vector_ids],))}
        return _vectors_from_rows([(v, blobs[int(v)]) for v in vector_ids], dimension)[1]

    def vectors_for_chunks(
        self, model_name: str, chunk_ids: Sequence[str]
    ) -> dict[str, np.ndarray]:
        return {r[0]: codec.blob_to_vector(bytes(r[1])) for r in self._rows(
            "SELECT chunk_id, vector FROM embeddings WHERE model_name = %s AND chunk_id = ANY(%s)",
            (model_name, list(chunk_ids)))}

    def deletions_since(self, model_name: str, since_generation: int) -> np.ndarray:
        rows = self._rows(
            "SELECT vector_id FROM vector_deletions WHERE model_name = %s AND generation > %s",
            (model_name, since_generation))
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def cached_vectors(self, model_name: str, text_hashes: Sequence[str]) -> dict[str, bytes]:
        hashes = list(dict.fromkeys(text_hashes))
        # The index holds a prefix of each hash (schema migration 6): look up by it, then
        # compare the whole hash.
        return {r[0]: bytes(r[1]) for r in self._rows(
            "SELECT c.text_hash, e.vector FROM chunks c JOIN embeddings e ON e.chunk_id = c.id "
            f"WHERE e.model_name = %s AND substr(c.text_hash, 1, {HASH_PREFIX_CHARS}) = ANY(%s) "
            "AND c.text_hash = ANY(%s)",
            (model_name, [h[:HASH_PREFIX_CHARS] for h in hashes], hashes))}

    def chunks_without_vectors(
        self, model_name: str, document_ids: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[2]) for r in self._rows(
            "SELECT c.id, c.text, c.text_hash FROM chunks c WHERE c.document_id = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id "
            "AND e.model_name = %s) ORDER BY c.document_id, c.chunk_index",
            (list(document_ids), model_name))]

    def vector_keys(self, model_name: str) -> tuple[np.ndarray, list[str], list[str]]:
        rows = self._rows(
            "SELECT e.vector_id, e.chunk_id, c.document_id FROM embeddings e "
            "JOIN chunks c ON c.id = e.chunk_id WHERE e.model_name = %s ORDER BY e.vector_id",
            (model_name,))
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, [r[1] for r in rows], [r[2] for r in rows]

    def condition_ids(self, condition: Condition) -> list[str]:
        sql, params = condition_ids_sql(condition)
        return [r[0] for r in self._rows(sql, params)]

    def hits_by_vector_ids(self, vector_ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        if not vector_ids:
            return {}
        rows = self._rows(
            f"SELECT e.vector_id, {HIT_COLUMNS} FROM embeddings e "
            "JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id "
            "WHERE e.vector_id = ANY(%s)", ([int(v) for v in vector_ids],))
        return {int(row[0]): row[1:] for row in rows}


def _vectors_from_rows(rows: list[tuple[Any, ...]], dimension: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, dimension), dtype=np.float32)
    matrix = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype="<f4")
    return ids, matrix.reshape(len(rows), dimension).astype(np.float32, copy=False)
