"""The ``fields`` chunker: one chunk per section (a CSV text column, a BEIR title or text)."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_rag.chunk._common import ALGORITHM_VERSION, Planned, assemble, regions
from mlflow_rag.chunk.base import TokenSpans
from mlflow_rag.chunk.tokens import approx_token_spans, count_tokens, tokenizer_name
from mlflow_rag.types import ChunkSpan, SourceDocument


@dataclass(frozen=True, kw_only=True)
class FieldsChunker:
    """One chunk per non-blank section, ``chunk_type`` = the section name (``"abstract"``).

    A document without sections becomes one chunk of its whole text, ``chunk_type`` ``"text"``.
    Surrounding whitespace is left out by moving the offsets, never by editing the text. There
    is no size limit: a section longer than the embedder's window is truncated by the embedder,
    so use ``recursive`` for long fields. ``token_spans`` only sets how ``token_count`` is
    counted.
    """

    token_spans: TokenSpans = approx_token_spans
    # Unannotated on purpose: a class attribute, not a dataclass field, so it reads as the
    # protocol's plain ``name: str`` (a frozen field would be a read-only property to mypy).
    name = "fields"

    def chunk(self, document: SourceDocument) -> list[ChunkSpan]:
        text = document.text
        planned = [
            Planned(
                region.start,
                region.end,
                count_tokens(text[region.start : region.end], self.token_spans),
                region.chunk_type,
            )
            for region in regions(document)
        ]
        return assemble(document, planned)

    def config(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tokenizer": tokenizer_name(self.token_spans),
            "version": ALGORITHM_VERSION,
        }
