"""Ingest's pure decisions: what happens to a document (new, updated, unchanged, rechunk),
which chunker cuts it, its chunk records and stored metadata. No store, no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from mlflow_rag.chunk.base import Chunker
from mlflow_rag.chunk.registry import CHUNKERS, default_chunker_for
from mlflow_rag.chunk.sections import section_metadata
from mlflow_rag.errors import InvalidInput
from mlflow_rag.store.access import with_labels
from mlflow_rag.store.checks import PII_KEY, content_hash
from mlflow_rag.types import ChunkRecord, SourceDocument


def chunking_identity(chunking: Mapping[str, Any] | None) -> dict[str, Any]:
    """What decides a document's chunk texts: the chunking config without its tokenizer.

    The tokenizer only sets how chunk sizes are counted; adding a model whose tokenizer
    differs keeps the stored chunks and embeds them (ingest with ``rechunk`` to re-cut them)."""
    return {k: v for k, v in (chunking or {}).items() if k != "tokenizer"}


def document_action(
    existing: tuple[str | None, Mapping[str, Any]] | None, new_hash: str,
    new_metadata: Mapping[str, Any], *, rechunk: bool = False, keep_chunking: bool = False,
) -> str:
    """"new", "unchanged", "updated" (text or loader metadata changed) or "rechunk" (same
    text and metadata, another chunking) for a document, from its stored hash and metadata.

    A document whose text and metadata are unchanged keeps its stored chunks when the
    chunking differs only by tokenizer, or when ``keep_chunking`` (no chunking option was
    given: defaults never re-cut stored documents); ``rechunk`` re-cuts it whenever its
    chunking config differs in anything, the tokenizer included.
    """
    if existing is None:
        return "new"
    old_hash, old_metadata = existing
    old, new = dict(old_metadata), dict(new_metadata)
    old_chunking, new_chunking = old.pop("chunking", None), new.pop("chunking", None)
    if old_hash != new_hash or old != new:
        return "updated"
    if old_chunking == new_chunking:
        return "unchanged"
    if rechunk:
        return "rechunk"
    if keep_chunking or chunking_identity(old_chunking) == chunking_identity(new_chunking):
        return "unchanged"
    return "rechunk"


def chunk_id(document_id: str, chunk_index: int) -> str:
    """Readable and unique: the suffix after the last '#' is always the chunk index."""
    return f"{document_id}#{chunk_index}"


def document_metadata(
    document: SourceDocument, chunking: Mapping[str, Any], *, access_labels: Sequence[str] = (),
) -> dict[str, Any]:
    """What the store keeps as documents.metadata: the loader's fields, how it was chunked,
    its access labels (its own ``_access`` field, else ``access_labels``) and PII under a key
    that search output hides unless asked for."""
    try:
        metadata = with_labels(document.metadata, list(access_labels))
    except InvalidInput as exc:
        raise InvalidInput(f"document {document.id!r} ({document.source_path}): {exc}") from None
    metadata["chunking"] = dict(chunking)
    if document.pii:
        metadata[PII_KEY] = dict(document.pii)
    return metadata


def chunk_records(document: SourceDocument, chunker: Chunker) -> tuple[ChunkRecord, ...]:
    """Chunk a document. Only the ``fields`` chunker treats sections as chunk boundaries; for
    the others sections only annotate chunks (PDF pages), so a BEIR title stays with its text.
    """
    source = document if chunker.name == "fields" else replace(document, sections=())
    spans = chunker.chunk(source)
    records = []
    for span in spans:
        metadata = dict(span.metadata)
        if document.sections and chunker.name != "fields":
            metadata.update(section_metadata(span, document.sections))
        records.append(
            ChunkRecord(
                id=chunk_id(document.id, span.chunk_index), chunk_index=span.chunk_index,
                chunk_type=span.chunk_type, text=span.text, start_char=span.start_char,
                end_char=span.end_char, token_count=span.token_count,
                text_hash=content_hash(span.text), metadata=metadata,
            )
        )
    return tuple(records)



def source_digest(documents: Iterable[SourceDocument]) -> str:
    """sha256 over (id, content hash) of every loaded document, order-independent."""
    digest = hashlib.sha256()
    for doc_id, text_hash in sorted((d.id, content_hash(d.text)) for d in documents):
        digest.update(f"{doc_id}\0{text_hash}\n".encode())
    return digest.hexdigest()


def chunker_names(
    documents: Sequence[SourceDocument], states: Mapping[str, tuple[str | None, Mapping[str, Any]]],
    asked: str | None,
) -> dict[str, str]:
    """Document id -> chunker name: the one asked for; else, for a stored document, the one it
    was stored with (a new default never re-chunks a store by itself); else its source type's
    default (fields for CSV, markdown for Markdown and HTML, recursive otherwise)."""
    names: dict[str, str] = {}
    for document in documents:
        stored = states.get(document.id)
        chunking = stored[1].get("chunking") if stored else None
        previous = chunking.get("name") if isinstance(chunking, Mapping) else None
        names[document.id] = asked or (previous if previous in CHUNKERS else None) or \
            default_chunker_for(document.source_type)
    return names


def report_chunking(
    documents: Sequence[SourceDocument], names: Mapping[str, str], chunkers: Mapping[str, Chunker]
) -> dict[str, Any]:
    """The report's chunker: its config when one chunker did it all, else the names joined
    ("markdown+recursive") and the config per source type."""
    if len(chunkers) == 1:
        return dict(next(iter(chunkers.values())).config())
    by_type: dict[str, dict[str, Any]] = {}
    for document in documents:
        by_type.setdefault(document.source_type, dict(chunkers[names[document.id]].config()))
    return {"name": "+".join(sorted(chunkers)), "by_source_type": dict(sorted(by_type.items()))}



def describe_chunking(chunking: Mapping[str, Any] | None) -> str:
    """A chunking config in a few words for messages: ``recursive 256/32 (approx-v1)``."""
    if not chunking:
        return "unknown chunking"
    size = (f" {chunking['chunk_size']}/{chunking.get('chunk_overlap')}"
            if "chunk_size" in chunking else "")
    return f"{chunking.get('name')}{size} ({chunking.get('tokenizer')})"


