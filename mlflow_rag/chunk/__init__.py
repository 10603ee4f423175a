"""Chunkers: documents -> ChunkSpans, sized in tokens (see :mod:`mlflow_rag.chunk.tokens`)."""

from mlflow_rag.chunk.base import Chunker, TokenSpans
from mlflow_rag.chunk.contract import contract_violations
from mlflow_rag.chunk.fields import FieldsChunker
from mlflow_rag.chunk.fixed import FixedChunker
from mlflow_rag.chunk.markdown import MarkdownChunker, MarkdownSection, markdown_sections
from mlflow_rag.chunk.recursive import RecursiveChunker, split_recursive
from mlflow_rag.chunk.registry import (
    CHUNKERS,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    default_chunker_for,
    get_chunker,
)
from mlflow_rag.chunk.sections import section_metadata
from mlflow_rag.chunk.tokens import approx_token_spans, count_tokens, tokenizer_name

__all__ = [
    "CHUNKERS",
    "DEFAULT_CHUNK_OVERLAP",
    "DEFAULT_CHUNK_SIZE",
    "Chunker",
    "FieldsChunker",
    "FixedChunker",
    "MarkdownChunker",
    "MarkdownSection",
    "RecursiveChunker",
    "TokenSpans",
    "approx_token_spans",
    "contract_violations",
    "count_tokens",
    "default_chunker_for",
    "get_chunker",
    "markdown_sections",
    "section_metadata",
    "split_recursive",
    "tokenizer_name",
]
