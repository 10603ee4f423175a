"""The ``fixed`` chunker: windows of ``chunk_size`` tokens sharing ``chunk_overlap`` tokens."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_rag.chunk._common import (
    ALGORITHM_VERSION,
    DEFAULT_CHUNK_SIZE,
    Planned,
    assemble,
    default_overlap,
    fit_windows,
    regions,
    validate_sizes,
)
from mlflow_rag.chunk.base import TokenSpans
from mlflow_rag.chunk.tokens import approx_token_spans, tokenizer_name
from mlflow_rag.types import ChunkSpan, SourceDocument


@dataclass(frozen=True, kw_only=True)
class FixedChunker:
    """Sliding windows over the tokens, blind to sentences and paragraphs (the baseline).

    Window ``k`` starts ``k * (chunk_size - chunk_overlap)`` tokens in; the last window ends at
    the last token (it is not padded or shifted back). Sections are hard boundaries, as in the
    recursive chunker; ``chunk_type`` is the section name or ``"text"``. ``chunk_overlap``
    defaults to ``chunk_size // 8``.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int | None = None
    token_spans: TokenSpans = approx_token_spans
    # Unannotated on purpose: a class attribute, not a dataclass field, so it reads as the
    # protocol's plain ``name: str`` (a frozen field would be a read-only property to mypy).
    name = "fixed"

    def __post_init__(self) -> None:
        validate_sizes(self.chunk_size, self.overlap)

    @property
    def overlap(self) -> int:
        """The overlap in tokens actually used (``chunk_overlap`` or ``chunk_size // 8``)."""
        if self.chunk_overlap is None:
            return default_overlap(self.chunk_size)
        return self.chunk_overlap

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

    def config(self) -> dict[str, object]:
        return {
            "name": self.name,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.overlap,
            "tokenizer": tokenizer_name(self.token_spans),
            "version": ALGORITHM_VERSION,
        }
