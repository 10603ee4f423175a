"""How a filtered dense search scans the vectors a filter allows, always exactly.

``filtered_strategy`` is the pure choice, by index kind and selectivity (allowed / total):

- ``gather``: copy the allowed rows and multiply, a block at a time (flat and HNSW storage,
  few rows). At 100K x 384, 1 % selectivity: 0.07-0.1 ms against 0.2-0.5 ms for the bitmap
  scan; 2 %: 0.14 against 0.3-0.4 (a busy machine).
- ``bitmap``: FAISS's flat scan of every stored row on one thread, skipping rows outside a
  bitmap of the allowed positions (flat and HNSW storage, many rows; never the HNSW graph,
  whose walk with a selector misses results). At 10 % it took 6.3 ms where the gather took
  21; at 50 %, 14-20 ms against 24-28 ms for one BLAS product over every row (busy machine,
  benchmarks/RESULTS.md).
- ``ivf-lists``: every inverted list probed, rows outside a bitmap of the allowed vector ids
  skipped (an IVF index holds no row order to gather by).

``exact_selected`` runs a selector search so that ties rank as ``top_k`` ranks them: equal
scores by lower label first, whichever of them FAISS's heap kept.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

#: The ways a filtered search scans, by ``filtered_strategy``.
FILTERED_STRATEGIES = ("gather", "bitmap", "ivf-lists")

# Below this share of the stored rows, gather them (see the module docstring).
GATHER_BELOW = 0.02
# The gather multiplies blocks of at most this many floats: OpenBLAS runs a matrix-vector
# product of more than 115,200 x 4 on its threads, whose join waits for a core on a busy
# machine (1,201 gathered rows of 384: 40 ms median against 0.08 for 1,199), and a block
# buffer reused in cache spares allocating the whole gather (4,000 rows: 6 MB).
GATHER_BLOCK_FLOATS = 1024 * 384

#: One selector search: (how many results, the selector) -> FAISS's (distances, labels).
SelectorSearch = Callable[[int, faiss.IDSelector], tuple[np.ndarray, np.ndarray]]


def filtered_strategy(kind: str, *, allowed: int, total: int) -> str:
    """How to scan ``allowed`` of ``total`` stored vectors of an index of ``kind``."""
    if kind == "ivf":
        return "ivf-lists"
    if kind not in ("flat", "hnsw"):
        raise ValueError(f"unknown index kind {kind!r}; choose from flat, hnsw, ivf")
    if allowed < GATHER_BELOW * total:
        return "gather"
    return "bitmap"


def gathered_scores(matrix: np.ndarray, positions: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``matrix[positions] @ query`` on this thread, a block of rows at a time (see
    ``GATHER_BLOCK_FLOATS``); the block copy is aligned whatever the matrix's alignment."""
    n, dimension = len(positions), matrix.shape[1]
    out = np.empty(n, dtype=np.float32)
    step = max(1, GATHER_BLOCK_FLOATS // dimension)
    block = np.empty((min(n, step), dimension), dtype=np.float32)
    for start in range(0, n, step):
        stop = min(n, start + step)
        rows = block[: stop - start]
        np.take(matrix, positions[start:stop], axis=0, out=rows)
        np.dot(rows, query, out=out[start:stop])
    return out


def bitmap(members: np.ndarray, size: int) -> np.ndarray:
    """FAISS's ``IDSelectorBitmap`` bytes for ``members`` (integers below ``size``): bit
    ``i & 7`` of byte ``i >> 3`` (little bit order) is set for each member ``i``."""
    mask = np.zeros(size, dtype=bool)
    mask[members] = True
    return np.packbits(mask, bitorder="little")


def exact_selected(
    search: SelectorSearch, members: np.ndarray, size: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` labels and scores of a search restricted to ``members`` (distinct
    labels below ``size``), best first, equal scores by lower label first.

    FAISS keeps whichever of the rows tied at the k-th score its heap met first or last; one
    result more shows whether a tie crosses the cut, and if one does the search widens until
    every tied row is in hand, so the cut is made here by label, as ``top_k`` makes it.
    """
    bits = bitmap(members, size)
    selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
    want = min(k + 1, len(members))
    while True:
        distances, labels = search(want, selector)
        keep = labels[0] >= 0
        labels, distances = labels[0][keep].astype(np.int64), distances[0][keep]
        if len(labels) <= k or distances[-1] != distances[k - 1] or want >= len(members):
            break
        want = min(2 * want, len(members))
    order = np.lexsort((labels, -distances))[:k]
    return labels[order], distances[order]
