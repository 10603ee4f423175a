"""Opening a store's database: refuse a folder that is not a store, pick the backend, and
name every failure while opening (the connection is closed, nothing is left half-open)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from mlflow_rag.errors import ForeignStore, RagError, StoreNotFound
from mlflow_rag.store import layout
from mlflow_rag.store.backend import Backend


def check_exists(root: Path, *, create: bool) -> None:
    """A store needs its database; make the folder for a new one if ``create``."""
    db_path = root / layout.DB_FILE
    if db_path.exists():
        return
    if not create:
        if root.exists() and any(root.iterdir()):
            raise ForeignStore(
                f"{root} is not a mlflow-rag store (no {layout.DB_FILE}); "
                "point --store at a store directory or a new path"
            )
        raise StoreNotFound(
            f"no store at {root}; create one with `mlflow-rag ingest SOURCE --store {root}`"
        )
    root.mkdir(parents=True, exist_ok=True)


def is_database_location(path: str | Path) -> bool:
    """True for a ``postgresql://`` location (a store in a database, not a folder)."""
    from mlflow_rag.store.postgres.location import is_location

    return isinstance(path, str) and is_location(path)


def open_backend(root: Path, *, read_only: bool, immutable: bool, mmap: bool = False) -> Backend:
    """The store's database in the folder ``root``, checked (read-only) or migrated."""
    from mlflow_rag.store.sqlite.backend import SqliteBackend

    return SqliteBackend.open(root, read_only=read_only, immutable=immutable, mmap=mmap)


def open_database(location: str, *, create: bool, read_only: bool) -> tuple[Path, Backend, str]:
    """A store in a database: the local folder that caches its derived files (indexes,
    fitted embedders; one per store id under :func:`layout.cache_home`), its backend and its
    name (the schema's)."""
    from mlflow_rag.store.postgres.backend import PostgresBackend

    backend = PostgresBackend.open(location, create=create, read_only=read_only)
    with closed_on_failure(backend):
        root = layout.cache_home() / "stores" / backend.get_meta("store_id")
        root.mkdir(parents=True, exist_ok=True)
    return root, backend, backend.store_location.schema


@contextlib.contextmanager
def closed_on_failure(backend: Backend) -> Iterator[None]:
    """Close ``backend`` if the block fails, and name the failure (a full disk, a file that
    is not a database) as the backend knows it."""
    try:
        yield
    except BaseException as exc:
        backend.close()
        if isinstance(exc, RagError):
            raise
        named = backend.open_failure(exc) if isinstance(exc, Exception) else None
        if named is not None:
            raise named from exc
        raise


def open_writable_backend(opened_as: str | Path) -> Backend:
    """A writable backend on the store a read-only one was opened on (``opened_as``: its
    folder, or its database location with the password), for a write that must land anyway
    (an audit entry of a read-only search)."""
    if is_database_location(opened_as):
        return open_database(str(opened_as), create=False, read_only=False)[1]
    return open_backend(Path(opened_as), read_only=False, immutable=False)
