"""The store: a database (the source of truth, vectors included) + one FAISS index per model.

:class:`Store` is the facade the other layers use. It and its sub-objects share one
:class:`~mlflow_rag.store.core.StoreCore` (the backend behind
:class:`~mlflow_rag.store.backend.Backend`, the thread lock, the store's lock file, the model
registry and the index cache); each job is a module:

- here: open and close, the models, the index lifecycle, document reads and search;
- ``writes``: documents, chunks, vectors and deletions (``StoreWrites``, part of ``Store``);
- ``logs`` (``store.logs``): the query log, answers, feedback, retention and monitoring;
- ``catalog`` (``store.catalog``): what ingest reads to decide what to write;
- ``governance`` (``store.governance``): document versions, lineage and the audit log;
- ``opening``: refuse what is not a store, open its backend (checked or migrated);
- ``models``: the embedding models (``ModelRegistry``), read once per generation;
- ``index_cache``: the FAISS index lifecycle (load, verify, replay, rebuild, persist);
- ``views`` and ``retrieval``: reads and search, hydrated from one read snapshot;
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag import codec
from mlflow_rag.errors import (
    ChunkNotFound,
    DocumentNotFound,
    InvalidInput,
    UnknownChoice,
)
from mlflow_rag.index.choose import INDEX_TYPES, choose_index
from mlflow_rag.store import (
    bundle,
    integrity,
    layout,
    opening,
    retrieval,
    views,
)
from mlflow_rag.store.access import Principal, restrict, visible
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.catalog import StoreCatalog
from mlflow_rag.store.checks import clean_query
from mlflow_rag.store.core import StoreCore
from mlflow_rag.store.files import (
    FileStamp,
    confined,
)
from mlflow_rag.store.filters import Plan, as_plan
from mlflow_rag.store.governance import StoreGovernance
from mlflow_rag.store.integrity import EMBED_CHECK_MIN_COSINE
from mlflow_rag.store.logs import StoreLogs
from mlflow_rag.store.manifest import Manifest
from mlflow_rag.store.request import Retrieval
from mlflow_rag.store.writes import StoreWrites
from mlflow_rag.types import (
    ChunkView,
    DocumentView,
    Hit,
    ModelInfo,
    StoreStats,
)

log = logging.getLogger("mlflow_rag.store")


class Store(StoreWrites):
    """Open with :meth:`Store.open`; use as a context manager so indexes are persisted.

    Its jobs beyond documents, search and indexes are sub-objects sharing its state:
    ``store.logs`` (queries, answers, feedback, monitoring), ``store.catalog`` (what ingest
    reads to decide) and ``store.governance`` (versions, lineage, audit)."""

    def __init__(
        self, root: Path, backend: Backend, *, read_only: bool, immutable: bool, mmap: bool = False,
        verified_files: Mapping[str, FileStamp] | None = None, location: str | None = None,
        name: str | None = None,
    ) -> None:
        self._core = StoreCore(root, backend, read_only=read_only, immutable=immutable, mmap=mmap,
                               verified_files=verified_files, location=location)
        self.root = root
        self.location = self._core.location
        self.is_database = self._core.is_database
        self.name = name or root.name  # a folder's name, or a database store's schema
        self.read_only = self._core.read_only
        self.immutable = immutable
        self.mmap = mmap
        self.store_id = self._core.store_id
        self.orphan_hits = 0  # index hits without a row: must stay 0 (readers see snapshots)
        self.logs = StoreLogs(self._core)
        self.catalog = StoreCatalog(self._core)
        self.governance = StoreGovernance(self._core)

    @property
    def events(self) -> list[str]:
        """Rebuilds and repairs (why an index was rebuilt, an incomplete erasure), in order."""
        return self._core.index_cache.events

    @property
    def manifest(self) -> Manifest | None:
        """The manifest as this store last read or wrote it."""
        return self._core.index_cache.manifest

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
            store._core.opened_as = str(path)  # with its password, unlike location: audit reopens it
            return store
        root = Path(path)
        opening.check_exists(root, create=create and not (read_only or immutable))
        verified = bundle.verify_bundle(root) if verify_files else {}
        backend = opening.open_backend(root, read_only=read_only, immutable=immutable, mmap=mmap)
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
        if self._core.closed:
            return
        try:
            if flush and not self.read_only:
                self.flush()
        finally:
            self._core.close()

    @property
    def backend(self) -> Backend:
        """The database this store keeps its source of truth in."""
        return self._core.backend

    def _check_stored_paths(self) -> None:
        """Refuse the open if a path derived from stored data would leave the store: a
        model's slug (it names the index file and the embedder's state folder), or a symlink
        under ``index/``, ``models/`` or at ``manifest.json`` that leads outside."""
        with self._core.lock, self.backend.read_transaction():
            self._core.registry.refresh(self.backend.generation())
        layout.check_folders_confined(self.root, what="store")
        confined(self.root, layout.MANIFEST_FILE, what="manifest")

    # ----------------------------------------------------------------- the writer lock

    @contextlib.contextmanager
    def writer_lock(
        self, *, wait: bool = True, on_busy: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        """Hold the store's lock across several writes that must not interleave with another
        process's (an ingest: fit, save and write). Other processes' writer locks, flushes
        and snapshots wait; readers never do. If another process holds it, ``on_busy(holder)``
        is called, then this waits, or raises :class:`~mlflow_rag.errors.StoreBusy` at once
        with ``wait=False``. Re-entrant within the thread that holds it."""
        self._core.require_writable()
        with self._core.file_lock(wait=wait, on_busy=on_busy, record_holder=True):
            yield

    # ----------------------------------------------------------------- models

    def models(self) -> list[ModelInfo]:
        """Embedding models in this store, with their vector counts and effective index type."""
        with self._core.lock, self.backend.read_transaction():
            generation = self.backend.generation()
            self._core.registry.refresh(generation)
            return self._core.registry.counted(generation)

    def model(self, name: str | None = None) -> ModelInfo:
        """The named model, or the only one. Errors list the models the store has."""
        return self._core.model(name)

    def ensure_model(
        self, name: str, dimension: int, *, embedder: str | None = None,
        model_version: str | None = None, index_type: str | None = None,
        index_params: Mapping[str, Any] | None = None,
    ) -> ModelInfo:
        """Register an embedding model (or check an existing one has this dimension)."""
        self._core.require_writable()
        if index_type is not None and index_type not in INDEX_TYPES:
            raise UnknownChoice("index type", index_type, INDEX_TYPES)
        if not isinstance(dimension, int) or dimension < 1:
            raise InvalidInput(f"dimension must be a positive integer, got {dimension!r}")
        if index_type is not None:
            choose_index(index_type, 0, dimension, index_params)  # validate parameters early
        with self._core.lock:
            with self.backend.write_transaction() as generation:
                self._core.registry.register(
                    name, dimension, generation=generation, embedder=embedder,
                    model_version=model_version, index_type=index_type, index_params=index_params,
                )
            self._core.registry.invalidate()
            if index_type is not None:
                self._core.index_cache.forget(name)  # rebuilt with the new settings on next use
            return self.model(name)

    def model_dir(self, name: str) -> Path:
        """Where the embedder of model ``name`` keeps the state it fitted at ingest (inside the
        store): its slug's folder, or for a model not registered yet the folder it will get
        (a first fit is saved before the model's dimension is known and registered)."""
        with self._core.lock, self.backend.read_transaction():
            self._core.registry.refresh(self.backend.generation())
            slug = self._core.registry.slug_for(name)
            info = self._core.registry.by_name.get(name)
        path = layout.model_dir(self.root, slug=slug, name=name)
        if self.is_database and info is not None and info.model_version:
            self._core.model_files.pull(name, info.model_version, path)
        return path

    def publish_model_state(self, name: str, version: str) -> None:
        """Make the state an embedder just saved in :meth:`model_dir` (for ``version``) what
        every process opening this store loads with that version's vectors. Call it before
        the vectors commit. A folder store's processes read the folder itself."""
        if self.is_database:
            self._core.model_files.push(name, version, self.model_dir(name))

    # ----------------------------------------------------------------- indexes

    def flush(self) -> None:
        """Bring every model's index up to date and persist it atomically, then the manifest."""
        self._core.flush()

    def load_indexes(self) -> None:
        """Load every model's index and hit map now (checked, and synced to the current
        generation), so the first search does not pay for them: a server does this before it
        answers."""
        with self._core.lock, self.backend.read_transaction():
            generation = self.backend.generation()
            self._core.registry.refresh(generation)
            for info in self._core.registry.by_name.values():
                self._core.index_cache.index_for(info, generation)
                self._core.index_cache.hit_keys(info.name, generation, now=True)

    def rebuild_index(self, model: str | None = None) -> None:
        """Drop the in-memory index and rebuild it from SQLite (then persist if writable)."""
        with self._core.lock, self.backend.read_transaction():
            generation = self.backend.generation()
            self._core.registry.refresh(generation)
            info = self._core.registry.get(model)
            self._core.index_cache.build(info, generation, "asked for")
            self._core.index_cache.sides[info.name] = None  # its side file too, from SQLite
        self.flush()

    # ----------------------------------------------------------------- reads

    def get_document(
        self, document_id: str, *, include_pii: bool = False, principal: Principal | None = None,
    ) -> DocumentView:
        """A document with all its chunks in order. One ``principal`` may not see is "not
        found", in the words used for a document that does not exist."""
        with self._core.lock, self.backend.read_transaction():
            row = self.backend.document_row(document_id)
            if row is None or not visible(codec.loads_object(row[6]), principal):
                raise DocumentNotFound(f"no document with id {document_id!r} in {self.location}")
            chunks = tuple(views.chunk_view(r) for r in self.backend.chunk_rows(document_id))
        return views.document_view(row, chunks, include_pii=include_pii)

    def expand_context(
        self, chunk_id: str, *, n: int = 1, principal: Principal | None = None,
    ) -> list[ChunkView]:
        """The chunk and up to ``n`` neighbours on each side within its document, in order.
        Neighbours share the chunk's document, so they are visible exactly when it is; a
        chunk ``principal`` may not see is "not found", as one that does not exist."""
        if not isinstance(n, int) or n < 0:
            raise InvalidInput(f"n must be a non-negative integer, got {n!r}")
        with self._core.lock, self.backend.read_transaction():
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
        with self._core.lock:
            rows = self.backend.find_document_rows(plan, limit)
        return [views.document_view(r, (), include_pii=include_pii) for r in rows]

    def lexical_index_bytes(self) -> int:
        """Bytes of the full-text (BM25) index's pages; 0 if this SQLite cannot tell."""
        with self._core.lock:
            return self.backend.lexical_index_bytes()

    def stats(self) -> StoreStats:
        models = self.models()
        with self._core.lock, self.backend.read_transaction():
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
        known = None if plan is not None else retrieval.dense_at_known_generation(
            self._core, vector, request.k, model=model)
        if known is not None:
            hits, orphans = views.dense_hits(known.ids, known.scores, known.rows,
                                             include_pii=include_pii)
            self.orphan_hits += orphans
            return hits
        with self._core.lock, self.backend.read_transaction():
            generation = self.backend.generation()
            self._core.registry.refresh(generation)
            info = self._core.registry.get(model)
            query = clean_query(vector, info.dimension)
            index = self._core.index_cache.index_for(info, generation)
            keys = self._core.index_cache.vector_keys(info.name, generation) if plan is not None else None
            hit_keys = self._core.index_cache.hit_keys(info.name, generation)
            found = retrieval.dense(self.backend, index, query, request.k, plan=plan, keys=keys,
                                    hit_keys=hit_keys)
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
        with self._core.lock:
            rows = self.backend.bm25_rows(text, request.k, request.plan)
        return views.lexical_hits(rows, include_pii=include_pii)

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
        with self._core.lock, self.backend.read_transaction():
            if not self.read_only:
                self.backend.lexical_index_check()
            generation = self.backend.generation()
            self._core.registry.refresh(generation)
            for name, info in self._core.registry.by_name.items():
                index = self._core.index_cache.index_for(info, generation)
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
        with self._core.lock:
            if not self.read_only:
                self.flush()
            # Copy the derived files first: if a writer commits before VACUUM INTO, the
            # snapshot's database is only ahead of them, and opening it replays the difference.
            with self._core.file_lock():
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
