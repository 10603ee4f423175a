"""The query log: each query with what it retrieved (``queries`` + ``retrievals``), and
retention that deletes old entries and reclaims their space. Functions of a backend, so
any backend holding the tables can log (the store's, or a server's own)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlflow_rag import codec
from mlflow_rag.store import audit
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.tables import new_id, utc_now
from mlflow_rag.types import Hit


def write_query_log(
    backend: Backend, text: str, hits: Sequence[Hit], *, model_name: str | None,
    embedding: np.ndarray | None, metadata: Mapping[str, Any] | None,
    redact: Callable[[str], str] | None,
) -> str:
    """Insert one query and its retrievals in one transaction (any backend with the tables).

    ``redact`` runs before anything is stored. If it changed the text, the query embedding is
    not stored either: it was computed from the raw text, and embeddings can be inverted to
    recover much of the text they encode.
    """
    stored = redact(text) if redact else text
    if stored != text:
        embedding = None
    query_id = new_id()
    with backend.immediate_transaction():
        backend.insert_query(
            query_id=query_id, text=stored,
            embedding=codec.vector_to_blob(embedding) if embedding is not None else None,
            model_name=model_name, timestamp=utc_now(),
            metadata=codec.metadata_json(metadata),
            retrievals=[(new_id(), h.chunk_id, h.rank, h.score, "{}") for h in hits],
        )
    return query_id


def purge_query_log(backend: Backend, days: float) -> int:
    """Delete query logs older than ``days``, VACUUM, and checkpoint the WAL into the main file
    and truncate it: until then the deleted text is still on disk (in the WAL, and in the old
    pages of the main file), and the file does not shrink."""
    cutoff = audit.retention_cutoff(days)
    with backend.immediate_transaction():
        deleted = backend.delete_queries_before(cutoff)
        audit.record(backend, "purge-queries", {"older_than_days": days, "deleted": deleted})
    try:
        backend.reclaim_space()
    except Exception as exc:
        if backend.is_storage_failure(exc):
            raise backend.storage_failure(
                exc, outcome=f"{deleted} queries were deleted but the space not reclaimed"
            ) from exc
        raise
    return deleted
