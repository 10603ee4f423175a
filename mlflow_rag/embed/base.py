"""The Embedder protocol. One contract test suite runs against every implementation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeGuard, runtime_checkable

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
    """An embedder fitted on the corpus (tfidf): fitted at ingest, saved with the store, and
    refitted when the corpus outgrows the fit (the ingest's refit rule reads these)."""

    @property
    def fitted(self) -> bool: ...

    @property
    def n_documents(self) -> int:
        """Texts the fit saw (only once fitted)."""
        ...

    @property
    def n_features(self) -> int:
        """Terms of the fitted vocabulary (only once fitted)."""
        ...

    def fit(self, texts: Sequence[str]) -> None: ...

    def save(self, directory: Path) -> None: ...

    def unknown_terms(self, texts: Sequence[str]) -> tuple[int, int]:
        """(distinct terms of ``texts`` the vocabulary lacks, distinct terms of ``texts``)."""
        ...


_FITTED_METHODS = ("fit", "save", "unknown_terms")


def is_fitted_embedder(model: Embedder) -> TypeGuard[FittedEmbedder]:
    """Whether ``model`` is a :class:`FittedEmbedder`, by its methods. (Not isinstance: on
    Python 3.11 that evaluates every property, and an unfitted embedder's ``n_documents``
    raises.)"""
    return all(callable(getattr(model, method, None)) for method in _FITTED_METHODS)


@runtime_checkable
class TokenizedEmbedder(Protocol):
    """An embedder with its own tokenizer (MiniLM): chunks are sized in its tokens, so none is
    longer than it reads."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of each token of ``text``."""
        ...


@runtime_checkable
class WindowedEmbedder(Protocol):
    """An embedder that reads at most ``max_tokens`` tokens of a text (the rest is cut)."""

    max_tokens: int
