"""The storage backend seam: what a store asks of the database that holds it.

A store keeps its source of truth (documents, chunks, vectors, the query log, the models and
the bookkeeping below) in one database behind :class:`Backend`; the FAISS indexes are derived
from it. Every SQL statement lives in a backend's own package (``store/sqlite/`` today), and
the modules above (``writes``, ``index_cache``, ``retrieval``, ``query_log``, ...) talk to the
database only through these methods, so a second database is one new package.

What every backend promises (docs/architecture.md, "The backend seam"; the contract tests
in ``tests/test_backend_contract.py`` hold each backend to it):

- **Transactions.** :meth:`Backend.immediate_transaction` is a write transaction that
  serialises with every other writer of the same store (in any process, on any host) from
  its start, and commits all or nothing; :meth:`Backend.write_transaction` is one that also
  bumps the store's **generation** and yields the new value, so generations count committed
  writes, strictly increasing. :meth:`Backend.read_transaction` pins one snapshot: every
  read inside it sees the same committed state, never part of a write. Both nest inside an
  outer transaction of the same kind.
- **The vector-id sequence.** :meth:`Backend.allocate_ids` hands out ids from a sequence
  that never returns a value twice, even after the rows that had them are deleted, so an
  index can tell new rows (id above the highest it holds) from old ones.
- **The deletion log.** Every vector removed (by a document's deletion, a re-chunk, a
  replaced or dropped model) is recorded with the generation that removed it, in the same
  transaction; :meth:`Backend.deletions_since` returns them. With the sequence, this lets
  an index written at generation G catch up to any later generation without a rebuild.
- **Failures.** A failure of the storage under the database (disk full, I/O error) rolls
  the transaction back and :meth:`Backend.storage_failure` names what failed; nothing of a
  failed write is visible afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlflow_rag.store.files import StorageError
    from mlflow_rag.store.filters import Condition, Plan

class Backend(ABC):
    """One store's database. Rows are tuples in the column orders each method names."""

    # ------------------------------------------------------------------ lifecycle

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the database is, for messages (a path, or a URL without its password)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; later calls raise RagError("the store is closed")."""

    # ------------------------------------------------------------------ transactions

    @abstractmethod
    def immediate_transaction(self) -> AbstractContextManager[None]:
        """A write transaction, serialised with every other writer of the store from its start."""

    @abstractmethod
    def write_transaction(self) -> AbstractContextManager[int]:
        """:meth:`immediate_transaction` that bumps the generation and yields the new one."""

    @abstractmethod
    def read_transaction(self) -> AbstractContextManager[None]:
        """One snapshot for several reads; nested use keeps the outer snapshot."""

    @abstractmethod
    def get_meta(self, key: str) -> str:
        """A value of the store's bookkeeping (``store_id``, ``generation``, ...)."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Set a bookkeeping value (inside a write transaction)."""

    @abstractmethod
    def generation(self) -> int:
        """The generation of the last committed write (0 for a new store)."""

    @abstractmethod
    def allocate_ids(self, count: int) -> int:
        """Reserve ``count`` ids of the never-reused sequence; the first (in a write txn)."""

    # ------------------------------------------------------------------ models

    @abstractmethod
    def model_rows(self) -> list[tuple[Any, ...]]:
        """(name, slug, dimension, embedder, model_version, index_type, index_params JSON)."""

    @abstractmethod
    def insert_model(
        self, *, name: str, slug: str, dimension: int, embedder: str | None,
        model_version: str | None, index_type: str, index_params: dict[str, Any],
    ) -> None:
        """Register an embedding model."""

    @abstractmethod
    def update_model_index(
        self, name: str, *, index_type: str, index_params: dict[str, Any]
    ) -> None:
        """Change a model's index settings."""

    @abstractmethod
    def update_model_fit(self, name: str, *, dimension: int, model_version: str | None) -> None:
        """A refitted model (tfidf): its new dimension and version (its vectors replaced too)."""

    @abstractmethod
    def delete_model_vectors(self, model_name: str) -> None:
        """Delete every vector of a model (each logged as deleted)."""

    @abstractmethod
    def has_vectors(self, model_name: str) -> bool:
        """True if the model has at least one vector."""

    @abstractmethod
    def vector_count(self, model_name: str) -> int:
        """How many vectors the model has."""

    # ------------------------------------------------------------------ documents and chunks

    @abstractmethod
    def document_states(self, ids: Sequence[str]) -> dict[str, tuple[str | None, str]]:
        """id -> (content_hash, metadata JSON) for the ids that exist."""

    @abstractmethod
    def document_sources(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """id -> (source_path, content_hash) for the ids that exist."""

    @abstractmethod
    def documents_by_source(self, paths: Sequence[str]) -> list[tuple[str, str]]:
        """(source_path, id) of the documents stored from these source paths, by id."""

    @abstractmethod
    def delete_document(self, document_id: str) -> bool:
        """Delete a document with its chunks, fields and vectors; False if there was none."""

    @abstractmethod
    def upsert_documents(self, rows: Sequence[tuple[Any, ...]], *, now: str) -> None:
        """rows: (id, source_path, source_type, content_hash, metadata, raw_text). A new id
        gets imported_at = now; an existing one keeps imported_at and gets updated_at = now."""

    @abstractmethod
    def replace_document_fields(
        self, replaced: Sequence[str], rows: Sequence[tuple[str, str, Any]]
    ) -> None:
        """Drop the field rows of the ``replaced`` documents, then insert ``rows``
        (document_id, key, value)."""

    @abstractmethod
    def delete_chunks_of(self, document_ids: Sequence[str]) -> None:
        """Delete these documents' chunks (their vectors and field rows go with them)."""

    @abstractmethod
    def insert_chunks(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """rows: (id, document_id, chunk_index, chunk_type, text, start_char, end_char,
        token_count, metadata, text_hash, fts_rowid). Also indexes the text for BM25."""

    @abstractmethod
    def insert_chunk_fields(self, rows: Iterable[tuple[str, str, Any]]) -> None:
        """rows: (chunk_id, key, value)."""

    @abstractmethod
    def document_row(self, document_id: str) -> tuple[Any, ...] | None:
        """(id, source_path, source_type, content_hash, imported_at, updated_at, metadata,
        raw_text), or None."""

    @abstractmethod
    def chunk_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        """A document's chunks in order: (id, document_id, chunk_index, chunk_type, text,
        start_char, end_char, token_count, metadata)."""

    @abstractmethod
    def neighbour_rows(self, chunk_id: str, n: int) -> list[tuple[Any, ...]]:
        """The chunk and up to ``n`` either side of it in its document, as :meth:`chunk_rows`."""

    @abstractmethod
    def find_document_rows(self, plan: Plan | None, limit: int) -> list[tuple[Any, ...]]:
        """Documents with a chunk matching ``plan`` by import time, as :meth:`document_row`
        with raw_text None."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Rows of documents, chunks, embeddings, queries and retrievals."""

    @abstractmethod
    def source_type_counts(self) -> dict[str, int]:
        """Documents per source type."""

    # ------------------------------------------------------------------ vectors

    @abstractmethod
    def insert_embeddings(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """rows: (id, chunk_id, model_name, model_version, vector_dimension, vector bytes
        (float32 little-endian), created_at, metadata, vector_id)."""

    @abstractmethod
    def delete_embeddings_for(self, model_name: str, chunk_ids: Sequence[str]) -> None:
        """Delete one model's vectors of these chunks (each logged as deleted)."""

    @abstractmethod
    def embeddings_of_documents(self, document_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """(document_id, text_hash, model_name, model_version, vector_dimension, vector,
        metadata) of every vector on these documents' chunks."""

    @abstractmethod
    def chunks_with_vectors(self, model_name: str) -> list[tuple[str, str, str]]:
        """(chunk_id, document_id, text) of every chunk with this model's vector, by vector id."""

    @abstractmethod
    def sample_vectors_with_text(
        self, model_name: str, vector_ids: Sequence[int]
    ) -> list[tuple[int, str, bytes]]:
        """(vector_id, chunk text, vector bytes) for these vector ids of a model."""

    @abstractmethod
    def vectors_after(
        self, model_name: str, after_vector_id: int, dimension: int, *, limit: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(vector_ids, float32 matrix) of the model's vectors with id > after, by id (first ``limit``)."""

    @abstractmethod
    def vectors_by_ids(self, vector_ids: Sequence[int], dimension: int) -> np.ndarray:
        """The float32 vectors of ``vector_ids``, in that order (each id must exist)."""

    @abstractmethod
    def vectors_for_chunks(self, model_name: str, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """chunk_id -> the model's vector, for the chunks that have one."""

    @abstractmethod
    def deletions_since(self, model_name: str, since_generation: int) -> np.ndarray:
        """Vector ids of the model deleted by generations after ``since_generation``."""

    @abstractmethod
    def cached_vectors(self, model_name: str, text_hashes: Sequence[str]) -> dict[str, bytes]:
        """text_hash -> vector bytes of texts this model embedded before (the embedding cache)."""

    @abstractmethod
    def chunks_without_vectors(
        self, model_name: str, document_ids: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        """(chunk_id, text, text_hash) of the documents' chunks lacking this model's vector."""

    @abstractmethod
    def vector_keys(self, model_name: str) -> tuple[np.ndarray, list[str], list[str]]:
        """(vector ids ascending, their chunk ids, their document ids) for one model."""

    # ------------------------------------------------------------------ search

    @abstractmethod
    def condition_ids(self, condition: Condition) -> list[str]:
        """The document or chunk ids (by ``condition.owner``) one filter condition's test
        selects, before its negation."""

    @abstractmethod
    def hits_by_vector_ids(self, vector_ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """vector_id -> hit row (chunk id, document id, chunk type, chunk index, text, chunk
        metadata, source path, document metadata), in one query."""

    def chunk_row_keys(
        self, model_name: str, after_vector_id: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None:
        """(vector ids, their chunks' and documents' row keys, their chunk ids) of the model's
        vectors with id > ``after_vector_id``; None when this backend has no row keys (hits
        are joined by vector id). A row key may change without a new generation (VACUUM may
        renumber rowids): callers check each row's chunk id."""
        return None

    def row_key_reader(self) -> Backend | None:
        """A read-only connection of its own, closed by the thread that reads keys with it."""
        return None

    def interrupt(self) -> None:
        """Stop the statement a :meth:`row_key_reader` runs (called from another thread)."""
        raise NotImplementedError(f"{type(self).__name__} has no row key reader")

    def hits_by_row_keys(self, row_keys: Sequence[tuple[int, int]]) -> dict[int, tuple[Any, ...]]:
        """chunk row key -> hit row of (chunk, document) key pairs still chunk and document."""
        raise NotImplementedError(f"{type(self).__name__} has no chunk row keys")

    def chunk_rows_by_row_keys(self, row_keys: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """:meth:`hits_by_row_keys` from the chunks table alone: hit rows less the last two."""
        raise NotImplementedError(f"{type(self).__name__} has no chunk row keys")

    @abstractmethod
    def bm25_rows(self, text: str, k: int, plan: Plan | None) -> list[tuple[Any, ...]]:
        """(score, *hit row) of the ``k`` chunks matching ``plan`` that rank best by BM25 for
        free ``text`` (any term may match; no query syntax), best first, higher is better."""

    # ------------------------------------------------------------------ query log

    @abstractmethod
    def insert_query(
        self, *, query_id: str, text: str, embedding: bytes | None,
        model_name: str | None, timestamp: str, metadata: str,
        retrievals: Sequence[tuple[str, str, int, float, str]],
    ) -> None:
        """One query and its retrievals (id, chunk_id, rank, score, metadata)."""

    @abstractmethod
    def delete_queries_before(self, timestamp: str) -> int:
        """Delete the queries (and their retrievals) logged before ``timestamp``."""

    # ------------------------------------------------------------------ answers

    @abstractmethod
    def insert_generation(
        self, row: Sequence[Any], citations: Sequence[tuple[int, str, str]]
    ) -> None:
        """One answer (:data:`GENERATION_COLUMNS`) and its citations (rank, chunk_id,
        document_id); its query must exist. In a write transaction."""

    @abstractmethod
    def generation_row(self, generation_id: str) -> tuple[Any, ...] | None:
        """An answer's row (:data:`GENERATION_COLUMNS`), or None."""

    @abstractmethod
    def citation_rows(self, generation_id: str) -> list[tuple[int, str, str]]:
        """An answer's citations (rank, chunk_id, document_id) by rank."""

    @abstractmethod
    def insert_feedback(self, row: Sequence[Any]) -> None:
        """One feedback row (:data:`FEEDBACK_COLUMNS`) on an existing answer."""

    @abstractmethod
    def feedback_rows(self, generation_id: str) -> list[tuple[Any, ...]]:
        """An answer's feedback (:data:`FEEDBACK_COLUMNS`), oldest first."""

    @abstractmethod
    def delete_logs_of(self, *, user_id: str | None, session_id: str | None) -> tuple[int, int]:
        """Delete the questions answered for this user and/or session (both must match when
        both are given) with their retrievals, answers, citations and feedback, and the
        feedback the user gave. In a write transaction; returns (queries, feedback rows)."""

    @abstractmethod
    def redact_logs_of_documents(
        self, document_ids: Sequence[str], *, placeholder: str
    ) -> tuple[int, int]:
        """Before these documents are erased: replace with ``placeholder`` the text of every
        logged query that retrieved one of their chunks or was answered from them (its
        embedding dropped), of those answers and of their feedback comments, and delete the
        citations naming the documents. In a write transaction; returns (queries, answers)."""

    # ------------------------------------------------------------------ monitoring (report)
    # Generators over the rows logged at or after ``since`` (an ISO-8601 UTC prefix; "" for
    # all), so a report streams a large log instead of loading it. Read in a read transaction.

    @abstractmethod
    def monitoring_query_rows(self, since: str) -> Iterator[tuple[str, str, str, str, int]]:
        """(id, timestamp, query_text, metadata JSON, retrievals) of each logged query."""

    @abstractmethod
    def monitoring_generation_rows(self, since: str) -> Iterator[tuple[Any, ...]]:
        """(id, query_id, timestamp, generator, input_tokens, output_tokens, cost_usd,
        embed_ms, retrieve_ms, generate_ms) of each answer."""

    @abstractmethod
    def monitoring_feedback_rows(self, since: str) -> Iterator[tuple[str, str, str, float]]:
        """(query_id, timestamp, kind, value) of each feedback, with its answer's query."""

    @abstractmethod
    def monitoring_document_rows(self, since: str) -> Iterator[tuple[str, str, int]]:
        """(document id, source_path, queries since that retrieved one of its chunks) of
        every stored document, 0 included."""

    # ------------------------------------------------------------------ fitted embedders

    @abstractmethod
    def save_model_files(self, model_name: str, version: str, files: dict[str, bytes]) -> None:
        """Keep the files an embedder fitted on the corpus saved for ``version`` where every
        process that opens the store finds them (a folder store: its ``models/`` folder,
        which the store writes itself, so nothing to do here)."""

    @abstractmethod
    def model_files(self, model_name: str, version: str) -> dict[str, bytes]:
        """The files saved for a model version by :meth:`save_model_files` ({} if none)."""

    @abstractmethod
    def drop_model_files_except(self, model_name: str, version: str | None) -> None:
        """Delete the files saved for every other version of a model (an erasure: an old
        vocabulary holds the terms of erased documents). In a write transaction."""

    # ------------------------------------------------------------------ copies

    @abstractmethod
    def dump_rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        """Every row of one of :data:`TABLES`, in its columns (vectors as bytes)."""

    @abstractmethod
    def load_rows(self, table: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Insert rows as :meth:`dump_rows` gives them (in a write transaction; a bookkeeping
        key already there takes the row's value)."""

    # ------------------------------------------------------------------ governance

    @abstractmethod
    def append_audit(self, row: tuple[str, str, str, str, str]) -> None:
        """(id, at, actor, action, detail JSON) of one audit entry (inside a transaction)."""

    @abstractmethod
    def audit_rows(self, since: str) -> list[tuple[Any, ...]]:
        """(id, at, actor, action, detail) of the audit entries at or after ``since``, oldest
        first."""

    @abstractmethod
    def delete_audit_before(self, cutoff: str) -> int:
        """Delete the audit entries older than ``cutoff`` (inside a transaction); how many."""

    @abstractmethod
    def document_paths(self) -> list[tuple[str, str]]:
        """(id, source_path) of every document (what ``ingest --sync`` compares)."""

    @abstractmethod
    def record_ingest_run(self, row: tuple[Any, ...]) -> None:
        """(id, started_at, sources JSON, source digest, embedder, embedder version) of an
        ingest run, once (a second call with its id changes nothing)."""

    @abstractmethod
    def ingest_run_rows(self, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The rows of these ingest runs, oldest first."""

    @abstractmethod
    def close_document_versions(
        self, ids: Sequence[str], *, at: str, run: str | None, ended_by: str
    ) -> None:
        """End the current version of each document (``ended_by``: "updated" or "deleted"),
        recording one from its stored row if none was kept. Before its row changes."""

    @abstractmethod
    def open_document_versions(
        self, rows: Sequence[tuple[str, str | None, str]], *, at: str, run: str | None
    ) -> None:
        """A new current version per (document id, content hash, source path)."""

    @abstractmethod
    def document_version_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        """(version, content_hash, source_path, written_at, written_by, replaced_at,
        replaced_by, ended_by) of every kept version of a document, oldest first."""

    @abstractmethod
    def forget_document_versions(self, document_ids: Sequence[str]) -> None:
        """Delete every kept version of these documents (erasure: their ids, hashes and
        source paths must go too)."""

    @abstractmethod
    def lineage_chunk_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        """(chunk id, index, text hash, model, model version, vector id, embedded at)."""

    @abstractmethod
    def lineage_retrieval_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        """(query id, timestamp, model, chunk id, rank, score, query metadata)."""

    @abstractmethod
    def lineage_answer_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        """(answer id, query id, timestamp, generator, prompt name, prompt version, trace id,
        cited chunk id, citation rank) of every answer citing the document."""

    @abstractmethod
    def lineage_query_rows(self, query_id: str) -> list[tuple[Any, ...]]:
        """(timestamp, model, query metadata, chunk id, document id, rank, score)."""

    @abstractmethod
    def chunk_document_id(self, chunk_id: str) -> str | None:
        """The document a chunk belongs to (None: no such chunk)."""

    # ------------------------------------------------------------------ upkeep

    @abstractmethod
    def schema_version(self) -> int:
        """The last migration applied."""

    @abstractmethod
    def schema_sql(self) -> str:
        """The schema as text, in a stable order (compared with a checked-in snapshot)."""

    @abstractmethod
    def integrity_check(self) -> str:
        """The database's own consistency check: "ok" or what is wrong."""

    @abstractmethod
    def lexical_index_check(self) -> None:
        """Check the BM25 index against the chunks; raises if they disagree (a write)."""

    @abstractmethod
    def lexical_index_bytes(self) -> int:
        """Bytes of the BM25 index (0 if the database cannot tell)."""

    @abstractmethod
    def compact_lexical_index(self) -> None:
        """Rewrite the BM25 index so deleted chunks leave no terms in it."""

    @abstractmethod
    def erase_free_space(self) -> str:
        """Leave no deleted content in the database's storage; returns why that could not
        complete ("" if it did). Call outside a transaction."""

    @abstractmethod
    def reclaim_space(self) -> None:
        """Give the space of deleted rows back (after a purge of the query log)."""

    @abstractmethod
    def copy_to(self, target: Path) -> None:
        """A consistent copy of the database as one SQLite file at ``target`` (a bundle's)."""

    @abstractmethod
    def is_storage_failure(self, exc: BaseException) -> bool:
        """True for errors caused by the storage under the database (full, I/O error)."""

    @abstractmethod
    def open_failure(self, exc: Exception) -> Exception | None:
        """What a failure while opening the store means, as a named error (a full disk, a
        database that is not a store's), or None to raise it as it is."""

    @abstractmethod
    def storage_failure(self, exc: BaseException, *, outcome: str) -> StorageError:
        """A storage failure as a StorageError naming the database and the ``outcome``."""
