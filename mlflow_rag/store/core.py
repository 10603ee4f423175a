"""What every job of an open store shares: its backend, its locks, its models and indexes.

:class:`~mlflow_rag.store.store.Store` is the facade; it and its sub-objects (``store.logs``,
``store.catalog``, ``store.governance``) each hold the same :class:`StoreCore`, so one thread
lock, one lock-file owner, one model registry and one index cache serve them all."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from mlflow_rag.errors import RagError
from mlflow_rag.store import layout
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.files import FileStamp, exclusive_lock
from mlflow_rag.store.index_cache import IndexCache
from mlflow_rag.store.models import ModelFiles, ModelRegistry
from mlflow_rag.types import ModelInfo


class StoreCore:
    """The state of one open store; its jobs reach the database only through :attr:`backend`
    and hold :attr:`lock` while they do (a connection serves one thread at a time)."""

    def __init__(
        self, root: Path, backend: Backend, *, read_only: bool, immutable: bool, mmap: bool,
        verified_files: Mapping[str, FileStamp] | None, location: str | None,
    ) -> None:
        self.root = root
        # What users call the store: its folder, or its database (without a password).
        self.location = location or str(root)
        self.is_database = location is not None
        self.read_only = read_only or immutable
        self.immutable = immutable
        self.opened_as: str | Path = root  # a database's, with its password: audit reopens it
        self._backend: Backend | None = backend
        self.lock = threading.RLock()
        # The thread holding the store's lock file through this store (writer_lock, flush):
        # nested uses by that thread do not lock again (flock would wait for itself).
        self._file_lock_owner: int | None = None
        self.registry = ModelRegistry(root, backend)
        self.store_id = backend.get_meta("store_id")
        self.index_cache = IndexCache(root, backend, store_id=self.store_id, mmap=mmap,
                                      verified_files=verified_files)
        self.model_files = ModelFiles(backend)

    @property
    def backend(self) -> Backend:
        """The database this store keeps its source of truth in."""
        if self._backend is None:
            raise RagError("the store is closed")
        return self._backend

    @property
    def closed(self) -> bool:
        return self._backend is None

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
            self.index_cache.clear()

    def require_writable(self) -> None:
        if self.read_only:
            raise RagError(f"{self.location} is open read-only")

    def models_at(self, generation: int) -> Mapping[str, ModelInfo]:
        """The models as of ``generation`` (read again only when it changed)."""
        self.registry.refresh(generation)
        return self.registry.by_name

    @contextlib.contextmanager
    def file_lock(
        self, *, wait: bool = True, on_busy: Callable[[str], None] | None = None,
        record_holder: bool = False,
    ) -> Iterator[None]:
        """The store's lock file, re-entrant within the thread that holds it."""
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

    def model(self, name: str | None) -> ModelInfo:
        """The named model, or the only one. Errors list the models the store has."""
        with self.lock, self.backend.read_transaction():
            self.registry.refresh(self.backend.generation())
            return self.registry.get(name)

    def flush(self) -> None:
        """Bring every model's index up to date and persist it atomically, then the manifest."""
        if self.read_only:
            return
        with self.file_lock(), self.lock:
            self.index_cache.persist(self.models_at)
