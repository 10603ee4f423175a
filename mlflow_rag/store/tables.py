"""What a store's tables hold, as every backend reads and writes them: the columns of each
table in the order rows carry them (copies, exports, the answer log), the store's format
name, and the two values every row is stamped with (a time and an id)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

STORE_FORMAT = "mlflow-rag-store"

# An answer's record and a feedback's, in the column order of their rows everywhere.
GENERATION_COLUMNS: tuple[str, ...] = (
    "id", "query_id", "timestamp", "prompt_name", "prompt_version", "generator", "params",
    "input_tokens", "output_tokens", "cost_usd", "embed_ms", "retrieve_ms", "generate_ms",
    "answer_text", "session_id", "user_id", "trace_id", "metadata",
)
FEEDBACK_COLUMNS: tuple[str, ...] = (
    "id", "generation_id", "timestamp", "kind", "value", "comment", "user_id", "metadata",
)

# The tables a store copies between backends, each with its columns in the order every
# backend's ``dump_rows``/``load_rows`` use (metadata fields as one ``value``, as written).
TABLES: dict[str, tuple[str, ...]] = {
    "store_meta": ("key", "value"),
    "models": ("name", "slug", "dimension", "embedder", "model_version", "index_type",
               "index_params", "created_at"),
    "documents": ("id", "source_path", "source_type", "content_hash", "imported_at",
                  "updated_at", "metadata", "raw_text"),
    "document_fields": ("document_id", "key", "value"),
    "chunks": ("id", "document_id", "chunk_index", "chunk_type", "text", "start_char",
               "end_char", "token_count", "metadata", "text_hash", "fts_rowid"),
    "chunk_fields": ("chunk_id", "key", "value"),
    "embeddings": ("id", "chunk_id", "model_name", "model_version", "vector_dimension",
                   "vector", "created_at", "metadata", "vector_id"),
    "vector_deletions": ("vector_id", "model_name", "generation"),
    "queries": ("id", "query_text", "query_embedding", "model_name", "timestamp", "metadata"),
    "retrievals": ("id", "query_id", "chunk_id", "rank", "score", "metadata"),
    "generations": GENERATION_COLUMNS,
    "citations": ("generation_id", "rank", "chunk_id", "document_id"),
    "feedback": FEEDBACK_COLUMNS,
    "ingest_runs": ("id", "started_at", "sources", "source_digest", "embedder",
                    "embedder_version"),
    "document_versions": ("document_id", "version", "content_hash", "source_path", "written_at",
                          "written_by", "replaced_at", "replaced_by", "ended_by"),
    "audit_log": ("id", "at", "actor", "action", "detail"),
}


def utc_now() -> str:
    """ISO-8601 UTC with microseconds: sorts lexicographically, filters compare as text."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex
