"""The ``fixed`` chunker: windows of ``chunk_size`` tokens sharing ``chunk_overlap`` tokens."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_rag.chunk._common import (
    Planned,
    SizedChunker,
    assemble,
    fit_windows,
    regions,
)
from mlflow_rag.types import ChunkSpan, SourceDocument


@dataclass(frozen=True, kw_only=True)
class FixedChunker(SizedChunker):
    """Sliding windows over the tokens, blind to sentences and paragraphs (the baseline).

    Window ``k`` starts ``k * (chunk_size - chunk_overlap)`` tokens in; the last window ends at
    the last token (it is not padded or shifted back). Sections are hard boundaries, as in the
    recursive chunker; ``chunk_type`` is the section name or ``"text"``. ``chunk_overlap``
    defaults to ``chunk_size // 8``.
    """

    name = "fixed"

    def chunk(self, document: SourceDocument) -> list[ChunkSpan]:
        planned = [
            Planned(s, e, n, region.chunk_type)
            for region in regions(document)
            for s, e, n in fit_windows(
                document.text,
                region.start,
                region.end,
                chunk_size=self.chunk_size,
                chunk_overlap=self.overlap,
                token_spans=self.token_spans,
            )
        ]
        return assemble(document, planned)
