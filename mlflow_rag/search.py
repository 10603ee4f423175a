"""Query -> hits: dense, BM25 or hybrid, with pre-filters and optional query logging.

The store answers dense (vector given) and lexical searches; this module embeds the query
with the embedder the store was built with, and fuses rankings for hybrid search.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlflow_rag.embed.base import Embedder
from mlflow_rag.errors import EmbedderUnavailable, InvalidInput, UnknownChoice
from mlflow_rag.store.filters import compile_filter
from mlflow_rag.store.store import Store, check_k
from mlflow_rag.types import Hit

MODES = ("dense", "bm25", "hybrid")
DEFAULT_MODE = "hybrid"
RRF_K = 60  # the constant of Cormack et al. (2009); robust across collections
MAX_QUERY_CHARS = 10_000

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def redact_emails(text: str) -> str:
    """A redaction hook for query logs: e-mail addresses become ``<email>``."""
    return EMAIL.sub("<email>", text)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UnknownChoice("search mode", mode, MODES)
    return mode


def check_query(text: Any) -> str:
    """Queries must be non-empty strings of bounded size (the message never echoes them)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("query must be a non-empty string")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"query is {len(text)} characters long; at most {MAX_QUERY_CHARS}")
    return text


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], *, k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Fuse ranked id lists: score(id) = sum_i w_i / (k + rank_i(id)), best first.

    Ties keep the order of first appearance (earlier lists, better ranks first).
    """
    weights = weights or [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise InvalidInput(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[str, float] = {}
    for weight, ranking in zip(weights, rankings, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


class Searcher:
    """Searches one store; embeds queries with the store's embedder (loaded once)."""

    def __init__(
        self, store: Store, *, model: str | None = None, embedder: Embedder | None = None,
        redact: Callable[[str], str] | None = redact_emails,
    ) -> None:
        self.store = store
        self.model_name = model
        self._embedder = embedder
        self.redact = redact

    def _model(self) -> str | None:
        """The embedding space: the one asked for, else the store's only one (None if none)."""
        if self.model_name is not None:
            return self.model_name
        models = self.store.models()
        if len(models) == 1:
            return models[0].name
        return self.store.model(None).name if models else None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from mlflow_rag.embed.registry import get_embedder

            info = self.store.model(self._model())
            if not info.embedder:
                raise EmbedderUnavailable(
                    f"model {info.name!r} has no known embedder (imported vectors); "
                    "search it with a vector, or use --mode bm25"
                )
            state = self.store.model_dir(info.name)
            self._embedder = get_embedder(info.embedder, state_dir=state if state.is_dir() else None)
        return self._embedder

    def embed_query(self, text: str) -> np.ndarray:
        return self.embedder.embed_query(check_query(text))

    def search(
        self, query: str, *, k: int = 10, mode: str = DEFAULT_MODE,
        filters: str | Mapping[str, Any] | None = None, include_pii: bool = False,
        log: bool = False, candidates: int | None = None,
    ) -> list[Hit]:
        """Top-k hits for ``query``. Hybrid fuses the top ``candidates`` of dense and BM25."""
        check_query(query)
        check_mode(mode)
        k = check_k(k)
        if filters:
            compile_filter(filters)  # a bad filter fails before any embedding work
        vector = None
        if mode == "bm25":
            hits = self.store.lexical_search(query, k=k, filters=filters, include_pii=include_pii)
        elif mode == "dense":
            vector = self.embed_query(query)
            hits = self.store.dense_search(
                vector, model=self._model(), k=k, filters=filters, include_pii=include_pii
            )
        else:
            vector = self.embed_query(query)
            hits = self.hybrid(query, vector, k=k, filters=filters, include_pii=include_pii,
                               candidates=candidates)
        if log:
            self.store.log_query(
                query, hits, model_name=self._model() if mode != "bm25" else None,
                embedding=vector, metadata={"mode": mode, "k": k}, redact=self.redact,
            )
        return hits

    def hybrid(
        self, query: str, vector: np.ndarray, *, k: int,
        filters: str | Mapping[str, Any] | None = None, include_pii: bool = False,
        candidates: int | None = None,
    ) -> list[Hit]:
        depth = check_k(candidates or max(100, 2 * k))
        dense = self.store.dense_search(
            vector, model=self._model(), k=depth, filters=filters, include_pii=include_pii
        )
        lexical = self.store.lexical_search(query, k=depth, filters=filters,
                                            include_pii=include_pii)
        fused = reciprocal_rank_fusion(
            [[h.chunk_id for h in dense], [h.chunk_id for h in lexical]]
        )[:k]
        by_id = {h.chunk_id: h for h in lexical}
        by_id.update({h.chunk_id: h for h in dense})
        out = []
        for rank, (chunk_id, score) in enumerate(fused, start=1):
            hit = by_id[chunk_id]
            out.append(
                Hit(
                    rank=rank, score=score, chunk_id=hit.chunk_id, document_id=hit.document_id,
                    chunk_type=hit.chunk_type, chunk_index=hit.chunk_index, text=hit.text,
                    source_path=hit.source_path, document_metadata=hit.document_metadata,
                    chunk_metadata=hit.chunk_metadata, vector_id=hit.vector_id,
                )
            )
        return out
