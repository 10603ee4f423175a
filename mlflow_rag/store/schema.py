"""Ordered, named migrations. The schema version is ``PRAGMA user_version``.

Append new migrations; never edit an applied one. ``tests/snapshots/schema.sql`` holds the
schema an empty database reaches after all of them (a test keeps the two equal).

Beyond the design document's five tables:
- ``embeddings.vector_id``: the FAISS id, an explicit integer from a sequence that never
  reuses a value (VACUUM may renumber the implicit rowid of TEXT-keyed tables, and replay of
  an index relies on ids only growing).
- ``chunks.fts_rowid``: the same idea for the FTS5 index over chunk text.
- ``chunks.text_hash``: sha256 of the chunk text, the key of the embedding cache.
- ``document_fields`` / ``chunk_fields``: metadata values indexed for filters.
- ``models``: one row per embedding space (dimension, embedder, requested index type).
- ``vector_deletions``: written by a trigger, so an index built at generation g can be brought
  up to date by replaying deletions and additions instead of a full rebuild.
- ``store_meta``: generation counter, id sequence and the store's identity.
- ``generations`` / ``citations`` / ``feedback`` (migration 2): each answer joined to its
  query (and so its retrievals), the chunks it cites, and what users said of it; they go
  with their query when retention deletes it (``ON DELETE CASCADE``).
"""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


# BM25's tokenizer; the PostgreSQL backend cuts its terms with the same one.
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"

_INITIAL = """
CREATE TABLE store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    source_path TEXT NOT NULL,
    source_type TEXT NOT NULL,
    content_hash TEXT,
    imported_at TEXT NOT NULL,
    updated_at TEXT,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    raw_text TEXT
);
CREATE INDEX idx_documents_source ON documents(source_path);
CREATE INDEX idx_documents_hash ON documents(content_hash);

CREATE TABLE chunks (
    id TEXT PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    chunk_index INTEGER NOT NULL,
    chunk_type TEXT,
    text TEXT NOT NULL,
    start_char INTEGER,
    end_char INTEGER,
    token_count INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    text_hash TEXT NOT NULL,
    fts_rowid INTEGER NOT NULL UNIQUE,
    UNIQUE (document_id, chunk_index)
);
-- (document_id, id) and (chunk_id, model_name, vector_id) make the filter -> vector id join
-- covering: it never reads chunk text or vector BLOB pages (8x faster at 1 % selectivity).
CREATE INDEX idx_chunks_document ON chunks(document_id, id);
CREATE INDEX idx_chunks_type ON chunks(chunk_type);
CREATE INDEX idx_chunks_text_hash ON chunks(text_hash);

CREATE TABLE models (
    name TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    dimension INTEGER NOT NULL CHECK (dimension > 0),
    embedder TEXT,
    model_version TEXT,
    index_type TEXT NOT NULL DEFAULT 'auto',
    index_params TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(index_params)),
    created_at TEXT NOT NULL
);

CREATE TABLE embeddings (
    id TEXT PRIMARY KEY,
    chunk_id TEXT NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    model_name TEXT NOT NULL REFERENCES models(name),
    model_version TEXT,
    vector_dimension INTEGER NOT NULL,
    vector BLOB NOT NULL CHECK (length(vector) = 4 * vector_dimension),
    created_at TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    vector_id INTEGER NOT NULL UNIQUE,
    UNIQUE (chunk_id, model_name)
);
CREATE INDEX idx_embeddings_chunk ON embeddings(chunk_id, model_name, vector_id);
CREATE INDEX idx_embeddings_model ON embeddings(model_name);

-- Metadata values, one row per (key, scalar), so filters use an index instead of parsing
-- every row's JSON. Nested objects flatten to dotted keys; lists give one row per element.
CREATE TABLE document_fields (
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value
);
CREATE INDEX idx_document_fields_key ON document_fields(key, value, document_id);
CREATE INDEX idx_document_fields_document ON document_fields(document_id);

CREATE TABLE chunk_fields (
    chunk_id TEXT NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value
);
CREATE INDEX idx_chunk_fields_key ON chunk_fields(key, value, chunk_id);
CREATE INDEX idx_chunk_fields_chunk ON chunk_fields(chunk_id);

CREATE TABLE vector_deletions (
    vector_id INTEGER PRIMARY KEY,
    model_name TEXT NOT NULL,
    generation INTEGER NOT NULL
);
CREATE INDEX idx_vector_deletions_model ON vector_deletions(model_name, generation);

CREATE TRIGGER embeddings_log_delete AFTER DELETE ON embeddings BEGIN
    INSERT OR REPLACE INTO vector_deletions(vector_id, model_name, generation)
    VALUES (old.vector_id, old.model_name,
            (SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = 'generation'));
END;

CREATE TABLE queries (
    id TEXT PRIMARY KEY,
    query_text TEXT NOT NULL,
    query_embedding BLOB,
    model_name TEXT,
    timestamp TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);
CREATE INDEX idx_queries_timestamp ON queries(timestamp);

CREATE TABLE retrievals (
    id TEXT PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    chunk_id TEXT NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    score REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);
CREATE INDEX idx_retrievals_query ON retrievals(query_id);
CREATE INDEX idx_retrievals_chunk ON retrievals(chunk_id);

-- Inserts into chunks_fts are made by the store right after the chunk rows, in one batch:
-- an AFTER INSERT trigger would run once per row, and FTS5 flushes its pending terms at every
-- statement boundary, writing one tiny segment per chunk (about 6x slower ingest).
-- Deletes and updates keep triggers so that every path (cascades included) stays in step.
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, content='chunks', content_rowid='fts_rowid',
    tokenize='{FTS_TOKENIZER}'
);
CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.fts_rowid, old.text);
END;
CREATE TRIGGER chunks_fts_update AFTER UPDATE OF text, fts_rowid ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.fts_rowid, old.text);
    INSERT INTO chunks_fts(rowid, text) VALUES (new.fts_rowid, new.text);
END;
"""
_INITIAL = _INITIAL.replace("{FTS_TOKENIZER}", FTS_TOKENIZER)

# Query logs can live in a separate writable file next to a read-only bundle (serving).
# There the chunks table does not exist, so retrievals carry no foreign key to it.
QUERY_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    id TEXT PRIMARY KEY,
    query_text TEXT NOT NULL,
    query_embedding BLOB,
    model_name TEXT,
    timestamp TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);
CREATE INDEX IF NOT EXISTS idx_queries_timestamp ON queries(timestamp);
CREATE TABLE IF NOT EXISTS retrievals (
    id TEXT PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    chunk_id TEXT NOT NULL,
    rank INTEGER NOT NULL,
    score REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);
CREATE INDEX IF NOT EXISTS idx_retrievals_query ON retrievals(query_id);
CREATE INDEX IF NOT EXISTS idx_retrievals_chunk ON retrievals(chunk_id);
"""

# The answer half (docs/answers.md). ``generations.id`` is the output id users give feedback
# on. Citations keep chunk and document ids without a foreign key: what an answer cited stays
# on record after its document is deleted (ids only, no text). Answer text is NULL unless
# asked for, and redacted like query text.
ANSWERS = """
CREATE TABLE generations (
    id TEXT PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    timestamp TEXT NOT NULL,
    prompt_name TEXT,
    prompt_version TEXT,
    generator TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_usd REAL,
    embed_ms REAL,
    retrieve_ms REAL,
    generate_ms REAL,
    answer_text TEXT,
    session_id TEXT,
    user_id TEXT,
    trace_id TEXT,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);
CREATE INDEX idx_generations_query ON generations(query_id);
CREATE INDEX idx_generations_timestamp ON generations(timestamp);
CREATE INDEX idx_generations_session ON generations(session_id);

CREATE TABLE citations (
    generation_id TEXT NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    PRIMARY KEY (generation_id, rank)
);
CREATE INDEX idx_citations_chunk ON citations(chunk_id);

CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    generation_id TEXT NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
    timestamp TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('score', 'thumbs')),
    value REAL NOT NULL,
    comment TEXT,
    user_id TEXT,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);
CREATE INDEX idx_feedback_generation ON feedback(generation_id);
"""

# Governance (issue 15): the ingest runs that wrote documents, and every version of a
# document (the current one open, replaced_at NULL), kept after the document is replaced or
# deleted. No foreign key to documents: history outlives the rows it describes.
_GOVERNANCE = """
CREATE TABLE ingest_runs (
    id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    sources TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(sources)),
    source_digest TEXT,
    embedder TEXT,
    embedder_version TEXT
);

CREATE TABLE document_versions (
    document_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    content_hash TEXT,
    source_path TEXT NOT NULL,
    written_at TEXT NOT NULL,
    written_by TEXT,
    replaced_at TEXT,
    replaced_by TEXT,
    ended_by TEXT,
    PRIMARY KEY (document_id, version)
);
CREATE INDEX idx_document_versions_run ON document_versions(written_by);
"""

# The opt-in audit log (issue 15): who did what, when (`mlflow-rag audit`). ``detail`` is JSON
# of ids and counts, never document or query text, so erasure need not chase it.
_AUDIT = """
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
);
CREATE INDEX idx_audit_log_at ON audit_log(at);
"""

# A served model's own query log file (serving_log.QueryLog) holds the answer tables too: a
# served answer is a generations row there, so feedback has an output id to attach to. The
# same tables as migration 2, created if missing (logs written before they existed gain them).
QUERY_LOG_SCHEMA += ANSWERS.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ").replace(
    "CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ")

# Hash lookups by a prefix (issue 19). A full 64-character sha256 key is a random key: each
# write batch lands in nearly every leaf page of its index, and every page a commit dirties
# is written to the WAL again (the two hash indexes were 880 of the 2,026 MB a 100K-chunk
# ingest wrote). Eight hex characters (32 bits) index a fifth of the bytes and still pick one
# row per lookup (at 10M chunks, one candidate in ~400 lookups is a false one); every query
# that uses them also compares the full hash (``HASH_PREFIX_CHARS``).
HASH_PREFIX_CHARS = 8
_HASH_PREFIXES = f"""
DROP INDEX idx_documents_hash;
DROP INDEX idx_chunks_text_hash;
CREATE INDEX idx_documents_hash_prefix ON documents(substr(content_hash, 1, {HASH_PREFIX_CHARS}));
CREATE INDEX idx_chunks_text_hash_prefix ON chunks(substr(text_hash, 1, {HASH_PREFIX_CHARS}));
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _INITIAL),
    Migration(2, "answers", ANSWERS),
    Migration(3, "governance", _GOVERNANCE),
    Migration(5, "audit", _AUDIT),
    Migration(6, "hash_prefixes", _HASH_PREFIXES),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
