"""Opening a store's database: refuse what is not a store, connect, and migrate the schema
(one process at a time); every failure becomes one named error and closes the connection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow_rag.errors import ForeignStore, RagError, StoreNotFound
from mlflow_rag.store import db, layout
from mlflow_rag.store.files import StorageError, exclusive_lock
from mlflow_rag.store.schema import SCHEMA_VERSION


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


def connect(root: Path, *, read_only: bool, immutable: bool) -> Any:
    """Connect to the store's database, checked (read-only) or migrated (writable)."""
    db_path = root / layout.DB_FILE
    conn = db.connect(db_path, read_only=read_only, immutable=immutable)
    with closed_on_failure(conn, db_path):
        if read_only or immutable:
            if not db.is_store_database(conn):
                raise ForeignStore(f"{db_path} is not a mlflow-rag store database")
            db.check_version(conn, db_path)
        else:
            if db.schema_version(conn) < SCHEMA_VERSION:
                # Two processes creating one store must not both run the migrations
                # (both saw user_version 0): one at a time, each re-reading the version.
                with exclusive_lock(root / layout.LOCK_FILE):
                    db.migrate(conn, db_path)
            else:
                db.migrate(conn, db_path)
    return conn


@contextlib.contextmanager
def closed_on_failure(conn: Any, db_path: Path) -> Iterator[None]:
    """Close ``conn`` if the block fails, and name the failure: a full disk or I/O error is a
    StorageError, a file SQLite cannot read a ForeignStore."""
    try:
        yield
    except BaseException as exc:
        conn.close()
        if isinstance(exc, RagError):
            raise
        if db.is_storage_failure(exc):
            raise StorageError(f"cannot write {db_path}: {exc}; the store was not opened",
                               filename=str(db_path)) from exc
        if exc.__class__.__name__ == "DatabaseError":
            raise ForeignStore(f"{db_path} is not a readable SQLite database: {exc}") from None
        raise
