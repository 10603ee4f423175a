"""Frozen dataclasses passed between layers. No behaviour beyond small derived properties."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Section:
    """A named span of a document's text: a CSV text column, a PDF page, a BEIR title/text.

    ``text[start:end]`` of the owning document is the section's text. Chunkers may use sections
    as hard boundaries (the ``fields`` chunker emits one chunk per section); the pipeline copies
    the metadata of the sections a chunk overlaps (for example PDF page numbers) into the chunk.
    """

    name: str
    start: int
    end: int
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceDocument:
    """One document as a loader produced it, before chunking.

    ``id`` is stable across re-ingests of the same source (the CSV id column, a file's relative
    path, a URL, a BEIR ``_id``), so a changed document replaces its previous version.
    ``metadata`` goes to ``documents.metadata`` (loaders add file size, encoding, loader version).
    ``pii`` holds values of PII-marked fields: stored, never embedded, hidden from search output
    unless asked for.
    """

    id: str
    source_path: str
    source_type: str
    text: str
    sections: tuple[Section, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pii: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadFailure:
    """A source item that was reported and skipped (the rest of the batch still lands)."""

    source_path: str
    reason: str


# --------------------------------------------------------------------------- chunking


@dataclass(frozen=True)
class ChunkSpan:
    """A chunk as a chunker produced it: ``document.text[start_char:end_char] == text``."""

    chunk_index: int
    chunk_type: str
    text: str
    start_char: int
    end_char: int
    token_count: int
    metadata: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- embedding


@dataclass(frozen=True)
class EmbedResult:
    """Vectors for a batch of texts: float32 (n, dimension), L2-normalised, plus accounting."""

    vectors: np.ndarray
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- store input


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk ready to store. ``text_hash`` is sha256 of ``text`` (the embedding cache key)."""

    id: str
    chunk_index: int
    chunk_type: str | None
    text: str
    start_char: int | None
    end_char: int | None
    token_count: int | None
    text_hash: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorBatch:
    """Vectors of one embedding model for a document's chunks, in chunk order."""

    model_name: str
    vectors: np.ndarray
    model_version: str | None = None
    metadata: tuple[Mapping[str, Any], ...] | None = None  # per chunk, optional


@dataclass(frozen=True)
class DocumentRecord:
    """A document with its chunks and their vectors, written in one transaction."""

    id: str
    source_path: str
    source_type: str
    content_hash: str
    raw_text: str | None
    chunks: tuple[ChunkRecord, ...]
    vectors: tuple[VectorBatch, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteReport:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks: int = 0
    vectors: int = 0
    generation: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class DocumentVersion:
    """One version of a document: what it held (its content hash, its source), when and by
    which ingest run it was written, and when, by which run and how (``"updated"`` or
    ``"deleted"``) it ended; the current version has ``replaced_at`` None. Runs are ingest
    ids (``IngestReport.ingest_id``); None: written through the API, or before versions were
    kept."""

    version: int
    content_hash: str | None
    source_path: str
    written_at: str
    written_by: str | None
    replaced_at: str | None = None
    replaced_by: str | None = None
    ended_by: str | None = None


@dataclass(frozen=True)
class IngestRun:
    """The ingest run a write belongs to: recorded with the documents it writes (their
    versions name it), so ``lineage`` can say which run wrote or replaced what."""

    id: str
    started_at: str
    sources: tuple[str, ...] = ()
    source_digest: str | None = None
    embedder: str | None = None
    embedder_version: str | None = None


# --------------------------------------------------------------------------- store output


@dataclass(frozen=True)
class ChunkView:
    id: str
    document_id: str
    chunk_index: int
    chunk_type: str | None
    text: str
    start_char: int | None
    end_char: int | None
    token_count: int | None
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class DocumentView:
    id: str
    source_path: str
    source_type: str
    content_hash: str | None
    imported_at: str
    updated_at: str | None
    metadata: Mapping[str, Any]
    raw_text: str | None
    chunks: tuple[ChunkView, ...] = ()


@dataclass(frozen=True, init=False)
class Hit:
    """One search result, hydrated from SQLite. ``rank`` starts at 1."""

    rank: int
    score: float
    chunk_id: str
    document_id: str
    chunk_type: str | None
    chunk_index: int
    text: str
    source_path: str
    document_metadata: Mapping[str, Any]
    chunk_metadata: Mapping[str, Any]
    vector_id: int | None = None

    def __init__(
        self, rank: int, score: float, chunk_id: str, document_id: str, chunk_type: str | None,
        chunk_index: int, text: str, source_path: str, document_metadata: Mapping[str, Any],
        chunk_metadata: Mapping[str, Any], vector_id: int | None = None,
    ) -> None:
        # One dict update instead of the frozen dataclass's __init__, which sets each field
        # through object.__setattr__: 2.5 instead of 5 us a hit, ten per search (issue 19).
        self.__dict__.update(
            rank=rank, score=score, chunk_id=chunk_id, document_id=document_id,
            chunk_type=chunk_type, chunk_index=chunk_index, text=text, source_path=source_path,
            document_metadata=document_metadata, chunk_metadata=chunk_metadata,
            vector_id=vector_id,
        )

    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``--json`` shape (contract)."""
        return {
            "rank": self.rank,
            "score": self.score,
            "chunk_id": self.chunk_id,
            "document_id": self.document_id,
            "chunk_type": self.chunk_type,
            "text": self.text,
            "source_path": self.source_path,
            "document_metadata": dict(self.document_metadata),
            "chunk_metadata": dict(self.chunk_metadata),
        }


@dataclass(frozen=True)
class ModelInfo:
    """One embedding space in a store."""

    name: str
    slug: str
    dimension: int
    embedder: str | None
    model_version: str | None
    index_type: str
    index_params: Mapping[str, Any]
    vector_count: int
    generation: int


@dataclass(frozen=True)
class StoreStats:
    documents: int
    chunks: int
    embeddings: int
    queries: int
    retrievals: int
    generation: int
    schema_version: int
    bytes_on_disk: int
    models: tuple[ModelInfo, ...]
    source_types: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "chunks": self.chunks,
            "embeddings": self.embeddings,
            "queries": self.queries,
            "retrievals": self.retrievals,
            "generation": self.generation,
            "schema_version": self.schema_version,
            "bytes_on_disk": self.bytes_on_disk,
            "source_types": dict(self.source_types),
            "models": {
                m.name: {
                    "slug": m.slug,
                    "dimension": m.dimension,
                    "embedder": m.embedder,
                    "model_version": m.model_version,
                    "index_type": m.index_type,
                    "index_params": dict(m.index_params),
                    "vector_count": m.vector_count,
                    "generation": m.generation,
                }
                for m in self.models
            },
        }


# --------------------------------------------------------------------------- ingestion


@dataclass(frozen=True)
class IngestReport:
    """What one ingestion did; the CLI prints it and MLflow logs it as params and metrics."""

    sources: tuple[str, ...]
    source_digest: str  # sha256 over the sources' bytes (files) or URLs
    loader: str
    chunker: Mapping[str, Any]  # name and settings
    embedder: str  # the store's model_name, e.g. "minilm"
    embedder_version: str | None
    dimension: int
    index: Mapping[str, Any]  # {"kind": ..., "params": {...}}
    documents_new: int = 0
    documents_updated: int = 0
    documents_unchanged: int = 0
    documents_failed: int = 0
    chunks: int = 0
    vectors_embedded: int = 0
    vectors_cached: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: Mapping[str, float] = field(default_factory=dict)  # stage -> seconds
    failures: tuple[LoadFailure, ...] = ()
    store_generation: int = 0
    store_bytes: int = 0
    # files of a folder or glob that no loader reads, by extension ({".docx": 2}); not failures
    skipped: Mapping[str, int] = field(default_factory=dict)
    documents_deleted: int = 0  # gone from their sources (ingest --sync)
    ingest_id: str = ""  # the run's id in the store (document versions name it); "" none

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.total_seconds if self.total_seconds > 0 else 0.0
