"""The Chunker protocol and the token-counter type every chunker takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mlflow_rag.types import ChunkSpan, SourceDocument

# Returns the character spans of the tokens of ``text`` (start, end), in order.
# Chunkers measure sizes in these tokens; token_count is len(spans) of the chunk's text.
TokenSpans = Callable[[str], list[tuple[int, int]]]


class Chunker(Protocol):
    name: str

    def chunk(self, document: SourceDocument) -> list[ChunkSpan]:
        """Chunks in order, ``chunk_index`` 0..n-1, ``document.text[s:e] == chunk.text``."""
        ...

    def config(self) -> dict[str, object]:
        """Name and settings, JSON-serialisable (logged as params; part of the change check)."""
        ...
