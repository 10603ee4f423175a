"""The store: a database (the source of truth, vectors included) + one FAISS index per model.

:class:`Store` is the facade the other layers use: it holds the backend (the database behind
:class:`~mlflow_rag.store.backend.Backend`), the thread lock and the store's lock file, checks
what callers pass, and hands each job to its module:

- ``opening``: refuse what is not a store, open its backend (checked or migrated);
- ``models``: the embedding models (``ModelRegistry``), read once per generation;
- ``writes``: documents, chunks and vectors in one transaction per call;
- ``index_cache``: the FAISS index lifecycle (load, verify, replay, rebuild, persist);
- ``views`` and the backend: reads and search, hydrated from one read snapshot;
- ``query_log``: queries and what they retrieved, and retention;
- ``answer_log``: answers with their query, citations and feedback (retention: the query's);
- ``integrity`` and ``bundle``: ``verify``, ``snapshot`` and ``verify_bundle``;
- ``layout``: the files and folders of a store; ``checks``: vector and request checks.

Every write is one write transaction that bumps the store's generation. Index files are
derived: each is stamped (in the manifest) with the generation it reflects, and opening or
searching brings it up to date by replaying deletions and additions from the database, or
rebuilds it when it is missing, corrupt or foreign.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mlflow_rag import codec
from mlflow_rag.errors import (
    ChunkNotFound,
    DocumentNotFound,
    InvalidInput,
    RagError,
    UnknownChoice,
)
from mlflow_rag.index.choose import INDEX_TYPES, choose_index
from mlflow_rag.store import (
    answer_log,
    audit,
    bundle,
    integrity,
    layout,
    lineage,
    opening,
    retrieval,
    views,
    writes,
)
from mlflow_rag.store.access import Principal, restrict, visible
from mlflow_rag.store.backend import Backend, utc_now
from mlflow_rag.store.checks import clean_query, clean_vectors
from mlflow_rag.store.files import (
    FileStamp,
    confined,
    exclusive_lock,
)
from mlflow_rag.store.filters import Plan, as_plan
from mlflow_rag.store.index_cache import IndexCache
from mlflow_rag.store.integrity import EMBED_CHECK_MIN_COSINE
from mlflow_rag.store.manifest import Manifest
from mlflow_rag.store.models import ModelFiles, ModelRegistry
from mlflow_rag.store.monitoring_rows import MonitoringRows, read_monitoring
from mlflow_rag.store.query_log import purge_query_log, write_query_log
from mlflow_rag.store.request import Retrieval
from mlflow_rag.types import (
    ChunkView,
    DocumentRecord,
    DocumentVersion,
    DocumentView,
    Hit,
    IngestRun,
    ModelInfo,
    StoreStats,
    WriteReport,
)

log = logging.getLogger("mlflow_rag.store")


_T = TypeVar("_T")


class Store:
    """Open with :meth:`Store.open`; use as a context manager so indexes are persisted."""

    def __init__(
        self, root: Path, backend: Backend, *, read_only: bool, immutable: bool, mmap: bool = False,
        verified_files: Mapping[str, FileStamp] | None = None, location: str | None = None,
        name: str | None = None,
    ) -> None:
        self.root = root
        # What users call the store: its folder, or its database (without a password).
        self.location = location or str(root)
        self.is_database = location is not None
        self.name = name or root.name  # a folder's name, or a database store's schema
        self._backend: Backend | None = backend
        self.read_only = read_only or immutable
        self.immutable = immutable
        self._opened_as: str | Path = root
        self.mmap = mmap
        self._lock = threading.RLock()
        # The thread holding the store's lock file through this object (writer_lock, flush):
        # nested uses by that thread do not lock again (flock would wait for itself).
        self._file_lock_owner: int | None = None
        self._registry = ModelRegistry(root, backend)
        self.orphan_hits = 0  # index hits without a row: must stay 0 (readers see snapshots)
        self.store_id = backend.get_meta("store_id")
        self._index_cache = IndexCache(root, backend, store_id=self.store_id, mmap=mmap,
                                       verified_files=verified_files)
        self._model_files = ModelFiles(backend)

    @property
    def events(self) -> list[str]:
        """Rebuilds and repairs (why an index was rebuilt, an incomplete erasure), in order."""
        return self._index_cache.events

    @property
    def manifest(self) -> Manifest | None:
        """The manifest as this store last read or wrote it."""
        return self._index_cache.manifest

    # ----------------------------------------------------------------- open / close

    @classmethod
    def open(
        cls, path: str | Path, *, create: bool = False, read_only: bool = False,
        immutable: bool = False, verify_files: bool = False, mmap: bool = False,
    ) -> Store:
        """Open the store at ``path``.

        ``create``: make it if missing. ``read_only``: never write (readers, serving).
        ``immutable``: a bundle nobody writes; ``verify_files`` checks every file against the
        hashes in its manifest first (bundles record them) and refuses a mismatch.
        ``mmap``: map the vectors of index files (flat, HNSW; IVF's quantizer) read-only
        instead of reading them into private memory, so processes that open the same files
        share one copy through the page cache. Only with ``read_only`` or ``immutable``: the
        file is still hashed first, and an index that must take newer rows gets a private
        copy (a map is never written).
        """
        if mmap and not (read_only or immutable):
            raise InvalidInput(
                "mmap=True needs read_only=True or immutable=True: a writable store rewrites "
                "its index files"
            )
        if opening.is_database_location(path):
            store = cls._open_database(str(path), create=create, read_only=read_only,
                                       immutable=immutable, verify_files=verify_files, mmap=mmap)
            store._opened_as = str(path)  # with its password, unlike location: audit reopens it
            return store
        root = Path(path)
        opening.check_exists(root, create=create and not (read_only or immutable))
        verified = bundle.verify_bundle(root) if verify_files else {}
        backend = opening.open_backend(root, read_only=read_only, immutable=immutable)
        with opening.closed_on_failure(backend):
            store = cls(root, backend, read_only=read_only, immutable=immutable, mmap=mmap,
                        verified_files=verified)
            store._check_stored_paths()
            if verify_files:
                bundle.check_identity(store.manifest, store_id=store.store_id,
                                      generation=backend.generation(),
                                      db_path=root / layout.DB_FILE)
        return store

    @classmethod
    def _open_database(
        cls, location: str, *, create: bool, read_only: bool, immutable: bool,
        verify_files: bool, mmap: bool,
    ) -> Store:
        if immutable or verify_files:
            raise InvalidInput(
                "immutable and verify_files are for bundles (folders); a store in a database "
                "is opened read_only instead"
            )
        root, backend, name = opening.open_database(location, create=create, read_only=read_only)
        with opening.closed_on_failure(backend):
            store = cls(root, backend, read_only=read_only, immutable=False, mmap=mmap,
                        location=backend.location, name=name)
            store._check_stored_paths()
        return store

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(flush=exc[0] is None)

    def close(self, *, flush: bool = True) -> None:
        if self._backend is None:
            return
        try:
            if flush and not self.read_only:
                self.flush()
        finally:
            self._backend.close()
            self._backend = None
            self._index_cache.clear()

    @property
    def backend(self) -> Backend:
        """The database this store keeps its source of truth in."""
        if self._backend is None:
            raise RagError("the store is closed")
        return self._backend

    def _require_writable(self) -> None:
        if self.read_only:
            raise RagError(f"{self.location} is open read-only")

    def _check_stored_paths(self) -> None:
        """Refuse the open if a path derived from stored data would leave the store: a
        model's slug (it names the index file and the embedder's state folder), or a symlink
        under ``index/``, ``models/`` or at ``manifest.json`` that leads outside."""
        with self._lock, self.backend.read_transaction():
            self._registry.refresh(self.backend.generation())
        layout.check_folders_confined(self.root, what="store")
        confined(self.root, layout.MANIFEST_FILE, what="manifest")

    # ----------------------------------------------------------------- the writer lock

    @contextlib.contextmanager
    def _file_lock(
        self, *, wait: bool = True, on_busy: Callable[[str], None] | None = None,
        record_holder: bool = False,
    ) -> Iterator[None]:
        me = threading.get_ident()
        if self._file_lock_owner == me:
            yield
            return
        with exclusive_lock(self.root / layout.LOCK_FILE, wait=wait, on_busy=on_busy,
                            record_holder=record_holder):
            self._file_lock_owner = me
            try:
                yield
            finally:
                self._file_lock_owner = None

    @contextlib.contextmanager
    def writer_lock(
        self, *, wait: bool = True, on_busy: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        """Hold the store's lock across several writes that must not interleave with another
        process's (an ingest: fit, save and write). Other processes' writer locks, flushes
        and snapshots wait; readers never do. If another process holds it, ``on_busy(holder)``
        is called, then this waits, or raises :class:`~mlflow_rag.errors.StoreBusy` at once
        with ``wait=False``. Re-entrant within the thread that holds it."""
        self._require_writable()
        with self._file_lock(wait=wait, on_busy=on_busy, record_holder=True):
            yield

    # ----------------------------------------------------------------- models

    def models(self) -> list[ModelInfo]:
        """Embedding models in this store, with their vector counts and effective index type."""
        with self._lock, self.backend.read_transaction():
            generation = self.backend.generation()
            self._registry.refresh(generation)
            return self._registry.counted(generation)

    def model(self, name: str | None = None) -> ModelInfo:
        """The named model, or the only one. Errors list the models the store has."""
        with self._lock, self.backend.read_transaction():
            self._registry.refresh(self.backend.generation())
            return self._registry.get(name)

    def ensure_model(
        self, name: str, dimension: int, *, embedder: str | None = None,
        model_version: str | None = None, index_type: str | None = None,
        index_params: Mapping[str, Any] | None = None,
    ) -> ModelInfo:
        """Register an embedding model (or check an existing one has this dimension)."""
        self._require_writable()
        if index_type is not None and index_type not in INDEX_TYPES:
            raise UnknownChoice("index type", index_type, INDEX_TYPES)
        if not isinstance(dimension, int) or dimension < 1:
            raise InvalidInput(f"dimension must be a positive integer, got {dimension!r}")
        if index_type is not None:
            choose_index(index_type, 0, dimension, index_params)  # validate parameters early
        with self._lock:
            with self.backend.write_transaction() as generation:
                self._registry.register(
                    name, dimension, generation=generation, embedder=embedder,
                    model_version=model_version, index_type=index_type, index_params=index_params,
                )
            self._registry.invalidate()
            if index_type is not None:
                self._index_cache.forget(name)  # rebuilt with the new settings on next use
            return self.model(name)

    def model_dir(self, name: str) -> Path:
        """Where the embedder of model ``name`` keeps the state it fitted at ingest (inside the
        store): its slug's folder, or for a model not registered yet the folder it will get
        (a first fit is saved before the model's dimension is known and registered)."""
        with self._lock, self.backend.read_transaction():
            self._registry.refresh(self.backend.generation())
            slug = self._registry.slug_for(name)
            info = self._registry.by_name.get(name)
        path = layout.model_dir(self.root, slug=slug, name=name)
        if self.is_database and info is not None and info.model_version:
            self._model_files.pull(name, info.model_version, path)
        return path

    def publish_model_state(self, name: str, version: str) -> None:
        """Make the state an embedder just saved in :meth:`model_dir` (for ``version``) what
        every process opening this store loads with that version's vectors. Call it before
        the vectors commit. A folder store's processes read the folder itself."""
        if self.is_database:
            self._model_files.push(name, version, self.model_dir(name))

    # ----------------------------------------------------------------- writes

    def write(
        self, records: Sequence[DocumentRecord], *, skip_unchanged: bool = True,
        delete: Sequence[str] = (), run: IngestRun | None = None,
    ) -> WriteReport:
        """Add or replace documents with their chunks and vectors, and delete the documents
        ``delete`` names, in one transaction; ``run`` (the ingest run writing) is recorded in
        each written or deleted document's version history.

        A document whose content hash and metadata equal the stored ones is unchanged and
        skipped; one that differs replaces its chunks and vectors (its previous version is
        kept in its history: :meth:`document_history`).
        """
        self._require_writable()
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InvalidInput(f"document id {dup!r} appears twice in one write")
        both = sorted(set(ids) & set(delete))
        if both:
            raise InvalidInput(f"document id {both[0]!r} is both written and deleted in one write")
        with self._lock:
            self._registry.refresh(self.backend.generation())
            prepared = [writes.prepare(record, self._registry.get) for record in records]
            writes.clean_vectors_of(prepared, self._registry.by_name)
        with self._lock:
            written = writes.write_documents(
                self.backend, prepared, skip_unchanged=skip_unchanged,
                has_index=lambda name: name in self._index_cache.indexes,
                delete_ids=list(dict.fromkeys(delete)), run=run,
            )
        # Replaced or deleted vectors: the index replays the deletion log on its next use.
        if not written.report.updated and not written.report.deleted:
            with self._lock:
                self._index_cache.advance(written.report.generation, written.added,
                                          written.fresh, self._registry.by_name)
        return written.report

    def add_vectors(
        self, model_name: str, chunk_ids: Sequence[str], vectors: Any, *,
        model_version: str | None = None, metadata: Sequence[Mapping[str, Any]] | None = None,
        replace: bool = False,
    ) -> int:
        """Add one model's vectors for existing chunks (e.g. a second embedder on a store)."""
        self._require_writable()
        info = self.model(model_name)
        if len(set(chunk_ids)) != len(chunk_ids):
            dup = next(c for c in chunk_ids if list(chunk_ids).count(c) > 1)
            raise InvalidInput(f"chunk id {dup!r} appears twice in one add_vectors call")
        matrix = clean_vectors(vectors, info.dimension)
        if len(matrix) != len(chunk_ids):
            raise InvalidInput(f"{len(matrix)} vectors for {len(chunk_ids)} chunk ids")
        per_chunk = [codec.metadata_json(m) for m in metadata] if metadata else None
        with self._lock:
            return writes.add_model_vectors(
                self.backend, model_name, chunk_ids, matrix,
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
        self._require_writable()
        self.model(model_name)  # a clear error for an unknown model
        if len(set(chunk_ids)) != len(chunk_ids):
            raise InvalidInput("a chunk id appears twice in one replace_model_vectors call")
        matrix = clean_vectors(vectors, dimension)
        if len(matrix) != len(chunk_ids):
            raise InvalidInput(f"{len(matrix)} vectors for {len(chunk_ids)} chunk ids")
        with self._lock:
            count = writes.replace_model_vectors(
                self.backend, model_name, chunk_ids, matrix, dimension=dimension,
                model_version=model_version,
            )
            self._registry.invalidate()
            with self.backend.read_transaction():
                generation = self.backend.generation()
                self._registry.refresh(generation)
                self._index_cache.rebuilt_for_new_space(self._registry.by_name[model_name], generation)
        return count

    def vectors_on_documents(self, document_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(document id, chunk text hash, model name) of every vector on these documents."""
        with self._lock:
            rows = self.backend.embeddings_of_documents(list(document_ids))
        return [(row[0], row[1], row[2]) for row in rows]

    def chunks_with_vectors(self, model_name: str) -> list[tuple[str, str, str]]:
        """(chunk id, document id, text) of every chunk holding a vector of this model."""
        with self._lock:
            return self.backend.chunks_with_vectors(model_name)

    def delete(self, document_id: str, *, erase: bool = True) -> None:
        """Delete a document; its chunks and vectors cascade, and leave the index.

        ``erase`` (the default) then removes its bytes from every file of the store
        (:meth:`erase_deleted`); deleting many documents, pass ``erase=False`` and call
        :meth:`erase_deleted` once at the end."""
        self._require_writable()
        with self._lock, self.backend.write_transaction():
            if self.backend.document_row(document_id) is not None:  # its history says so
                self.backend.close_document_versions([document_id], at=utc_now(), run=None,
                                                     ended_by="deleted")
            if not self.backend.delete_document(document_id):
                raise DocumentNotFound(f"no document with id {document_id!r} in {self.location}")
            audit.record(self.backend, "delete", {"document_id": document_id})
        if erase:
            self.erase_deleted()

    def erase_deleted(self) -> None:
        """Remove what deleted rows leave in the files: their terms in the FTS5 segments (a
        full merge), their vectors in the index files (rewritten), free pages (zeroed by
        secure_delete; stores made before it get one VACUUM) and old pages in the WAL
        (checkpointed and truncated). Costs a rewrite of the FTS index and of the index files.

        A reader holding a snapshot keeps the WAL from being truncated: the old pages then stay
        there until a later checkpoint, and ``events`` says so."""
        self._require_writable()
        with self._lock:
            try:
                self.backend.compact_lexical_index()
                self.flush()
                problem = self.backend.erase_free_space()
            except Exception as exc:
                if self.backend.is_storage_failure(exc):
                    raise self.backend.storage_failure(
                        exc, outcome="the deletion is committed but its bytes are not "
                        "yet erased; run the delete's erase again (Store.erase_deleted)",
                    ) from exc
                raise
        if problem:
            message = f"erasure incomplete: {problem}"
            self.events.append(message)
            log.warning("%s: %s", self.location, message)

    # ----------------------------------------------------------------- indexes

    def flush(self) -> None:
        """Bring every model's index up to date and persist it atomically, then the manifest."""
        if self.read_only:
            return
        with self._file_lock(), self._lock:
            self._index_cache.persist(self._models_at)

    def _models_at(self, generation: int) -> Mapping[str, ModelInfo]:
        self._registry.refresh(generation)
        return self._registry.by_name

    def load_indexes(self) -> None:
        """Load every model's index now (checked, and synced to the current generation), so
        the first search does not pay for it: a server does this before it answers."""
        with self._lock, self.backend.read_transaction():
            generation = self.backend.generation()
            self._registry.refresh(generation)
            for info in self._registry.by_name.values():
                self._index_cache.index_for(info, generation)

    def rebuild_index(self, model: str | None = None) -> None:
        """Drop the in-memory index and rebuild it from SQLite (then persist if writable)."""
        with self._lock, self.backend.read_transaction():
            generation = self.backend.generation()
            self._registry.refresh(generation)
            info = self._registry.get(model)
            self._index_cache.build(info, generation, "asked for")
        self.flush()

    # ----------------------------------------------------------------- reads

    def document_states(self, ids: Sequence[str]) -> dict[str, tuple[str | None, dict[str, Any]]]:
        with self._lock:
            return {
                k: (h, codec.loads_object(m))
                for k, (h, m) in self.backend.document_states(list(ids)).items()
            }

    def document_sources(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """id -> (source_path, content_hash) of the stored documents among ``ids``."""
        with self._lock:
            return self.backend.document_sources(list(ids))

    def document_paths(self) -> list[tuple[str, str]]:
        """(id, source_path) of every stored document."""
        with self._lock:
            return self.backend.document_paths()

    def document_ids_by_source(self, source_paths: Sequence[str]) -> dict[str, list[str]]:
        """source_path -> ids of the stored documents that came from it."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for path, doc_id in self.backend.documents_by_source(list(source_paths)):
                out.setdefault(path, []).append(doc_id)
        return out

    def cached_vectors(self, model_name: str, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """text_hash -> stored vector, for texts this model embedded before (embedding cache)."""
        with self._lock:
            blobs = self.backend.cached_vectors(model_name, list(text_hashes))
        return {h: codec.blob_to_vector(b) for h, b in blobs.items()}

    def chunks_without_vectors(
        self, model_name: str, document_ids: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        with self._lock:
            return self.backend.chunks_without_vectors(model_name, list(document_ids))

    def vectors_for_chunks(self, model_name: str, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            return self.backend.vectors_for_chunks(model_name, list(chunk_ids))

    def get_document(
        self, document_id: str, *, include_pii: bool = False, principal: Principal | None = None,
    ) -> DocumentView:
        """A document with all its chunks in order. One ``principal`` may not see is "not
        found", in the words used for a document that does not exist."""
        with self._lock, self.backend.read_transaction():
            row = self.backend.document_row(document_id)
            if row is None or not visible(codec.loads_object(row[6]), principal):
                raise DocumentNotFound(f"no document with id {document_id!r} in {self.location}")
            chunks = tuple(views.chunk_view(r) for r in self.backend.chunk_rows(document_id))
        return views.document_view(row, chunks, include_pii=include_pii)

    def document_history(
        self, document_id: str, *, principal: Principal | None = None,
    ) -> list[DocumentVersion]:
        """Every kept version of a document, oldest first (the current one last, open). For
        a principal, only a document it may see now (a deleted one is "not found")."""
        with self._lock, self.backend.read_transaction():
            row = self.backend.document_row(document_id)
            versions = lineage.history(self.backend, document_id)
            hidden = principal is not None and (
                row is None or not visible(codec.loads_object(row[6]), principal))
        if hidden or (row is None and not versions):
            raise DocumentNotFound(f"no document with id {document_id!r} in {self.location}")
        return versions

    def lineage(self, item_id: str) -> dict[str, Any]:
        """The chain of a document, chunk or logged query id (:mod:`mlflow_rag.store.lineage`):
        for whoever holds the store, never filtered by principal."""
        with self._lock, self.backend.read_transaction():
            return lineage.lineage(self.backend, item_id, location=self.location)

    def expand_context(
        self, chunk_id: str, *, n: int = 1, principal: Principal | None = None,
    ) -> list[ChunkView]:
        """The chunk and up to ``n`` neighbours on each side within its document, in order.
        Neighbours share the chunk's document, so they are visible exactly when it is; a
        chunk ``principal`` may not see is "not found", as one that does not exist."""
        if not isinstance(n, int) or n < 0:
            raise InvalidInput(f"n must be a non-negative integer, got {n!r}")
        with self._lock, self.backend.read_transaction():
            rows = self.backend.neighbour_rows(chunk_id, n)
            if rows and principal is not None:
                document = self.backend.document_row(rows[0][1])
                if document is None or not visible(codec.loads_object(document[6]), principal):
                    rows = []
        if not rows:
            raise ChunkNotFound(f"no chunk with id {chunk_id!r} in {self.location}")
        return [views.chunk_view(r) for r in rows]

    def find_documents(
        self, filters: str | Mapping[str, Any] | Plan | None = None, *, limit: int = 100,
        include_pii: bool = False, principal: Principal | None = None,
    ) -> list[DocumentView]:
        """Documents with at least one chunk matching the filter (metadata, dates, types)
        among those ``principal`` may see; ``filters`` is JSON text, a mapping or a compiled
        plan (not compiled again)."""
        plan = restrict(as_plan(filters), principal)
        with self._lock:
            rows = self.backend.find_document_rows(plan, limit)
        return [views.document_view(r, (), include_pii=include_pii) for r in rows]

    def lexical_index_bytes(self) -> int:
        """Bytes of the full-text (BM25) index's pages; 0 if this SQLite cannot tell."""
        with self._lock:
            return self.backend.lexical_index_bytes()

    def stats(self) -> StoreStats:
        models = self.models()
        with self._lock, self.backend.read_transaction():
            counts = self.backend.counts()
            generation = self.backend.generation()
            version = self.backend.schema_version()
            types = self.backend.source_type_counts()
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return StoreStats(
            documents=counts["documents"], chunks=counts["chunks"],
            embeddings=counts["embeddings"], queries=counts["queries"],
            retrievals=counts["retrievals"], generation=generation, schema_version=version,
            bytes_on_disk=size, models=tuple(models), source_types=types,
        )

    # ----------------------------------------------------------------- search

    def dense_search(
        self, vector: Any, *, model: str | None = None, k: int = 10,
        filters: str | Mapping[str, Any] | Plan | None = None, include_pii: bool = False,
    ) -> list[Hit]:
        """Top-k chunks by inner product with ``vector`` (L2-normalised here), hydrated.

        With ``filters`` (JSON text, a mapping or a compiled plan), only matching chunks are
        ranked, exactly (pre-filtering).
        """
        return self.dense(vector, Retrieval.parse(k=k, filters=filters), model=model,
                          include_pii=include_pii)

    def dense(
        self, vector: Any, request: Retrieval, *, model: str | None = None,
        include_pii: bool = False,
    ) -> list[Hit]:
        """:meth:`dense_search` for a request parsed already (``k`` checked, filter compiled)."""
        plan = request.plan
        with self._lock, self.backend.read_transaction():
            generation = self.backend.generation()
            self._registry.refresh(generation)
            info = self._registry.get(model)
            query = clean_query(vector, info.dimension)
            index = self._index_cache.index_for(info, generation)
            keys = self._index_cache.vector_keys(info.name, generation) if plan is not None else None
            found = retrieval.dense(self.backend, index, query, request.k, plan=plan, keys=keys)
        hits, orphans = views.dense_hits(found.ids, found.scores, found.rows,
                                         include_pii=include_pii)
        self.orphan_hits += orphans  # cannot happen inside one snapshot: must stay 0
        return hits

    def lexical_search(
        self, text: str, *, k: int = 10, filters: str | Mapping[str, Any] | Plan | None = None,
        include_pii: bool = False,
    ) -> list[Hit]:
        """BM25 (SQLite FTS5) over chunk text, pre-filtered like dense search."""
        return self.lexical(text, Retrieval.parse(k=k, filters=filters), include_pii=include_pii)

    def lexical(self, text: str, request: Retrieval, *, include_pii: bool = False) -> list[Hit]:
        """:meth:`lexical_search` for a request parsed already (``k`` checked, filter compiled)."""
        with self._lock:
            rows = self.backend.bm25_rows(text, request.k, request.plan)
        return views.lexical_hits(rows, include_pii=include_pii)

    # ----------------------------------------------------------------- query log

    def log_query(
        self, text: str, hits: Sequence[Hit], *, model_name: str | None = None,
        embedding: np.ndarray | None = None, metadata: Mapping[str, Any] | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> str:
        """Record a query and what it retrieved (queries + retrievals). Returns the query id."""
        self._require_writable()
        with self._lock:
            return write_query_log(
                self.backend, text, hits, model_name=model_name, embedding=embedding,
                metadata=metadata, redact=redact,
            )

    def audit(self, action: str, detail: Mapping[str, Any]) -> None:
        """An audit entry for something that changed nothing (an export, a search), in a
        transaction of its own; nothing when the audit is off. A store opened read-only is
        opened again, writable, for the entry."""
        if self.immutable or not audit.is_enabled(self.backend):
            return  # a bundle is a sealed copy: never written, audited where it is served
        if not self.read_only:
            with self._lock, self.backend.immediate_transaction():
                audit.record(self.backend, action, detail)
            return
        with Store.open(self._opened_as) as writable:
            writable.audit(action, detail)

    def delete_queries_older_than(self, days: float) -> int:
        """Retention: delete query logs older than ``days`` and reclaim the space."""
        self._require_writable()
        with self._lock:
            return purge_query_log(self.backend, days)

    # ----------------------------------------------------------------- answers

    def log_answer(
        self, *, output_id: str, query_id: str, question: str, hits: Sequence[Hit], model_name: str | None,
        embedding: np.ndarray | None, query_metadata: Mapping[str, Any],
        stats: answer_log.GenerationStats, answer_text: str | None,
        citations: Sequence[tuple[str, str]], session_id: str | None = None,
        user_id: str | None = None, trace_id: str | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        """Record an answer (``output_id``) with its query (``query_id``) and retrievals in
        one transaction (answer_log)."""
        self._require_writable()
        with self._lock:
            answer_log.write_answer(
                self.backend, output_id=output_id, query_id=query_id, question=question, hits=hits,
                model_name=model_name, embedding=embedding, query_metadata=query_metadata,
                stats=stats, answer_text=answer_text, citations=citations,
                session_id=session_id, user_id=user_id, trace_id=trace_id, redact=redact)

    def answer_record(self, output_id: str) -> answer_log.StoredAnswer:
        """An answer as recorded, with its citations and feedback."""
        with self._lock:
            return answer_log.read_answer(self.backend, output_id)

    def read_monitoring(self, since: str, consume: Callable[[MonitoringRows], _T]) -> _T:
        """``consume`` the query log, answers, feedback and per-document retrieval counts
        logged at or after ``since`` ("" for all) in one snapshot (``mlflow-rag report``)."""
        with self._lock:
            return read_monitoring(self.backend, since, consume)

    def add_feedback(
        self, output_id: str, *, kind: str, value: float, comment: str | None = None,
        user_id: str | None = None, redact: Callable[[str], str] | None = None,
    ) -> answer_log.Feedback:
        """Record feedback on an answer (``kind`` "score" or "thumbs")."""
        self._require_writable()
        with self._lock:
            return answer_log.write_feedback(self.backend, output_id, kind=kind, value=value,
                                             comment=comment, user_id=user_id, redact=redact)

    # ----------------------------------------------------------------- checks and bundles

    def verify(
        self, *, sample: int = 50, seed: int = 0,
        embedders: Mapping[str, Callable[[Sequence[str]], np.ndarray]] | None = None,
        embed_sample: int = 8, min_cosine: float = EMBED_CHECK_MIN_COSINE,
    ) -> dict[str, Any]:
        """Integrity report: SQLite and FTS checks, then per model its index against SQLite
        (ids equal, ``sample`` vectors find themselves) and, for the models in ``embedders``
        (model name -> a function embedding texts as that model's recorded embedder does),
        ``embed_sample`` re-embedded vectors (:func:`mlflow_rag.store.integrity.check_model`).

        FTS5 runs its check as a write (``INSERT ... 'integrity-check'``), so a read-only or
        immutable store skips it; SQLite's own ``integrity_check`` still covers the file."""
        report: dict[str, Any] = {"integrity_check": self.backend.integrity_check(), "models": {}}
        with self._lock, self.backend.read_transaction():
            if not self.read_only:
                self.backend.lexical_index_check()
            generation = self.backend.generation()
            self._registry.refresh(generation)
            for name, info in self._registry.by_name.items():
                index = self._index_cache.index_for(info, generation)
                report["models"][name] = integrity.check_model(
                    self.backend, info, index, sample=sample, seed=seed,
                    embed=(embedders or {}).get(name), embed_sample=embed_sample,
                    min_cosine=min_cosine,
                )
        return report

    def snapshot(self, destination: str | Path) -> Path:
        """A consistent, self-contained copy (a bundle) with file hashes in its manifest.

        If any step fails (disk full, I/O error), what was written of the bundle is removed and
        StorageError names the file that could not be written; this store is not changed.
        """
        return bundle.write_bundle(Path(destination), copy_live_files=self._copy_live_files,
                                   persist_indexes=_persist_indexes)

    def _copy_live_files(self, dest: Path) -> None:
        with self._lock:
            if not self.read_only:
                self.flush()
            # Copy the derived files first: if a writer commits before VACUUM INTO, the
            # snapshot's database is only ahead of them, and opening it replays the difference.
            with self._file_lock():
                bundle.copy_store_files(self.root, dest, self.backend)


def store_address(store: Store) -> str:
    """Where a store is, for records (run tags): a folder's absolute path, or a database's
    location without its password."""
    return store.location if store.is_database else str(Path(store.root).resolve())


def _persist_indexes(root: Path) -> None:
    """Open a copied store and write its indexes as of its own database (a bundle's)."""
    snap = Store.open(root)
    try:
        snap.flush()
    finally:
        snap.close(flush=False)
