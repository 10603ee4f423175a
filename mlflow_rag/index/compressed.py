"""The compressed index kind (``ivfpq``): IVF lists of product-quantized codes, whose
candidates are re-scored exactly.

An IVF-PQ index keeps ``m`` bytes per vector (48 for 384-d) instead of ``4 * d`` (1,536), so
10M vectors fit in ~0.6 GB instead of 15 GB; its scores are approximate (on clustered
384-d data, PQ alone finds ~0.27-0.34 of the true top 10). The store therefore asks it for
``rerank`` candidates and re-scores them with the exact vectors its database keeps
(:func:`rerank`), which restores recall to that of the IVF probe (benchmarks/RESULTS.md,
"10M chunks").
"""

from __future__ import annotations

from collections.abc import Mapping

import faiss
import numpy as np

# 8-bit codes: each sub-quantizer has 256 centroids, so k-means needs at least 256 points.
PQ_BITS = 8
PQ_MIN_TRAIN = 1 << PQ_BITS


def empty_ivfpq(dimension: int, params: Mapping[str, int]) -> faiss.IndexIVFPQ:
    """An untrained IVF-PQ index over inner product with ``params`` (nlist, nprobe, m)."""
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFPQ(quantizer, dimension, params["nlist"], params["m"], PQ_BITS,
                             faiss.METRIC_INNER_PRODUCT)
    index.nprobe = params["nprobe"]
    return index


def pq_training(sample: np.ndarray) -> np.ndarray:
    """The sample, repeated up to ``PQ_MIN_TRAIN`` rows if shorter: a store small enough
    for that holds fewer vectors than a sub-quantizer has codes, so its codes come out
    (nearly) exact and the repeats cost nothing in quality."""
    if 0 < len(sample) < PQ_MIN_TRAIN:
        return np.ascontiguousarray(np.resize(sample, (PQ_MIN_TRAIN, sample.shape[1])))
    return sample


def as_coded(index: faiss.Index, vector: np.ndarray) -> np.ndarray:
    """``vector`` as ``index`` would store it: encoded (IVF list and PQ code) and decoded.
    The index's score of a stored vector against its own code is this vector's inner product
    with the original, to float32 rounding: the exact check that a PQ index holds the codes
    of the vectors it is said to hold (a tolerance on the PQ error alone trips on spread-out
    data, whose codes may be 30 % off)."""
    row = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
    return index.sa_decode(index.sa_encode(row))[0]


def candidates(k: int, params: Mapping[str, int]) -> int:
    """How many candidates to take from the compressed index for a top-``k`` answer."""
    return max(k, params["rerank"])


def rerank(
    ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of candidate ``ids`` (with their exact ``vectors``, in the same order)
    by exact inner product with ``query``: (ids, scores), best first; ties by id.

    Scored in float64 and rounded to float32, so a candidate's score does not depend on
    which other candidates are scored with it (a float32 product's rounding may follow the
    BLAS kernel the row count picks): the side file's re-rank scores a subset of the
    candidates and must give the same scores (index/side_vectors.py)."""
    if len(ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    exact = (np.asarray(vectors, dtype=np.float32).astype(np.float64)
             @ np.asarray(query, dtype=np.float32).astype(np.float64)).astype(np.float32)
    order = np.lexsort((ids, -exact))[:k]
    return ids[order].astype(np.int64), exact[order].astype(np.float32)
