"""Dense search inside one read snapshot: a model's index ranks the query (only among the
vectors a filter allows, exactly, when there is one) and the hits' rows are read in the same
snapshot, so a hit always has its row. A compressed index's candidates are re-scored with the
exact vectors of the same snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_rag.errors import RagError
from mlflow_rag.index import compressed
from mlflow_rag.index.choose import COMPRESSED_KINDS
from mlflow_rag.index.side_vectors import rerank_bounded
from mlflow_rag.index.vector_index import SearchResult, VectorIndex
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.checks import clean_query
from mlflow_rag.store.filter_masks import VectorKeys, allowed_vector_ids
from mlflow_rag.store.filters import Plan
from mlflow_rag.store.hit_keys import HitKeys

if TYPE_CHECKING:
    from mlflow_rag.store.core import StoreCore


@dataclass(frozen=True)
class DenseFound:
    """Vector ids and scores in rank order, with the row of each id that has one."""

    ids: list[int]
    scores: list[float]
    rows: dict[int, Any]


def dense(
    backend: Backend, index: VectorIndex, query: np.ndarray, k: int, *, plan: Plan | None,
    keys: VectorKeys | None, hit_keys: HitKeys | None = None,
) -> DenseFound:
    """Top ``k`` of ``index`` for ``query``. Call inside a read transaction; ``keys`` (which
    chunk and document each vector belongs to) are needed with a filter ``plan``; with
    ``hit_keys`` (each vector's chunk row) the hits are read by primary key."""
    allowed = None
    if plan is not None:
        assert keys is not None
        allowed = allowed_vector_ids(plan, keys, backend.condition_ids)
    result = ranked(backend, index, query, k, allowed=allowed)
    ids = result.ids.tolist()
    rows = hit_keys.rows(backend, ids) if hit_keys is not None else None
    if rows is None:
        rows = backend.hits_by_vector_ids(ids)
    return DenseFound(ids=ids, scores=result.scores.tolist(), rows=rows)


def ranked(
    backend: Backend, index: VectorIndex, query: np.ndarray, k: int, *,
    allowed: np.ndarray | None = None,
) -> SearchResult:
    """``index.search``, exact scores included: a compressed index's ``rerank`` candidates
    are re-scored with their stored vectors: from the float16 side file when it is there,
    reading from the database only the few candidates float16 cannot rank for sure, else
    one read of ``rerank`` rows, 500 by default (benchmarks/RESULTS.md, "10M chunks"). Call
    inside a read transaction."""
    if index.spec.kind not in COMPRESSED_KINDS:
        return index.search(query, k, allowed=allowed)
    found = index.search(query, compressed.candidates(k, index.spec.params), allowed=allowed)
    if index.side is not None:
        # float16 rules out all but ~k candidates; only those are read (the same result).
        ids, scores, _read = rerank_bounded(
            found.ids, index.side, query, k,
            lambda keep: backend.vectors_by_ids(keep.tolist(), index.dimension))
        return SearchResult(ids, scores)
    exact = backend.vectors_by_ids(found.ids.tolist(), index.dimension)
    return SearchResult(*compressed.rerank(found.ids, exact, query, k))


def dense_at_known_generation(
    core: StoreCore, vector: Any, k: int, *, model: str | None
) -> DenseFound | None:
    """An unfiltered search without a read transaction, when the model's index and hit map
    are those of the generation the last search read; None: search in one (as the store
    does otherwise; also for a query it refuses, to name the error against its models as
    they are now). The hits' chunk rows and the store's generation come from one statement
    (SQLite's; PostgreSQL searches join, with no map). If a document is not remembered or a
    row does not check, FAISS's answer is read in a transaction still, if that transaction's
    generation is the index's; if the store has moved on, the search is made again."""
    read_at_generation = getattr(core.backend, "chunk_rows_at_generation", None)
    if read_at_generation is None:
        return None
    cache = core.index_cache
    with core.lock:
        generation = core.registry.generation
        by_name = core.registry.by_name
        info = by_name.get(model) if model is not None else (
            next(iter(by_name.values())) if len(by_name) == 1 else None)
        if info is None:
            return None
        index = cache.indexes.get(info.name)
        keys = cache.hit_maps.get(info.name)
        if (index is None or keys is None or keys.stale or index.generation != generation
                or keys.generation != generation or info.name in cache.pending
                or index.dimension != info.dimension or index.spec.kind in COMPRESSED_KINDS):
            return None
        try:
            query = clean_query(vector, info.dimension)
        except RagError:
            return None
        found = index.search(query, k)
        ids = found.ids.tolist()
        rows = keys.rows_at_generation(read_at_generation, ids)
        if rows is None:
            rows = _rows_if_still(core.backend, keys, ids, generation)
            if rows is None:
                return None
    return DenseFound(ids=ids, scores=found.scores.tolist(), rows=rows)


def _rows_if_still(
    backend: Backend, keys: HitKeys, ids: list[int], generation: int
) -> dict[int, Any] | None:
    """The hits' rows as :func:`dense` reads them (remembering their documents), in a read
    transaction whose generation is ``generation``; None if it is not."""
    with backend.read_transaction():
        if backend.generation() != generation:
            return None
        rows = keys.rows(backend, ids)
        return rows if rows is not None else backend.hits_by_vector_ids(ids)
