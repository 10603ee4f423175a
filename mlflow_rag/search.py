"""Query -> hits: dense, BM25 or hybrid, with pre-filters and optional query logging.

The store answers dense (vector given) and lexical searches; this module embeds the query
with the embedder the store was built with, and fuses rankings for hybrid search.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_rag.embed.base import Embedder
from mlflow_rag.errors import EmbedderUnavailable, InvalidInput, ModelNotFound, UnknownChoice
from mlflow_rag.store.access import Principal, restrict
from mlflow_rag.store.checks import MAX_K, check_k
from mlflow_rag.store.filters import as_plan, parse_filter
from mlflow_rag.store.request import Retrieval
from mlflow_rag.store.store import Store
from mlflow_rag.types import Hit

MODES = ("dense", "bm25", "hybrid")
DEFAULT_MODE = "hybrid"
RRF_K = 60  # the constant of Cormack et al. (2009); robust across collections
# Hybrid fusion methods (see fuse()). "rrf" uses ranks only; the two "convex" methods add the
# scores themselves, each list normalised per query, with equal weights (no tuned constant).
FUSIONS = ("rrf", "convex-minmax", "convex-zscore")
# The default: z-scored scores, summed. RRF throws away how far apart scores are, so a weak
# list's arbitrary order counts as much as a strong list's clear winner. On SciFact (training
# claims, evaluations/RESULTS.md) z-score fusion beat RRF by +0.02 nDCG@10 with MiniLM and
# +0.09 with TF-IDF, matching Bruch et al. (2023); z-scores are also less swayed than min-max
# by one outlying top score.
DEFAULT_FUSION = "convex-zscore"
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


@dataclass(frozen=True)
class SearchRequest:
    """One query, parsed once at the boundary (the CLI, :meth:`Searcher.search`, serving):
    its text checked, its mode one of :data:`MODES`, ``k`` checked and its filter compiled
    (``retrieval``). The layers below take it as it is and check nothing again.

    ``filters`` is the filter as parsed (``{}``: none), for query logs and traces. ``depth``
    is how many candidates of each list a hybrid search fuses. Build it with :meth:`parse`
    (:meth:`of_checked_query` for text checked already); :meth:`with_query` and
    :meth:`with_k` derive one from another without checking again.
    """

    query: str
    mode: str
    retrieval: Retrieval
    filters: Mapping[str, Any] = field(default_factory=dict)
    depth: int = 0
    principal: Principal | None = None  # who it reads as (in retrieval's plan already)

    @property
    def k(self) -> int:
        return self.retrieval.k

    @classmethod
    def parse(
        cls, query: Any, *, k: Any = 10, mode: str = DEFAULT_MODE,
        filters: str | Mapping[str, Any] | None = None, candidates: int | None = None,
        principal: Principal | None = None,
    ) -> SearchRequest:
        """Check everything a search needs before any work: a bad filter fails before the
        query is embedded. With a ``principal``, only what it may see is searched."""
        check_query(query)
        return cls.of_checked_query(query, k=k, mode=mode, filters=filters, candidates=candidates,
                                    principal=principal)

    @classmethod
    def of_checked_query(
        cls, query: str, *, k: Any = 10, mode: str = DEFAULT_MODE,
        filters: str | Mapping[str, Any] | None = None, candidates: int | None = None,
        principal: Principal | None = None,
    ) -> SearchRequest:
        """:meth:`parse` for a query checked already (by :func:`check_query`); use
        :meth:`with_query` to ask the same of other checked queries."""
        checked_k = check_k(k)  # k, the mode, then the filter: serving's order of checks
        check_mode(mode)
        parsed = parse_filter(filters)
        retrieval = Retrieval(k=checked_k, plan=restrict(as_plan(parsed), principal))
        depth = 0
        if mode == "hybrid":
            depth = check_k(candidates) if candidates else _hybrid_depth(retrieval.k)
        return cls(query=query, mode=mode, retrieval=retrieval, filters=parsed, depth=depth,
                   principal=principal)

    def with_k(self, k: int) -> SearchRequest:
        """The same request for ``k`` results (in range: derived from a checked ``k``); a
        hybrid search fuses its default depth of candidates for it."""
        depth = _hybrid_depth(k) if self.mode == "hybrid" else 0
        return SearchRequest(query=self.query, mode=self.mode,
                             retrieval=self.retrieval.deeper(k), filters=self.filters,
                             depth=depth, principal=self.principal)

    def with_query(self, query: str) -> SearchRequest:
        """The same request for another query, checked already by :func:`check_query`."""
        return SearchRequest(query=query, mode=self.mode, retrieval=self.retrieval,
                             filters=self.filters, depth=self.depth, principal=self.principal)


def _log_metadata(request: SearchRequest) -> dict[str, Any]:
    """What a logged query records of its request: mode, k and who it read as (an audit of
    principal searches; lineage shows it with the queries that retrieved a document)."""
    metadata: dict[str, Any] = {"mode": request.mode, "k": request.k}
    if request.principal is not None:
        metadata["principal"] = request.principal.name
        metadata["groups"] = list(request.principal.groups)
    return metadata


def _hybrid_depth(k: int) -> int:
    """Candidates of each list a hybrid search of ``k`` results fuses by default: twice ``k``
    (at least 100), never more than a search may ask for. It is the searcher's number, not
    the user's, so a valid ``k`` must never make it an error."""
    return min(MAX_K, max(100, 2 * k))


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


def check_fusion(fusion: str) -> str:
    if fusion not in FUSIONS:
        raise UnknownChoice("fusion", fusion, FUSIONS)
    return fusion


def normalize_scores(scores: Sequence[float], *, method: str = "minmax") -> list[float]:
    """Scores of one ranked list on a common scale, so lists of different scorers can be added.

    ``minmax``: ``(s - min) / (max - min)``, in [0, 1]. ``zscore``: ``(s - mean) / std``. A
    list whose scores are all equal (or a single score) carries no spread: every item gets 1.0
    under minmax (it is the best the list has) and 0.0 under zscore (it is the mean).
    """
    if method not in ("minmax", "zscore"):
        raise UnknownChoice("score normalisation", method, ("minmax", "zscore"))
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return []
    if not np.isfinite(values).all():
        raise InvalidInput("scores to normalise must be finite numbers")
    if method == "minmax":
        spread = float(values.max() - values.min())
        if spread <= 0:
            return [1.0] * len(values)
        return ((values - values.min()) / spread).tolist()
    std = float(values.std())
    if std <= 0:
        return [0.0] * len(values)
    return ((values - values.mean()) / std).tolist()


def convex_fusion(
    scored: Sequence[Sequence[tuple[str, float]]], *, weights: Sequence[float] | None = None,
    normalization: str = "minmax",
) -> list[tuple[str, float]]:
    """Fuse scored lists: score(id) = sum_i w_i * norm_i(id), best first.

    Each list's scores (higher = better) are normalised per query (:func:`normalize_scores`)
    before the weighted sum; an id absent from a list gets that list's lowest normalised score
    (below the depth retrieved, it scored at most that). Weights default to equal. Unlike RRF,
    this keeps how *much* better one hit is than the next (Bruch et al., 2023, "An Analysis of
    Fusion Functions for Hybrid Retrieval"). Ties keep the order of first appearance.
    """
    weights = list(weights) if weights is not None else [1.0] * len(scored)
    if len(weights) != len(scored):
        raise InvalidInput(f"{len(weights)} weights for {len(scored)} score lists")
    totals: dict[str, float] = {}
    normalised: list[dict[str, float]] = []
    floors: list[float] = []
    for items in scored:
        values = normalize_scores([score for _, score in items], method=normalization)
        by_id: dict[str, float] = {}
        for (item, _), value in zip(items, values, strict=True):
            by_id.setdefault(item, value)  # a repeated id keeps its best (first) score
            totals.setdefault(item, 0.0)
        normalised.append(by_id)
        floors.append(min(values) if values else 0.0)
    for weight, by_id, floor in zip(weights, normalised, floors, strict=True):
        for item in totals:
            totals[item] += weight * by_id.get(item, floor)
    return sorted(totals.items(), key=lambda pair: -pair[1])


def fuse(
    scored: Sequence[Sequence[tuple[str, float]]], *, method: str = DEFAULT_FUSION,
    weights: Sequence[float] | None = None,
) -> list[tuple[str, float]]:
    """Fuse ranked ``(id, score)`` lists (best first) with one of :data:`FUSIONS`."""
    check_fusion(method)
    if method == "rrf":
        return reciprocal_rank_fusion([[item for item, _ in items] for items in scored],
                                      weights=weights)
    return convex_fusion(scored, weights=weights, normalization=method.split("-", 1)[1])


@dataclass(frozen=True)
class DocumentHits:
    """One document's hits among a search's results; ``score`` is its best chunk's."""

    rank: int
    document_id: str
    score: float
    source_path: str
    document_metadata: Mapping[str, Any]
    hits: tuple[Hit, ...]

    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``search --per-document --json`` shape."""
        return {
            "rank": self.rank,
            "document_id": self.document_id,
            "score": self.score,
            "source_path": self.source_path,
            "document_metadata": dict(self.document_metadata),
            "hits": [hit.to_dict() for hit in self.hits],
        }


def group_by_document(hits: Sequence[Hit], *, k: int | None = None) -> list[DocumentHits]:
    """Hits grouped by document, documents in the order of their best hit (hits are ranked
    best first), at most ``k`` documents; each group keeps its hits in rank order."""
    groups: dict[str, list[Hit]] = {}
    for hit in hits:
        groups.setdefault(hit.document_id, []).append(hit)
    out = []
    for rank, (doc_id, members) in enumerate(groups.items(), start=1):
        if k is not None and rank > k:
            break
        best = members[0]
        out.append(DocumentHits(rank=rank, document_id=doc_id, score=best.score,
                                source_path=best.source_path,
                                document_metadata=best.document_metadata, hits=tuple(members)))
    return out


def _title(document_id: str, metadata: Mapping[str, Any]) -> str:
    title = metadata.get("title")
    return f"  {title}" if isinstance(title, str) and title and title != document_id else ""


def _snippet(text: str, width: int = 200) -> str:
    flat = " ".join(text.split())
    return flat[:width] + ("..." if len(flat) > width else "")


def format_hits(hits: Sequence[Hit]) -> list[str]:
    """Hits as the CLI prints them: the document id (what `show` and `delete` take) and its
    title first, then the chunk's type and source, then a snippet of its text."""
    lines = []
    for hit in hits:
        lines.append(f"{hit.rank:>3}. {hit.score:.4f}  {hit.document_id}"
                     f"{_title(hit.document_id, hit.document_metadata)}  [{hit.chunk_type}]  "
                     f"{hit.source_path}")
        lines.append(f"     {_snippet(hit.text)}")
    return lines


def format_document_hits(groups: Sequence[DocumentHits]) -> list[str]:
    """One line per document (id, title, best score, source), its chunks indented below."""
    lines = []
    for group in groups:
        count = len(group.hits)
        lines.append(f"{group.rank}. {group.score:.4f}  {group.document_id}"
                     f"{_title(group.document_id, group.document_metadata)}  "
                     f"{group.source_path}  ({count} hit{'s' if count != 1 else ''})")
        for hit in group.hits:
            lines.append(f"     {hit.score:.4f}  {hit.chunk_id} [{hit.chunk_type}]  "
                         f"{_snippet(hit.text, 160)}")
    return lines


class Searcher:
    """Searches one store; embeds queries with the store's embedder (loaded once)."""

    def __init__(
        self, store: Store, *, model: str | None = None, embedder: Embedder | None = None,
        redact: Callable[[str], str] | None = redact_emails, fusion: str = DEFAULT_FUSION,
    ) -> None:
        self.store = store
        self.model_name = model
        self._embedder = embedder
        self._loaded_version: str | None = None  # of a tfidf state this searcher loaded
        self.redact = redact
        self.fusion = check_fusion(fusion)

    def _model(self) -> str | None:
        """The embedding space: the one asked for, else the store's only one (None if none)."""
        if self.model_name is not None:
            return self.model_name
        # Asked on every query: Store.model reads the registry it caches per generation, where
        # Store.models() counts every model's vectors (a COUNT over embeddings per call).
        try:
            return self.store.model(None).name
        except ModelNotFound:
            if self.store.models():
                raise  # several models: the message names them
            return None

    @property
    def embedding_model(self) -> str | None:
        """The embedding space searched: the one asked for, else the store's only one."""
        return self._model()

    @property
    def embedder(self) -> Embedder:
        # A tfidf model refitted by another process since it was loaded: reload its state.
        if (self._embedder is not None and self._loaded_version is not None
                and self.store.model(self._model()).model_version != self._loaded_version):
            self._embedder = None
        if self._embedder is None:
            # The query side: for a plain minilm store, ONNX Runtime when it is installed
            # (same vectors, no torch import), else the model the documents were embedded with.
            from mlflow_rag.embed.registry import find_embedder_kind, get_query_embedder

            info = self.store.model(self._model())
            if not info.embedder:
                raise EmbedderUnavailable(
                    f"model {info.name!r} has no known embedder (imported vectors); "
                    "search it with a vector, or use --mode bm25"
                )
            state = self.store.model_dir(info.name)
            self._embedder = get_query_embedder(
                info.embedder, state_dir=state if state.is_dir() else None
            )
            kind = find_embedder_kind(info.embedder)
            if kind is not None and kind.fitted_on_corpus:
                self._loaded_version = info.model_version
        return self._embedder

    def embed_query(self, text: str) -> np.ndarray:
        return self.embedder.embed_query(check_query(text))

    def _has_direction(self, text: str) -> bool:
        """False for a query the embedder has no direction for (tfidf: no term of its
        vocabulary): dense search then returns no hits rather than k arbitrary ones scored 0."""
        # the embedder that embedded the query (none: the caller gave the vector)
        knows = getattr(self._embedder, "knows_any_term", None)
        return knows is None or bool(knows(text))

    def search(
        self, query: str, *, k: int = 10, mode: str = DEFAULT_MODE,
        filters: str | Mapping[str, Any] | None = None, include_pii: bool = False,
        log: bool = False, candidates: int | None = None, fusion: str | None = None,
        principal: Principal | None = None,
    ) -> list[Hit]:
        """Top-k hits for ``query`` among what ``principal`` may see (none: everything).
        Hybrid fuses the top ``candidates`` of dense and BM25 with ``fusion`` (default: the
        searcher's)."""
        request = SearchRequest.parse(query, k=k, mode=mode, filters=filters,
                                      candidates=candidates, principal=principal)
        return self.run(request, include_pii=include_pii, log=log, fusion=fusion)

    def run(
        self, request: SearchRequest, *, include_pii: bool = False, log: bool = False,
        fusion: str | None = None, vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """The hits of a parsed request (:class:`SearchRequest`): nothing is checked again.
        ``vector``: the query embedded already (answering times embedding on its own)."""
        query, mode = request.query, request.mode
        if mode == "bm25":
            vector = None
            hits = self.store.lexical(query, request.retrieval, include_pii=include_pii)
        elif mode == "dense":
            vector = self.embedder.embed_query(query) if vector is None else vector
            hits = self.store.dense(
                vector, request.retrieval, model=self._model(), include_pii=include_pii
            ) if self._has_direction(query) else []
        else:
            vector = self.embedder.embed_query(query) if vector is None else vector
            hits = self._fused(request, vector, include_pii=include_pii, fusion=fusion)
        if log:
            self.store.logs.log_query(
                query, hits, model_name=self._model() if mode != "bm25" else None,
                embedding=vector, metadata=_log_metadata(request), redact=self.redact,
            )
        return hits

    def search_documents(
        self, query: str, *, k: int = 10, mode: str = DEFAULT_MODE,
        filters: str | Mapping[str, Any] | None = None, include_pii: bool = False,
        log: bool = False, depth: int | None = None, principal: Principal | None = None,
    ) -> list[DocumentHits]:
        """The top-``k`` documents for ``query``, each with its hits among the best ``depth``
        chunks (default ``max(100, 10 k)``): a document ranks by its best chunk."""
        request = SearchRequest.parse(query, k=k, mode=mode, filters=filters, principal=principal)
        return self.run_documents(request, include_pii=include_pii, log=log, depth=depth)

    def run_documents(
        self, request: SearchRequest, *, include_pii: bool = False, log: bool = False,
        depth: int | None = None,
    ) -> list[DocumentHits]:
        """:meth:`search_documents` for a parsed request: its ``k`` counts documents."""
        k = request.k
        chunks = check_k(depth) if depth else min(MAX_K, max(100, 10 * k))
        hits = self.run(request.with_k(max(k, chunks)), include_pii=include_pii, log=log)
        return group_by_document(hits, k=k)

    def hybrid(
        self, query: str, vector: np.ndarray, *, k: int,
        filters: str | Mapping[str, Any] | None = None, include_pii: bool = False,
        candidates: int | None = None, fusion: str | None = None,
        principal: Principal | None = None,
    ) -> list[Hit]:
        request = SearchRequest.parse(query, k=k, mode="hybrid", filters=filters,
                                      candidates=candidates, principal=principal)
        return self._fused(request, vector, include_pii=include_pii, fusion=fusion)

    def _fused(
        self, request: SearchRequest, vector: np.ndarray, *, include_pii: bool,
        fusion: str | None,
    ) -> list[Hit]:
        method = check_fusion(fusion or self.fusion)
        query, k = request.query, request.k
        if request.depth > MAX_K:  # a default depth above MAX_K is refused, as it always was
            check_k(request.depth)
        candidates = request.retrieval.deeper(request.depth)
        dense = self.store.dense(
            vector, candidates, model=self._model(), include_pii=include_pii
        ) if self._has_direction(query) else []
        lexical = self.store.lexical(query, candidates, include_pii=include_pii)
        fused = fuse(
            [[(h.chunk_id, h.score) for h in dense], [(h.chunk_id, h.score) for h in lexical]],
            method=method,
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
