"""The harness's second passes: pseudo-relevance feedback (:mod:`mlflow_rag.relevance_feedback`) on a
variant's candidate lists, and the first-pass ranking it starts from.

A feedback variant ranks its first pass as the plain variant would (the fused list for a
hybrid), takes its top ``feedback_docs`` chunks as relevant, and searches again: BM25 with the
RM3 expansion terms (interpolated with the original BM25 list), dense with the Rocchio-moved
query vector. The new lists replace the originals and are ranked as before, so a feedback
variant differs from its plain twin by the feedback alone. Its latency per query is both
passes.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping, Sequence

import numpy as np

from mlflow_rag.evaluation.harness_types import Candidates
from mlflow_rag.evaluation.variants import Variant
from mlflow_rag.relevance_feedback import (
    RM3_ORIGINAL_WEIGHT,
    expansion_terms,
    rocchio,
    uses_rm3,
    uses_rocchio,
)
from mlflow_rag.search import fuse
from mlflow_rag.store.request import Retrieval
from mlflow_rag.store.store import Store
from mlflow_rag.types import Hit

Pairs = tuple[tuple[str, float], ...]


def ranked_pairs(variant: Variant, lexical: Candidates | None, dense: Candidates | None,
                 i: int, depth: int) -> Pairs:
    """Query ``i``'s ranked chunks under ``variant``: one list, or both fused as
    ``Searcher.hybrid`` fuses them (the dense list first), the best ``depth`` kept."""
    if variant.mode == "bm25":
        assert lexical is not None
        return lexical.pairs[i]
    assert dense is not None
    if variant.mode == "dense":
        return dense.pairs[i]
    assert lexical is not None and variant.fusion is not None
    weight = 0.5 if variant.fusion_weight is None else variant.fusion_weight
    # Hybrid search fuses its top ``candidates`` of each list; z-scores and min-max depend on
    # how deep a list goes, so the depth fused is an axis of its own (None: all retrieved).
    top = variant.fusion_depth or depth
    # 2w and 2(1 - w): equal weights are (1, 1), exactly what hybrid search uses
    return tuple(fuse([dense.pairs[i][:top], lexical.pairs[i][:top]], method=variant.fusion,
                      weights=[2 * weight, 2 * (1 - weight)])[:depth])


def with_feedback(
    variant: Variant, lexical: Candidates | None, dense: Candidates | None, *, store: Store,
    texts: Sequence[str], vectors: np.ndarray | None, depth: int,
    doc_of: MutableMapping[str, str], text_of: MutableMapping[str, str], progress: bool = False,
) -> tuple[Candidates | None, Candidates | None]:
    """``variant``'s candidate lists after its feedback (unchanged without feedback); with
    ``progress``, a bar per variant (a second search per query: the grid's slowest part)."""
    if variant.feedback == "none":
        return lexical, dense
    from tqdm import tqdm
    assert variant.feedback_docs is not None
    request = Retrieval.parse(k=depth)
    new_lexical: list[Pairs] = []
    new_dense: list[Pairs] = []
    spent: list[float] = []
    for i in tqdm(range(len(texts)), desc=f"feedback {variant.label}", unit="query",
                  disable=not progress, leave=False):
        began = time.perf_counter()
        top = ranked_pairs(variant, lexical, dense, i, depth)[: variant.feedback_docs]
        if uses_rm3(variant.feedback):
            assert lexical is not None and variant.feedback_terms is not None
            terms = expansion_terms([text_of[c] for c, _ in top], [s for _, s in top],
                                    terms=variant.feedback_terms)
            hits = store.lexical(" ".join(terms), request) if terms else []
            _remember(hits, doc_of, text_of)
            new_lexical.append(tuple(fuse(
                [lexical.pairs[i], [(h.chunk_id, h.score) for h in hits]],
                method="convex-zscore",
                weights=[2 * RM3_ORIGINAL_WEIGHT, 2 * (1 - RM3_ORIGINAL_WEIGHT)])[:depth]))
        if uses_rocchio(variant.feedback):
            assert vectors is not None and variant.embedder is not None
            found = store.catalog.vectors_for_chunks(variant.embedder, [c for c, _ in top])
            rows = np.stack([found[c] for c, _ in top if c in found]) if found else np.empty(0)
            hits = store.dense(rocchio(vectors[i], rows), request, model=variant.embedder)
            _remember(hits, doc_of, text_of)
            new_dense.append(tuple((h.chunk_id, h.score) for h in hits))
        spent.append((time.perf_counter() - began) * 1000)
    # The feedback's time is counted once: on the BM25 list when it has one (a hybrid
    # variant's latency adds both lists' times).
    dense_extra = [0.0] * len(spent) if new_lexical else spent
    return _second(lexical, new_lexical, spent), _second(dense, new_dense, dense_extra)


def _remember(hits: Sequence[Hit], doc_of: MutableMapping[str, str],
              text_of: MutableMapping[str, str]) -> None:
    for hit in hits:
        doc_of[hit.chunk_id] = hit.document_id
        text_of[hit.chunk_id] = hit.text


def _second(first: Candidates | None, pairs: list[Pairs],
            spent: Sequence[float]) -> Candidates | None:
    """The second-pass list (latency: the first pass plus ``spent``), or ``first`` when the
    feedback left this list alone."""
    if first is None or not pairs:
        return first
    return Candidates(pairs=tuple(pairs),
                      latency_ms=tuple(a + b for a, b in zip(first.latency_ms, spent, strict=True)))


__all__ = ["ranked_pairs", "with_feedback"]
