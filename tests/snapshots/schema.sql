-- index idx_audit_log_at
CREATE INDEX idx_audit_log_at ON audit_log(at);

-- index idx_chunk_fields_chunk
CREATE INDEX idx_chunk_fields_chunk ON chunk_fields(chunk_id);

-- index idx_chunk_fields_key
CREATE INDEX idx_chunk_fields_key ON chunk_fields(key, value, chunk_id);

-- index idx_chunks_document
CREATE INDEX idx_chunks_document ON chunks(document_id, id);

-- index idx_chunks_text_hash_prefix
CREATE INDEX idx_chunks_text_hash_prefix ON chunks(substr(text_hash, 1, 8));

-- index idx_chunks_type
CREATE INDEX idx_chunks_type ON chunks(chunk_type);

-- index idx_citations_chunk
CREATE INDEX idx_citations_chunk ON citations(chunk_id);

-- index idx_document_fields_document
CREATE INDEX idx_document_fields_document ON document_fields(document_id);

-- index idx_document_fields_key
CREATE INDEX idx_document_fields_key ON document_fields(key, value, document_id);

-- index idx_document_versions_run
CREATE INDEX idx_document_versions_run ON document_versions(written_by);

-- index idx_documents_hash_prefix
CREATE INDEX idx_documents_hash_prefix ON documents(substr(content_hash, 1, 8));

-- index idx_documents_source
CREATE INDEX idx_documents_source ON documents(source_path);

-- index idx_embeddings_chunk
CREATE INDEX idx_embeddings_chunk ON embeddings(chunk_id, model_name, vector_id);

-- index idx_embeddings_model
CREATE INDEX idx_embeddings_model ON embeddings(model_name);

-- index idx_feedback_generation
CREATE INDEX idx_feedback_generation ON feedback(generation_id);

-- index idx_generations_query
CREATE INDEX idx_generations_query ON generations(query_id);

-- index idx_generations_session
CREATE INDEX idx_generations_session ON generations(session_id);

-- index idx_generations_timestamp
CREATE INDEX idx_generations_timestamp ON generations(timestamp);

-- index idx_queries_timestamp
CREATE INDEX idx_queries_timestamp ON queries(timestamp);

-- index idx_retrievals_chunk
CREATE INDEX idx_retrievals_chunk ON retrievals(chunk_id);

-- index idx_retrievals_query
CREATE INDEX idx_retrievals_query ON retrievals(query_id);

-- index idx_vector_deletions_model
CREATE INDEX idx_vector_deletions_model ON vector_deletions(model_name, generation);

-- table audit_log
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
);

-- table chunk_fields
CREATE TABLE chunk_fields (
    chunk_id TEXT NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value
);

-- table chunks
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

-- table chunks_fts
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, content='chunks', content_rowid='fts_rowid',
    tokenize='porter unicode61 remove_diacritics 2'
);

-- table chunks_fts_config
CREATE TABLE 'chunks_fts_config'(k PRIMARY KEY, v) WITHOUT ROWID;

-- table chunks_fts_data
CREATE TABLE 'chunks_fts_data'(id INTEGER PRIMARY KEY, block BLOB);

-- table chunks_fts_docsize
CREATE TABLE 'chunks_fts_docsize'(id INTEGER PRIMARY KEY, sz BLOB);

-- table chunks_fts_idx
CREATE TABLE 'chunks_fts_idx'(segid, term, pgno, PRIMARY KEY(segid, term)) WITHOUT ROWID;

-- table citations
CREATE TABLE citations (
    generation_id TEXT NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    PRIMARY KEY (generation_id, rank)
);

-- table document_fields
CREATE TABLE document_fields (
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value
);

-- table document_versions
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

-- table documents
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

-- table embeddings
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

-- table feedback
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

-- table generations
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

-- table ingest_runs
CREATE TABLE ingest_runs (
    id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    sources TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(sources)),
    source_digest TEXT,
    embedder TEXT,
    embedder_version TEXT
);

-- table models
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

-- table queries
CREATE TABLE queries (
    id TEXT PRIMARY KEY,
    query_text TEXT NOT NULL,
    query_embedding BLOB,
    model_name TEXT,
    timestamp TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);

-- table retrievals
CREATE TABLE retrievals (
    id TEXT PRIMARY KEY,
    query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    chunk_id TEXT NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    score REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);

-- table schema_migrations
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL);

-- table store_meta
CREATE TABLE store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- table vector_deletions
CREATE TABLE vector_deletions (
    vector_id INTEGER PRIMARY KEY,
    model_name TEXT NOT NULL,
    generation INTEGER NOT NULL
);

-- trigger chunks_fts_delete
CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.fts_rowid, old.text);
END;

-- trigger chunks_fts_update
CREATE TRIGGER chunks_fts_update AFTER UPDATE OF text, fts_rowid ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.fts_rowid, old.text);
    INSERT INTO chunks_fts(rowid, text) VALUES (new.fts_rowid, new.text);
END;

-- trigger embeddings_log_delete
CREATE TRIGGER embeddings_log_delete AFTER DELETE ON embeddings BEGIN
    INSERT OR REPLACE INTO vector_deletions(vector_id, model_name, generation)
    VALUES (old.vector_id, old.model_name,
            (SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = 'generation'));
END;

