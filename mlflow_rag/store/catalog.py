"""``store.catalog``: what is stored, keyed the way ingest decides what to write: document
states and sources, the vectors a model already computed (the embedding cache), and chunks
with or without a model's vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlflow_rag import codec
from mlflow_rag.store.core import StoreCore


class StoreCatalog:
    """The catalog of one open store (``store.catalog``); each call reads one statement's
    snapshot."""

    def __init__(self, core: StoreCore) -> None:
        self._core = core

    def document_states(self, ids: Sequence[str]) -> dict[str, tuple[str | None, dict[str, Any]]]:
        """id -> (content_hash, metadata) of the stored documents among ``ids``."""
        with self._core.lock:
            return {
                k: (h, codec.loads_object(m))
                for k, (h, m) in self._core.backend.document_states(list(ids)).items()
            }

    def document_sources(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """id -> (source_path, content_hash) of the stored documents among ``ids``."""
        with self._core.lock:
            return self._core.backend.document_sources(list(ids))

    def document_paths(self) -> list[tuple[str, str]]:
        """(id, source_path) of every stored document."""
        with self._core.lock:
            return self._core.backend.document_paths()

    def document_ids_by_source(self, source_paths: Sequence[str]) -> dict[str, list[str]]:
        """source_path -> ids of the stored documents that came from it."""
        out: dict[str, list[str]] = {}
        with self._core.lock:
            for path, doc_id in self._core.backend.documents_by_source(list(source_paths)):
                out.setdefault(path, []).append(doc_id)
        return out

    def cached_vectors(self, model_name: str, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """text_hash -> stored vector, for texts this model embedded before (embedding cache)."""
        with self._core.lock:
            blobs = self._core.backend.cached_vectors(model_name, list(text_hashes))
        return {h: codec.blob_to_vector(b) for h, b in blobs.items()}

    def chunks_without_vectors(
        self, model_name: str, document_ids: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        """(chunk id, document id, text) of the chunks of these documents this model has not
        embedded."""
        with self._core.lock:
            return self._core.backend.chunks_without_vectors(model_name, list(document_ids))

    def chunks_with_vectors(self, model_name: str) -> list[tuple[str, str, str]]:
        """(chunk id, document id, text) of every chunk holding a vector of this model."""
        with self._core.lock:
            return self._core.backend.chunks_with_vectors(model_name)

    def vectors_for_chunks(self, model_name: str, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """chunk id -> this model's vector, for the chunks among ``chunk_ids`` that have one."""
        with self._core.lock:
            return self._core.backend.vectors_for_chunks(model_name, list(chunk_ids))

    def vectors_on_documents(self, document_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(document id, chunk text hash, model name) of every vector on these documents."""
        with self._core.lock:
            rows = self._core.backend.embeddings_of_documents(list(document_ids))
        return [(row[0], row[1], row[2]) for row in rows]
