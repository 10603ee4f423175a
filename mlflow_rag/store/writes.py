"""Writes: documents with their chunks, metadata fields and vectors in one transaction, and
the store's write methods (:class:`StoreWrites`, a part of the Store facade).

Everything is validated before the transaction starts (:func:`prepare`,
:func:`clean_vectors_of`), so bad input never half-lands; the transaction bumps the store's
generation and takes vector ids from a sequence that never reuses a value, which is what the
index cache replays."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_rag import codec
from mlflow_rag.errors import (
    ChunkNotFound,
    DocumentNotFound,
    InvalidInput,
    InvalidVector,
    RagError,
)
from mlflow_rag.store import audit
from mlflow_rag.store.access import check_stored_labels
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.checks import PII_KEY, clean_vectors
from mlflow_rag.store.core import StoreCore
from mlflow_rag.store.filters import metadata_fields
from mlflow_rag.store.tables import utc_now
from mlflow_rag.types import DocumentRecord, IngestRun, ModelInfo, WriteReport

log = logging.getLogger("mlflow_rag.store")

# A record, its metadata as stored JSON, and per model [name, version, vectors, metadata].
Prepared = tuple[DocumentRecord, str, list[Any]]


@dataclass(frozen=True)
class Written:
    """What a write committed, and the vectors it added per model (for the index cache)."""

    report: WriteReport
    added: dict[str, tuple[list[int], list[np.ndarray]]]
    fresh: set[str]  # models this write started: their whole index is what it added


def write_documents(
    backend: Backend, prepared: Sequence[Prepared], *, skip_unchanged: bool,
    has_index: Callable[[str], bool], delete_ids: Sequence[str] = (),
    run: IngestRun | None = None,
) -> Written:
    """Add or replace the prepared documents and delete ``delete_ids`` in one write
    transaction; each written or deleted document's version history names ``run``."""
    ids = [record.id for record, _, _ in prepared]
    with backend.write_transaction() as generation:
        deleted = _delete_documents(backend, delete_ids, run=run)
        states = backend.document_states(ids)
        now = utc_now()
        todo = [
            (record, metadata, vectors) for record, metadata, vectors in prepared
            if not (skip_unchanged and states.get(record.id) == (record.content_hash, metadata))
        ]
        replaced = [record.id for record, _, _ in todo if record.id in states]
        # Vectors of models this write does not supply, on chunks whose text the new
        # chunks keep: carried over, so replacing a document (re-chunked, or one field
        # changed) never drops another model's vectors of unchanged text.
        carried = _vectors_to_carry(
            backend.embeddings_of_documents(replaced),
            {record.id: {entry[0] for entry in vectors} for record, _, vectors in todo},
        ) if replaced else {}
        _record_versions(backend, todo, replaced, run=run, at=now,
                         wrote=bool(todo) or deleted > 0)
        # Rows for every table are collected first and inserted with one executemany
        # each: per-document statements cost more than the inserts themselves.
        backend.delete_chunks_of(replaced)
        n_chunks = sum(len(record.chunks) for record, _, _ in todo)
        first = backend.allocate_ids(n_chunks)
        n_vectors = sum(len(record.chunks) * len(vectors) for record, _, vectors in todo)
        first_vector = backend.allocate_ids(n_vectors)
        rows = _rows_of(todo, first_chunk=first, first_vector=first_vector, now=now)
        backend.upsert_documents(rows.documents, now=now)
        backend.replace_document_fields(replaced, rows.document_fields)
        backend.insert_chunks(rows.chunks)
        backend.insert_chunk_fields(rows.chunk_fields)
        added = rows.added
        # Models this write starts: their whole index is what this write adds.
        fresh = {name for name in added
                 if not has_index(name) and not backend.has_vectors(name)}
        backend.insert_embeddings(rows.embeddings)
        if carried:
            kept = [(c.id, row) for record, _, _ in todo for c in record.chunks
                    for row in carried.get((record.id, c.text_hash), ())]
            first_kept = backend.allocate_ids(len(kept))
            backend.insert_embeddings((
                (f"{chunk_id}:{model_name}", chunk_id, model_name, version, dim, blob, now,
                 meta, first_kept + i)
                for i, (chunk_id, (model_name, version, dim, blob, meta)) in enumerate(kept)
            ))
    return Written(
        report=WriteReport(
            new=len(todo) - len(replaced), updated=len(replaced),
            unchanged=len(prepared) - len(todo), chunks=n_chunks, vectors=n_vectors,
            generation=generation, deleted=deleted,
        ),
        added=added, fresh=fresh,
    )


@dataclass
class _Rows:
    """A write's rows for each table, in the column order of the backend's insert methods."""

    documents: list[tuple[Any, ...]] = field(default_factory=list)
    document_fields: list[tuple[str, str, Any]] = field(default_factory=list)
    chunks: list[tuple[Any, ...]] = field(default_factory=list)
    chunk_fields: list[tuple[str, str, Any]] = field(default_factory=list)
    embeddings: list[tuple[Any, ...]] = field(default_factory=list)
    added: dict[str, tuple[list[int], list[np.ndarray]]] = field(default_factory=dict)


def _rows_of(todo: Sequence[Prepared], *, first_chunk: int, first_vector: int, now: str) -> _Rows:
    """Every row of a write in one pass over its documents: chunks take ids from
    ``first_chunk`` and vectors from ``first_vector`` in document, model, chunk order.
    Empty metadata (most chunks) is neither encoded nor flattened: its JSON is ``{}`` and it
    has no field rows."""
    rows = _Rows()
    next_chunk, next_vector = first_chunk, first_vector
    for record, metadata, vectors in todo:
        doc_id = record.id
        rows.documents.append((doc_id, record.source_path, record.source_type,
                               record.content_hash, metadata, record.raw_text))
        if record.metadata:
            rows.document_fields.extend(
                [(doc_id, key, value)
                 for key, value in metadata_fields(record.metadata, skip=(PII_KEY,))])
        chunks = record.chunks
        for c in chunks:
            meta = c.metadata
            rows.chunks.append((c.id, doc_id, c.chunk_index, c.chunk_type, c.text, c.start_char,
                                c.end_char, c.token_count,
                                codec.metadata_json(meta) if meta else "{}", c.text_hash,
                                next_chunk))
            next_chunk += 1
            if meta:
                rows.chunk_fields.extend([(c.id, key, value)
                                          for key, value in metadata_fields(meta)])
        for model_name, version, matrix, per_chunk in vectors:
            dim = matrix.shape[1]
            model_ids, blocks = rows.added.setdefault(model_name, ([], []))
            model_ids.extend(range(next_vector, next_vector + len(chunks)))
            blocks.append(matrix)
            for i, c in enumerate(chunks):
                rows.embeddings.append((
                    f"{c.id}:{model_name}", c.id, model_name, version, dim, matrix[i].tobytes(),
                    now, per_chunk[i] if per_chunk else "{}", next_vector + i,
                ))
            next_vector += len(chunks)
    return rows


def prepare(record: DocumentRecord, model_of: Callable[[str], ModelInfo]) -> Prepared:
    """Validate before the transaction starts, so bad input never half-lands.

    Runs once per document of every write: the common case (one chunk, flat metadata, one
    model) takes no detour (a set per document, a second JSON pass) it does not need."""
    doc_id = record.id
    if not doc_id or not isinstance(doc_id, str):
        raise InvalidInput(f"document id must be a non-empty string, got {doc_id!r}")
    chunks = record.chunks
    n_chunks = len(chunks)
    if n_chunks > 1 and len({c.chunk_index for c in chunks}) != n_chunks:
        raise InvalidInput(f"document {doc_id!r} has duplicate chunk_index values")
    for c in chunks:
        text = c.text
        if not text or text.isspace():
            raise InvalidInput(f"document {doc_id!r} chunk {c.chunk_index} has empty text")
    check_stored_labels(record.metadata)
    metadata = codec.metadata_json(record.metadata)
    vectors = []
    for batch in record.vectors:
        info = model_of(batch.model_name)
        if len(batch.vectors) != n_chunks:
            raise InvalidInput(
                f"document {doc_id!r}: {len(batch.vectors)} vectors of {batch.model_name!r} "
                f"for {n_chunks} chunks"
            )
        per_chunk = [codec.metadata_json(m) for m in batch.metadata] if batch.metadata else None
        vectors.append([info.name, batch.model_version or info.model_version, batch.vectors,
                        per_chunk])
    return record, metadata, vectors

def clean_vectors_of(prepared: list[Prepared], models: Mapping[str, ModelInfo]) -> None:
    """Validate and normalise every vector of a write, one numpy pass per model.

    On bad input, each document is checked on its own so the error names it."""
    by_model: dict[str, list[list[Any]]] = {}
    for _, _, vectors in prepared:
        for entry in vectors:
            by_model.setdefault(entry[0], []).append(entry)
    for name, entries in by_model.items():
        dimension = models[name].dimension
        try:
            arrays = [np.asarray(entry[2]) for entry in entries]
            if any(a.ndim != 2 or a.shape[1] != dimension for a in arrays):
                raise InvalidVector("shape")
            matrix = clean_vectors(np.concatenate(arrays), dimension)
        except (RagError, ValueError, TypeError):
            for record, _, vectors in prepared:
                for entry in vectors:
                    if entry[0] == name:
                        clean_vectors(entry[2], dimension, what=f"document {record.id!r} vector")
            raise
        offset = 0
        for entry, array in zip(entries, arrays, strict=True):
            entry[2] = matrix[offset : offset + len(array)]
            offset += len(array)

def add_model_vectors(
    backend: Backend, model_name: str, chunk_ids: Sequence[str], matrix: np.ndarray, *,
    model_version: str | None, metadata: Sequence[str] | None, replace: bool,
) -> int:
    """One model's vectors for existing chunks, in one write transaction (``replace``: their
    old vectors of this model go first). Returns the number inserted."""
    with backend.write_transaction():
        if replace:
            backend.delete_embeddings_for(model_name, chunk_ids)
        try:
            return insert_vectors(backend, model_name, chunk_ids, matrix,
                                  model_version=model_version, metadata=metadata,
                                  now=utc_now())
        except Exception as exc:
            if "FOREIGN KEY" in str(exc):
                raise ChunkNotFound("some chunk ids do not exist in the store") from None
            if "UNIQUE" in str(exc):
                raise InvalidInput(
                    f"some chunks already have a {model_name!r} vector (pass replace=True)"
                ) from None
            raise


def replace_model_vectors(
    backend: Backend, model_name: str, chunk_ids: Sequence[str], matrix: np.ndarray, *,
    dimension: int, model_version: str | None,
) -> int:
    """Every vector of a model replaced in one write transaction, with the model's new
    dimension and version recorded. Returns the number inserted."""
    try:
        with backend.write_transaction():
            backend.delete_model_vectors(model_name)
            backend.update_model_fit(model_name, dimension=dimension,
                                model_version=model_version)
            return insert_vectors(backend, model_name, chunk_ids, matrix,
                                  model_version=model_version, metadata=None, now=utc_now())
    except Exception as exc:
        if "FOREIGN KEY" in str(exc):
            raise ChunkNotFound("some chunk ids do not exist in the store") from None
        raise


def insert_vectors(
    backend: Backend, model_name: str, chunk_ids: Sequence[str], matrix: np.ndarray, *,
    model_version: str | None, metadata: Sequence[str] | None, now: str,
) -> int:
    first = backend.allocate_ids(len(chunk_ids))
    dim = matrix.shape[1]
    backend.insert_embeddings(
        (
            (
                f"{chunk_id}:{model_name}", chunk_id, model_name, model_version, dim,
                matrix[i].tobytes(), now, metadata[i] if metadata else "{}", first + i,
            )
            for i, chunk_id in enumerate(chunk_ids)
        ),
    )
    return len(chunk_ids)


def _vectors_to_carry(
    rows: Sequence[tuple[Any, ...]], supplied: Mapping[str, set[str]]
) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """(document id, text hash) -> [(model, version, dimension, vector, metadata)] of the
    stored vectors a replacement keeps: those of models the new record does not supply."""
    out: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {}
    for doc_id, text_hash, model_name, version, dim, blob, meta in rows:
        if model_name in supplied.get(doc_id, ()):
            continue
        out.setdefault((doc_id, text_hash), {}).setdefault(model_name, (model_name, version, dim,
                                                                        blob, meta))
    return {key: list(models.values()) for key, models in out.items()}


def _delete_documents(backend: Backend, ids: Sequence[str], *, run: IngestRun | None) -> int:
    """Delete documents (a sync's: gone from their sources), their versions ended by ``run``."""
    if not ids:
        return 0
    if run is not None:
        _record_run(backend, run)
    backend.close_document_versions(ids, at=utc_now(), run=run.id if run else None,
                                    ended_by="deleted")
    return sum(backend.delete_document(doc_id) for doc_id in ids)


def _record_versions(
    backend: Backend, todo: Sequence[Prepared], replaced: Sequence[str], *,
    run: IngestRun | None, at: str, wrote: bool,
) -> None:
    """End the versions the write replaces and open one per written document."""
    if run is not None and wrote:
        _record_run(backend, run)
    run_id = run.id if run else None
    backend.close_document_versions(replaced, at=at, run=run_id, ended_by="updated")
    backend.open_document_versions(
        [(record.id, record.content_hash, record.source_path) for record, _, _ in todo],
        at=at, run=run_id)


def _record_run(backend: Backend, run: IngestRun) -> None:
    backend.record_ingest_run((run.id, run.started_at, codec.dumps(list(run.sources)),
                               run.source_digest, run.embedder, run.embedder_version))

class StoreWrites:
    """The store's writes (a part of :class:`~mlflow_rag.store.store.Store`): documents,
    vectors and deletions, each checked whole before its one write transaction."""

    _core: StoreCore

    def write(
        self, records: Sequence[DocumentRecord], *, skip_unchanged: bool = True,
        delete: Sequence[str] = (), run: IngestRun | None = None,
    ) -> WriteReport:
        """Add or replace documents with their chunks and vectors, and delete the documents
        ``delete`` names, in one transaction; ``run`` (the ingest run writing) is recorded in
        each written or deleted document's version history.

        A document whose content hash and metadata equal the stored ones is unchanged and
        skipped; one that differs replaces its chunks and vectors (its previous version is
        kept in its history: ``store.governance.document_history``).
        """
        core = self._core
        core.require_writable()
        ids = [r.id for r in records]
        _check_unique(ids, what="document id", where="one write")
        both = sorted(set(ids) & set(delete))
        if both:
            raise InvalidInput(f"document id {both[0]!r} is both written and deleted in one write")
        with core.lock, without_cycle_collection():
            core.registry.refresh(core.backend.generation())
            prepared = [prepare(record, core.registry.get) for record in records]
            clean_vectors_of(prepared, core.registry.by_name)
        with core.lock, without_cycle_collection():
            written = write_documents(
                core.backend, prepared, skip_unchanged=skip_unchanged,
                has_index=lambda name: name in core.index_cache.indexes,
                delete_ids=list(dict.fromkeys(delete)), run=run,
            )
        # Replaced or deleted vectors: the index replays the deletion log on its next use.
        if not written.report.updated and not written.report.deleted:
            with core.lock:
                core.index_cache.advance(written.report.generation, written.added,
                                         written.fresh, core.registry.by_name)
        return written.report

    def add_vectors(
        self, model_name: str, chunk_ids: Sequence[str], vectors: Any, *,
        model_version: str | None = None, metadata: Sequence[Mapping[str, Any]] | None = None,
        replace: bool = False,
    ) -> int:
        """Add one model's vectors for existing chunks (e.g. a second embedder on a store)."""
        core = self._core
        core.require_writable()
        info = core.model(model_name)
        matrix = _vectors_for(chunk_ids, vectors, info.dimension, where="one add_vectors call")
        per_chunk = [codec.metadata_json(m) for m in metadata] if metadata else None
        with core.lock:
            return add_model_vectors(
                core.backend, model_name, chunk_ids, matrix,
                model_version=model_version or info.model_version, metadata=per_chunk,
                replace=replace,
            )

    def replace_model_vectors(
        self, model_name: str, chunk_ids: Sequence[str], vectors: Any, *, dimension: int,
        model_version: str | None,
    ) -> int:
        """Replace every vector of a model at once (a refitted embedder: a new space, maybe a
        new dimension): one transaction deletes the old vectors, records the model's new
        dimension and version and inserts these. Returns the number inserted."""
        core = self._core
        core.require_writable()
        core.model(model_name)  # a clear error for an unknown model
        matrix = _vectors_for(chunk_ids, vectors, dimension,
                              where="one replace_model_vectors call")
        with core.lock:
            count = replace_model_vectors(
                core.backend, model_name, chunk_ids, matrix, dimension=dimension,
                model_version=model_version,
            )
            core.registry.invalidate()
            with core.backend.read_transaction():
                generation = core.backend.generation()
                core.registry.refresh(generation)
                core.index_cache.rebuilt_for_new_space(core.registry.by_name[model_name],
                                                       generation)
        return count

    def delete(self, document_id: str, *, erase: bool = True) -> None:
        """Delete a document; its chunks and vectors cascade, and leave the index.

        ``erase`` (the default) then removes its bytes from every file of the store
        (:meth:`erase_deleted`); deleting many documents, pass ``erase=False`` and call
        :meth:`erase_deleted` once at the end."""
        core = self._core
        core.require_writable()
        with core.lock, core.backend.write_transaction():
            if core.backend.document_row(document_id) is not None:  # its history says so
                core.backend.close_document_versions([document_id], at=utc_now(), run=None,
                                                     ended_by="deleted")
            if not core.backend.delete_document(document_id):
                raise DocumentNotFound(
                    f"no document with id {document_id!r} in {core.location}")
            audit.record(core.backend, "delete", {"document_id": document_id})
        if erase:
            self.erase_deleted()

    def erase_deleted(self) -> None:
        """Remove what deleted rows leave in the files: their terms in the FTS5 segments (a
        full merge), their vectors in the index files (rewritten), free pages (zeroed by
        secure_delete; stores made before it get one VACUUM) and old pages in the WAL
        (checkpointed and truncated). Costs a rewrite of the FTS index and of the index files.

        A reader holding a snapshot keeps the WAL from being truncated: the old pages then stay
        there until a later checkpoint, and ``events`` says so."""
        core = self._core
        core.require_writable()
        with core.lock:
            try:
                core.backend.compact_lexical_index()
                core.flush()
                problem = core.backend.erase_free_space()
            except Exception as exc:
                if core.backend.is_storage_failure(exc):
                    raise core.backend.storage_failure(
                        exc, outcome="the deletion is committed but its bytes are not "
                        "yet erased; run the delete's erase again (Store.erase_deleted)",
                    ) from exc
                raise
        if problem:
            message = f"erasure incomplete: {problem}"
            core.index_cache.events.append(message)
            log.warning("%s: %s", core.location, message)


@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector for one batch write, then restore it as it was.

    A batch allocates a few container objects per row (tuples, records) and frees them all
    at the end, so the collector finds nothing to collect, yet it ran full passes over every
    live object meanwhile: a tenth of a write's time (benchmarks/RESULTS.md, "Ingest with
    precomputed vectors"). Reference counting still frees everything as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_unique(ids: Sequence[str], *, what: str, where: str) -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise InvalidInput(f"{what} {item!r} appears twice in {where}")
        seen.add(item)


def _vectors_for(chunk_ids: Sequence[str], vectors: Any, dimension: int, *, where: str) -> Any:
    """The checked matrix of ``vectors``, one row per (distinct) chunk id."""
    _check_unique(chunk_ids, what="chunk id", where=where)
    matrix = clean_vectors(vectors, dimension)
    if len(matrix) != len(chunk_ids):
        raise InvalidInput(f"{len(matrix)} vectors for {len(chunk_ids)} chunk ids")
    return matrix
