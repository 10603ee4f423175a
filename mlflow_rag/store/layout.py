"""The on-disk layout of a store directory (a contract other parts build on)::

    STORE/metadata.db            documents, chunks, embeddings, queries, retrievals (+ FTS5)
    STORE/index/<model-slug>.faiss
    STORE/index/<model-slug>.f16 a compressed index's vectors as float16, by vector id
    STORE/manifest.json          schema/package versions; per model: dimension, index type and
                                 parameters, generation, vector count, sha256 of the index file
    STORE/models/<model-slug>/   embedder state fitted at ingest (tfidf), if any
    STORE/.lock                  the writers' advisory lock

A bundle (``Store.snapshot``) has the same layout. Every path built from stored data (a
model's slug) goes through :func:`~mlflow_rag.store.files.confined`, so it cannot lead outside.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mlflow_rag.store.files import check_tree_confined, confined
from mlflow_rag.store.manifest import MANIFEST
from mlflow_rag.types import ModelInfo

DB_FILE = "metadata.db"
INDEX_DIR = "index"
MODELS_DIR = "models"
LOCK_FILE = ".lock"
MANIFEST_FILE = MANIFEST


CACHE_ENV = "MLFLOW_RAG_CACHE_DIR"


def cache_home() -> Path:
    """Where stores in a database keep their derived files on this machine:
    ``$MLFLOW_RAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlflow-rag``, else ``~/.cache/mlflow-rag``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlflow-rag"


def index_relative(info: ModelInfo) -> str:
    """The one index file name a manifest may record for this model."""
    return f"{INDEX_DIR}/{info.slug}.faiss"


def index_path(root: Path, info: ModelInfo) -> Path:
    return confined(root, index_relative(info), what=f"index file of model {info.name!r}")


def vectors_relative(info: ModelInfo) -> str:
    """The one float16 side file name a manifest may record for this model (its compressed
    index's exact vectors, store/side_files.py)."""
    return f"{INDEX_DIR}/{info.slug}.f16"


def vectors_path(root: Path, info: ModelInfo) -> Path:
    return confined(root, vectors_relative(info), what=f"vector file of model {info.name!r}")


def model_dir(root: Path, *, slug: str, name: str) -> Path:
    """Where the embedder of model ``name`` keeps the state it fitted (inside the store)."""
    return confined(root, f"{MODELS_DIR}/{slug}", what=f"state folder of model {name!r}")


def check_folders_confined(root: Path, *, what: str) -> None:
    """Refuse a symlink under ``index/`` or ``models/`` that leads outside ``root``."""
    for folder in (INDEX_DIR, MODELS_DIR):
        check_tree_confined(root, folder, what=f"{what} folder {folder}/")


def remove_stale_temp_files(root: Path) -> None:
    """Delete temp files a killed process left (``.<name>.<pid>.tmp``, see atomic_write_bytes).

    Only called under the store's lock, which every writer of those files holds, so any temp
    file present belongs to a process that died mid-write."""
    for folder in (root, root / INDEX_DIR):
        if folder.is_dir():
            for stale in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
