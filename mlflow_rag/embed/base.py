"""The Embedder protocol. One contract test suite runs against every implementation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mlflow_rag.types import EmbedResult


@runtime_checkable
class Embedder(Protocol):
    name: str  # the store's model_name, e.g. "minilm", "tfidf", "openai:text-embedding-3-small"
    version: str  # model_version, e.g. "sentence-transformers/all-MiniLM-L6-v2"
    dimension: int

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """float32 (len(texts), dimension), L2-normalised; refuses NaN/inf and empty texts."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """float32 (dimension,), L2-normalised."""
        ...


class FittedEmbedder(Embedder, Protocol):
    """An embedder fitted on the corpus (tfidf): fitted at ingest, saved with the store."""

    def fit(self, texts: Sequence[str]) -> None: ...

    def save(self, directory: Path) -> None: ...
