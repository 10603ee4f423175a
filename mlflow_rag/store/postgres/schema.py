"""The store's schema in PostgreSQL's dialect: ordered, named migrations of their own (the
applied ones are rows of ``schema_migrations``; the version is the highest).

It maps table for table to the SQLite schema (mlflow_rag/store/schema.py), with these
differences:
- metadata field values (``document_fields`` / ``chunk_fields``) are two typed columns,
  ``txt`` and ``num``, where SQLite keeps one untyped column: a filter compares strings with
  strings and numbers with numbers on either backend;
- text that filters compare is ``COLLATE "C"``, ordered by code point as SQLite orders it;
- BM25 reads ``chunk_terms`` (each chunk's terms, cut as FTS5 cuts them:
  mlflow_rag/store/postgres/terms.py) with ``chunks.lex_length`` and ``lex_stats`` (chunk
  count and total length, kept by statement triggers) instead of an FTS5 table;
- vectors are ``bytea`` (float32 little-endian, as SQLite's BLOBs).
"""

from __future__ import annotations

from mlflow_rag.store.schema import HASH_PREFIX_CHARS, Migration

_INITIAL = """
CREATE TABLE store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE documents (
    id TEXT COLLATE "C" PRIMARY KEY,
    source_path TEXT COLLATE "C" NOT NULL,
    source_type TEXT COLLATE "C" NOT NULL,
    content_hash TEXT COLLATE "C",
    imported_at TEXT COLLATE "C" NOT NULL,
    updated_at TEXT COLLATE "C",
    metadata TEXT NOT NULL DEFAULT '{}',
    raw_text TEXT
);
CREATE INDEX idx_documents_source ON documents(source_path);
CREATE INDEX idx_documents_hash ON documents(content_hash);
CREATE INDEX idx_documents_imported ON documents(imported_at, id);

CREATE TABLE chunks (
    id TEXT COLLATE "C" PRIMARY KEY,
    document_id TEXT COLLATE "C" NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    chunk_index INTEGER NOT NULL,
    chunk_type TEXT COLLATE "C",
    text TEXT NOT NULL,
    start_char INTEGER,
    end_char INTEGER,
    token_count INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    text_hash TEXT COLLATE "C" NOT NULL,
    fts_rowid BIGINT NOT NULL UNIQUE,
    lex_length INTEGER NOT NULL DEFAULT 0,
    UNIQUE (document_id, chunk_index)
);
CREATE INDEX idx_chunks_document ON chunks(document_id, id);
CREATE INDEX idx_chunks_text_hash ON chunks(text_hash);
CREATE INDEX idx_chunks_type ON chunks(chunk_type);

CREATE TABLE chunk_terms (
    term TEXT COLLATE "C" NOT NULL,
    fts_rowid BIGINT NOT NULL REFERENCES chunks(fts_rowid) ON DELETE CASCADE,
    tf INTEGER NOT NULL,
    PRIMARY KEY (term, fts_rowid)
);
CREATE INDEX idx_chunk_terms_chunk ON chunk_terms(fts_rowid);

CREATE TABLE lex_stats (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    chunks BIGINT NOT NULL,
    tokens BIGINT NOT NULL
);
INSERT INTO lex_stats VALUES (TRUE, 0, 0);

CREATE FUNCTION lex_stats_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE lex_stats SET chunks = chunks + (SELECT count(*) FROM new_rows),
        tokens = tokens + (SELECT coalesce(sum(lex_length), 0) FROM new_rows);
    RETURN NULL;
END $$;
CREATE FUNCTION lex_stats_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE lex_stats SET chunks = chunks - (SELECT count(*) FROM old_rows),
        tokens = tokens - (SELECT coalesce(sum(lex_length), 0) FROM old_rows);
    RETURN NULL;
END $$;
CREATE TRIGGER chunks_lex_insert AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lex_stats_add();
CREATE TRIGGER chunks_lex_delete AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION lex_stats_remove();

CREATE TABLE document_fields (
    document_id TEXT COLLATE "C" NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    key TEXT COLLATE "C" NOT NULL,
    txt TEXT COLLATE "C",
    num NUMERIC
);
CREATE INDEX idx_document_fields_document ON document_fields(document_id);
CREATE INDEX idx_document_fields_txt ON document_fields(key, txt, document_id);
CREATE INDEX idx_document_fields_num ON document_fields(key, num, document_id);

CREATE TABLE chunk_fields (
    chunk_id TEXT COLLATE "C" NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    key TEXT COLLATE "C" NOT NULL,
    txt TEXT COLLATE "C",
    num NUMERIC
);
CREATE INDEX idx_chunk_fields_chunk ON chunk_fields(chunk_id);
CREATE INDEX idx_chunk_fields_txt ON chunk_fields(key, txt, chunk_id);
CREATE INDEX idx_chunk_fields_num ON chunk_fields(key, num, chunk_id);

CREATE TABLE models (
    name TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    dimension INTEGER NOT NULL CHECK (dimension > 0),
    embedder TEXT,
    model_version TEXT,
    index_type TEXT NOT NULL DEFAULT 'auto',
    index_params TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);

CREATE TABLE embeddings (
    id TEXT PRIMARY KEY,
    chunk_id TEXT COLLATE "C" NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    model_name TEXT NOT NULL REFERENCES models(name),
    model_version TEXT,
    vector_dimension INTEGER NOT NULL,
    vector BYTEA NOT NULL CHECK (length(vector) = 4 * vector_dimension),
    created_at TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector_id BIGINT NOT NULL UNIQUE,
    UNIQUE (chunk_id, model_name)
);
CREATE INDEX idx_embeddings_model ON embeddings(model_name, vector_id);

CREATE TABLE vector_deletions (
    vector_id BIGINT PRIMARY KEY,
    model_name TEXT NOT NULL,
    generation BIGINT NOT NULL
);
CREATE INDEX idx_vector_deletions_model ON vector_deletions(model_name, generation);

CREATE FUNCTION log_vector_deletions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO vector_deletions(vector_id, model_name, generation)
    SELECT vector_id, model_name,
           (SELECT value::bigint FROM store_meta WHERE key = 'generation')
    FROM old_rows
    ON CONFLICT (vector_id) DO UPDATE SET model_name = excluded.model_name,
        generation = excluded.generation;
    RETURN NULL;
END $$;
CREATE TRIGGER embeddings_log_delete AFTER DELETE ON embeddings
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION log_vector_deletions();

CREATE TABLE queries (
    id TEXT PRIMARY KEY,
    query_text TEXT NOT NULL,
    query_embedding BYTEA,
    model_name TEXT,
    timestamp TEXT COLLATE "C" NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_queries_timestamp ON queries(timestamp);

CREATE TABLE retrievals (
    id TEXT PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    chunk_id TEXT COLLATE "C" NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_retrievals_query ON retrievals(query_id);
CREATE INDEX idx_retrievals_chunk ON retrievals(chunk_id);
"""

# Fitted embedder state (tfidf's vocabulary) by model version: every host that opens the store
# loads the files of the version its vectors were made with (a folder store keeps them in
# models/<slug>/). Migration number 3 is taken by a change on its way.
_MODEL_FILES = """
CREATE TABLE model_files (
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    path TEXT NOT NULL,
    content BYTEA NOT NULL,
    PRIMARY KEY (model_name, model_version, path)
);
"""

# The answer half, as mlflow_rag/store/schema.py ANSWERS (its comments hold here too).
_ANSWERS = """
CREATE TABLE generations (
    id TEXT COLLATE "C" PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    timestamp TEXT COLLATE "C" NOT NULL,
    prompt_name TEXT,
    prompt_version TEXT,
    generator TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_usd DOUBLE PRECISION,
    embed_ms DOUBLE PRECISION,
    retrieve_ms DOUBLE PRECISION,
    generate_ms DOUBLE PRECISION,
    answer_text TEXT,
    session_id TEXT,
    user_id TEXT,
    trace_id TEXT,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_generations_query ON generations(query_id);
CREATE INDEX idx_generations_timestamp ON generations(timestamp);
CREATE INDEX idx_generations_session ON generations(session_id);

CREATE TABLE citations (
    generation_id TEXT COLLATE "C" NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    chunk_id TEXT COLLATE "C" NOT NULL,
    document_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (generation_id, rank)
);
CREATE INDEX idx_citations_chunk ON citations(chunk_id);

CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    generation_id TEXT COLLATE "C" NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
    timestamp TEXT COLLATE "C" NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('score', 'thumbs')),
    value DOUBLE PRECISION NOT NULL,
    comment TEXT,
    user_id TEXT,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_feedback_generation ON feedback(generation_id);
"""

# Governance (issue 15): the ingest runs that wrote documents, and every version of a
# document (the current one open, replaced_at NULL), kept after the document is replaced or
# deleted. No foreign key to documents: history outlives the rows it describes.
_GOVERNANCE = """
CREATE TABLE ingest_runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    started_at TEXT NOT NULL,
    sources TEXT NOT NULL DEFAULT '[]',
    source_digest TEXT,
    embedder TEXT,
    embedder_version TEXT
);

CREATE TABLE document_versions (
    document_id TEXT COLLATE "C" NOT NULL,
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

# The opt-in audit log (issue 15), as SQLite's migration 5.
_AUDIT = """
CREATE TABLE audit_log (
    id TEXT COLLATE "C" PRIMARY KEY,
    at TEXT COLLATE "C" NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_audit_log_at ON audit_log(at);
"""

# Hash lookups by a prefix, as SQLite's migration 6 (its comment says why).
_HASH_PREFIXES = f"""
DROP INDEX idx_documents_hash;
DROP INDEX idx_chunks_text_hash;
CREATE INDEX idx_documents_hash_prefix ON documents(substr(content_hash, 1, {HASH_PREFIX_CHARS}));
CREATE INDEX idx_chunks_text_hash_prefix ON chunks(substr(text_hash, 1, {HASH_PREFIX_CHARS}));
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _INITIAL),
    Migration(2, "answers", _ANSWERS),
    Migration(3, "governance", _GOVERNANCE),
    Migration(4, "model_files", _MODEL_FILES),
    Migration(5, "audit", _AUDIT),
    Migration(6, "hash_prefixes", _HASH_PREFIXES),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
