"""Database rows -> the views the store returns (documents, chunks, hits); PII-marked
document metadata is left out unless asked for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlflow_rag import codec
from mlflow_rag.store.checks import PII_KEY, public_metadata
from mlflow_rag.store.hit_documents import HitDocument
from mlflow_rag.types import ChunkView, DocumentView, Hit


def chunk_view(row: Sequence[Any]) -> ChunkView:
    cid, doc_id, index, ctype, text, start, end, tokens, meta = row
    return ChunkView(
        id=cid, document_id=doc_id, chunk_index=index, chunk_type=ctype, text=text,
        start_char=start, end_char=end, token_count=tokens, metadata=codec.loads_object(meta),
    )


def document_view(
    row: Sequence[Any], chunks: tuple[ChunkView, ...], *, include_pii: bool
) -> DocumentView:
    doc_id, source_path, source_type, chash, imported, updated, meta, raw = row
    return DocumentView(
        id=doc_id, source_path=source_path, source_type=source_type, content_hash=chash,
        imported_at=imported, updated_at=updated,
        metadata=public_metadata(codec.loads_object(meta), include_pii=include_pii),
        raw_text=raw, chunks=chunks,
    )


def hit(
    row: Sequence[Any], rank: int, score: float, include_pii: bool, vector_id: int | None = None
) -> Hit:
    """A hit of a row (chunk id, document id, chunk type, chunk index, text, chunk metadata,
    source path, document metadata): the last field JSON text, or the document's
    :class:`HitDocument` when the row came through the map (decoded once a generation)."""
    chunk_id, doc_id, ctype, cindex, text, cmeta, source_path, dmeta = row
    if isinstance(dmeta, HitDocument):
        document_metadata = dmeta.metadata(include_pii=include_pii)
    else:
        document_metadata = _object(dmeta)
        if not include_pii and PII_KEY in document_metadata:
            document_metadata = public_metadata(document_metadata, include_pii=False)
    # Positional: keywords cost 1.5 us more a hit (ten a search).
    return Hit(rank, score, chunk_id, doc_id, ctype, cindex, text, source_path,
               document_metadata, _object(cmeta), vector_id)


def _object(text: str | None) -> dict[str, Any]:
    """A metadata column decoded (a fresh dict each call: callers may change theirs). Most
    chunks' metadata is empty: '{}' skips the JSON parser (a fixed cost per hit)."""
    return {} if text == "{}" else codec.loads_object(text)



def dense_hits(
    ids: Sequence[int], scores: Sequence[float], rows: Mapping[int, Sequence[Any]], *,
    include_pii: bool,
) -> tuple[list[Hit], int]:
    """Hits in the index's order, and how many ids had no row (those are never returned)."""
    hits: list[Hit] = []
    orphans = 0
    for vector_id, score in zip(ids, scores, strict=True):
        row = rows.get(vector_id)
        if row is None:
            orphans += 1
            continue
        hits.append(hit(row, len(hits) + 1, float(score), include_pii, vector_id))
    return hits, orphans


def lexical_hits(rows: Sequence[Sequence[Any]], *, include_pii: bool) -> list[Hit]:
    """BM25 rows (score first) -> hits in their order."""
    return [hit(row[1:], i + 1, float(row[0]), include_pii) for i, row in enumerate(rows)]
