"""A compressed index's exact vectors beside it, as float16 rows addressed by vector id.

Row ``i`` of the file holds vector id ``base + i`` as float16 (little-endian, ``d`` values);
ids the file does not hold (another model's, deleted ones, ids allocated but never this
model's) are rows of NaN. A vector id's vector never changes (a new vector gets a new id), so
a row, once written, is right for every later generation while its id lives: the file need
not be at the index's generation, and an id it does not hold (NaN, or above its last row) is
read from the database instead.

Re-ranking with it (:func:`rerank_bounded`) returns exactly what re-scoring every candidate
with its float32 vector returns (:func:`mlflow_rag.index.compressed.rerank`): float16 gives
each candidate's score to within a bound, only the candidates whose interval reaches the
k-th best lower bound can be in the top k, and only those (about k of the 500) are read from
the database and scored exactly. Reading 500 rows from SQLite took 51-53 ms per query on a
loaded machine, gathering them from a mapped float16 file 1.1-3.6 ms (benchmarks/RESULTS.md,
"10M chunks").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from mlflow_rag.index.compressed import rerank

SIDE_DTYPE = np.dtype("<f2")
# |x - float16(x)| <= F16_RELATIVE * |float16(x)| + F16_ABSOLUTE for any float32 x whose
# float16 is finite: half an ulp relative in float16's normal range (2^-11, taken against
# the rounded value), half the subnormal spacing (2^-25) below it.
F16_RELATIVE = 2.0**-11 / (1 - 2.0**-11)
F16_ABSOLUTE = 2.0**-25
# The exact score is float64 rounded to float32: up to 2^-24 of |x.q| more, and float64's own
# accumulation far below that; 2^-22 covers both with room.
ROUNDING = 2.0**-22
NAN_ROWS = 4096  # rows of NaN written at once for a gap


class SideVectors:
    """A read-only (n, d) float16 view (a memory map) of vector ids ``base`` .. ``base + n - 1``."""

    def __init__(self, rows: np.ndarray, base: int, *, generation: int = 0) -> None:
        self.rows = rows
        self.base = base
        self.generation = generation  # of the snapshot its rows were read in

    @property
    def dimension(self) -> int:
        return int(self.rows.shape[1])

    @property
    def max_vector_id(self) -> int:
        return self.base + len(self.rows) - 1

    def bounds(self, ids: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of each id's exact score with ``query``; (-inf, inf) for an id the
        file does not hold."""
        q = np.asarray(query, dtype=np.float64)
        lower = np.full(len(ids), -np.inf)
        upper = np.full(len(ids), np.inf)
        inside = (ids >= self.base) & (ids <= self.max_vector_id)
        if inside.any():
            rows = self.rows[ids[inside] - self.base].astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                approx = rows @ q
                size = np.abs(rows) @ np.abs(q)
                error = size * (F16_RELATIVE + ROUNDING) * (1 + ROUNDING) \
                    + F16_ABSOLUTE * float(np.abs(q).sum()) * (1 + ROUNDING)
                low, high = approx - error, approx + error
            known = np.isfinite(low) & np.isfinite(high)
            lower[np.flatnonzero(inside)[known]] = low[known]
            upper[np.flatnonzero(inside)[known]] = high[known]
        return lower, upper


def needed(lower: np.ndarray, upper: np.ndarray, k: int) -> np.ndarray:
    """Positions of the candidates that can be in the top ``k``: those whose upper bound
    reaches the k-th largest lower bound (any other is beaten by k candidates for sure)."""
    n = len(lower)
    if n <= k:
        return np.arange(n)
    kth = np.partition(lower, n - k)[n - k]
    return np.flatnonzero(upper >= kth)


def rerank_bounded(
    ids: np.ndarray, side: SideVectors, query: np.ndarray, k: int,
    read_exact: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`~mlflow_rag.index.compressed.rerank` of candidate ``ids`` with the float32
    vectors of only those that float16 cannot rule out (``read_exact(ids)``: their float32
    vectors in that order). Returns (ids, scores, how many were read exactly)."""
    lower, upper = side.bounds(ids, query)
    keep = ids[needed(lower, upper, k)]
    found, scores = rerank(keep, read_exact(keep), query, k)
    return found, scores, len(keep)


def carried(
    side: SideVectors, deleted: np.ndarray, newer: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    *, rows: int = 1 << 16,
) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """The blocks of the next file: ``side``'s rows with the ``deleted`` ids' rows NaN
    (erased), then the ``newer`` blocks (ids above its last row) from the database. Copying
    the old file reads ``2 * d`` bytes a row in order, not the database's float32 rows."""

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        gone = np.sort(np.asarray(deleted, dtype=np.int64))
        for start in range(0, len(side.rows), rows):
            ids = np.arange(side.base + start, side.base + min(len(side.rows), start + rows))
            block = np.array(side.rows[start:start + rows])
            lo, hi = np.searchsorted(gone, [ids[0], ids[-1] + 1])
            block[gone[lo:hi] - ids[0]] = np.nan
            yield ids, block
        yield from newer()

    return blocks


def float16_rows(
    blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], dimension: int,
    write: Callable[[bytes], None],
) -> tuple[int, int]:
    """Write the side file of the (ids, float32 vectors) ``blocks()`` yields in id order to
    ``write``; returns (base, rows). Gaps between ids are NaN rows."""
    nan_block = np.full((NAN_ROWS, dimension), np.nan, dtype=SIDE_DTYPE).tobytes()
    row_bytes = dimension * SIDE_DTYPE.itemsize
    base = next_id = 0
    for ids, vectors in blocks():
        if len(ids) == 0:
            continue
        if next_id == 0:
            base = next_id = int(ids[0])
        with np.errstate(over="ignore"):  # beyond float16's range: inf, which ranks by SQLite
            rows = np.asarray(vectors).astype(SIDE_DTYPE)
        starts = np.flatnonzero(np.diff(ids) != 1) + 1
        for run_start, run_stop in zip(np.r_[0, starts], np.r_[starts, len(ids)], strict=True):
            gap = int(ids[run_start]) - next_id
            while gap > 0:
                count = min(gap, NAN_ROWS)
                write(nan_block[: count * row_bytes])
                gap -= count
            write(rows[run_start:run_stop].tobytes())
            next_id = int(ids[run_stop - 1]) + 1
    return base, (next_id - base if next_id else 0)
