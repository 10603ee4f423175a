"""Chunkers by name, with the defaults the CLI and the pipeline use.

Defaults: ``chunk_size`` 256 tokens, ``chunk_overlap`` ``chunk_size // 8`` (32 for 256). Sizes
are in the tokens of ``token_spans`` (the embedder's tokenizer when it has one), else in
:func:`~mlflow_rag.chunk.tokens.approx_token_spans` tokens.
"""

from __future__ import annotations

from mlflow_rag.chunk._common import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    default_overlap,
)
from mlflow_rag.chunk.base import Chunker, TokenSpans
from mlflow_rag.chunk.fields import FieldsChunker
from mlflow_rag.chunk.fixed import FixedChunker
from mlflow_rag.chunk.markdown import MarkdownChunker
from mlflow_rag.chunk.recursive import RecursiveChunker
from mlflow_rag.chunk.tokens import approx_token_spans
from mlflow_rag.errors import UnknownChoice

__all__ = [
    "CHUNKERS",
    "DEFAULT_CHUNK_OVERLAP",
    "DEFAULT_CHUNK_SIZE",
    "default_chunker_for",
    "get_chunker",
]

CHUNKERS: tuple[str, ...] = ("fields", "fixed", "markdown", "recursive")

# Sources whose documents are already split into meaningful fields (CSV columns; the legacy
# JSON embeddings files of the speaker-bio data) keep one chunk per field.
_FIELD_SOURCES = frozenset({"csv", "legacy"})


def get_chunker(
    name: str,
    *,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    token_spans: TokenSpans | None = None,
) -> Chunker:
    """The chunker called ``name``, configured.

    ``None`` means the default: ``chunk_size`` 256, ``chunk_overlap`` ``chunk_size // 8``,
    ``token_spans`` the approximate tokenizer. ``fields`` has no size and ignores
    ``chunk_size`` / ``chunk_overlap`` (so one CLI default can be passed to every chunker).
    Raises :class:`~mlflow_rag.errors.UnknownChoice` for an unknown name and
    :class:`~mlflow_rag.errors.InvalidInput` for sizes that are not ``0 <= overlap < size``.
    """
    spans = approx_token_spans if token_spans is None else token_spans
    if name == "fields":
        return FieldsChunker(token_spans=spans)
    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    overlap = chunk_overlap
    if overlap is None and isinstance(size, int):  # a bad size is reported by the chunker
        overlap = default_overlap(size)
    if name == "fixed":
        return FixedChunker(chunk_size=size, chunk_overlap=overlap, token_spans=spans)
    if name == "recursive":
        return RecursiveChunker(chunk_size=size, chunk_overlap=overlap, token_spans=spans)
    if name == "markdown":
        return MarkdownChunker(chunk_size=size, chunk_overlap=overlap, token_spans=spans)
    raise UnknownChoice("chunker", name, CHUNKERS)


# Sources whose text has Markdown headings: Markdown files, and HTML files (their headings
# become "#" lines). Web pages keep "recursive", the default stores were built with.
_HEADING_SOURCES = frozenset({"markdown", "html"})


def default_chunker_for(source_type: str) -> str:
    """``"fields"`` for ``csv`` and ``legacy`` sources, ``"markdown"`` for ``markdown`` and
    ``html`` files, ``"recursive"`` for everything else."""
    if source_type in _FIELD_SOURCES:
        return "fields"
    return "markdown" if source_type in _HEADING_SOURCES else "recursive"
