"""A compressed index's exact vectors beside it, as float16 rows found by vector id.

The file is the model's vectors in id order as float16 (little-endian, ``d`` values a row),
then its run table: (first vector id, first row) as two little-endian int64 per run of
consecutive ids. Vector ids come from a sequence the store shares with chunk rows and other
models, so a model's ids come in runs (one per write batch); the table finds a row in
O(log runs) without a row per unused id (addressing by id alone left half of a one-model
file empty). A vector id's vector never changes (a new vector gets a new id), so a row, once
written, is right for every later generation while its id lives: the file need not be at the
index's generation, and an id it does not hold (deleted before it was written, or newer than
it) is read from the database instead.

Re-ranking with it (:func:`rerank_bounded`) returns exactly what re-scoring every candidate
with its float32 vector returns (:func:`mlflow_rag.index.compressed.rerank`): float16 gives
each candidate's score to within a bound, only the candidates whose interval reaches the
k-th best lower bound can be in the top k, and only those (about k of the 500) are read from
the database and scored exactly. Reading 500 rows from SQLite took 51-74 ms per query with
its pages out of the page cache, the side file's re-rank 3-4.5 ms (benchmarks/RESULTS.md).
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
RUN_DTYPE = np.dtype("<i8")  # the run table: (first vector id, first row) per run


class SideVectors:
    """A read-only (n, d) float16 view (a memory map) of a model's vectors, with the run
    table that finds the row of a vector id."""

    def __init__(self, rows: np.ndarray, runs: np.ndarray, *, generation: int = 0) -> None:
        self.rows = rows
        self.run_ids = np.ascontiguousarray(runs[:, 0]) if len(runs) else np.zeros(0, np.int64)
        self.run_rows = np.ascontiguousarray(runs[:, 1]) if len(runs) else np.zeros(0, np.int64)
        self.run_ends = np.append(self.run_rows[1:], len(rows))
        self.generation = generation  # of the snapshot its rows were read in

    def problem(self) -> str:
        """Why the run table cannot be right (a row outside the file, ids out of order or
        overlapping), or "": checked before a file is used, so lookups stay inside it."""
        starts, ends, ids = self.run_rows, self.run_ends, self.run_ids
        if len(self.rows) and (not len(starts) or starts[0] != 0):
            return "its run table does not start at the first row"
        if len(starts) and (np.any(ends <= starts) or ends[-1] != len(self.rows)):
            return "its run table's rows are out of order"
        if len(ids) > 1 and np.any(ids[1:] < ids[:-1] + (ends[:-1] - starts[:-1])):
            return "its run table's vector ids are out of order"
        if len(ids) and ids[0] < 1:
            return "its run table holds vector ids below 1"
        return ""

    @property
    def dimension(self) -> int:
        return int(self.rows.shape[1])

    @property
    def max_vector_id(self) -> int:
        """The highest id the file holds (0 if none)."""
        if not len(self.run_ids):
            return 0
        return int(self.run_ids[-1] + self.run_ends[-1] - self.run_rows[-1] - 1)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id, or -1 for an id the file does not hold."""
        ids = np.asarray(ids, dtype=np.int64)
        run = np.searchsorted(self.run_ids, ids, side="right") - 1
        safe = np.maximum(run, 0)
        rows = self.run_rows[safe] + ids - self.run_ids[safe] if len(self.run_ids) else ids * 0
        held = (run >= 0) & (rows < self.run_ends[safe]) if len(self.run_ids) else ids < 0
        return np.where(held, rows, -1)

    def bounds(self, ids: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of each id's exact score with ``query``; (-inf, inf) for an id the
        file does not hold (or a row float16 cannot hold: inf, NaN)."""
        q = np.asarray(query, dtype=np.float64)
        lower = np.full(len(ids), -np.inf)
        upper = np.full(len(ids), np.inf)
        where = self.positions(ids)
        inside = np.flatnonzero(where >= 0)
        if len(inside):
            rows = self.rows[where[inside]].astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                approx = rows @ q
                size = np.abs(rows) @ np.abs(q)
                error = size * (F16_RELATIVE + ROUNDING) * (1 + ROUNDING) \
                    + F16_ABSOLUTE * float(np.abs(q).sum()) * (1 + ROUNDING)
                low, high = approx - error, approx + error
            known = np.isfinite(low) & np.isfinite(high)
            lower[inside[known]] = low[known]
            upper[inside[known]] = high[known]
        return lower, upper

    def blocks(self, *, rows: int = 1 << 16) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float16 rows) of the whole file in id order, ``rows`` at most at a time."""
        for first_id, start, stop in zip(self.run_ids.tolist(), self.run_rows.tolist(),
                                         self.run_ends.tolist(), strict=True):
            for lo in range(start, stop, rows):
                hi = min(stop, lo + rows)
                yield np.arange(first_id + lo - start, first_id + hi - start), self.rows[lo:hi]


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
    side: SideVectors, deleted: np.ndarray,
    newer: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """The blocks of the next file: ``side``'s rows without the ``deleted`` ids' (erased),
    then the ``newer`` blocks (ids above its last) from the database. Copying the old file
    reads ``2 * d`` bytes a row in order, not the database's float32 rows."""
    gone = np.sort(np.asarray(deleted, dtype=np.int64))

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, rows in side.blocks():
            keep = ~np.isin(ids, gone[np.searchsorted(gone, ids[0]):
                                      np.searchsorted(gone, ids[-1], side="right")])
            if keep.any():
                yield ids[keep], rows[keep]
        yield from newer()

    return blocks


def float16_rows(
    blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], dimension: int,
    write: Callable[[bytes], None],
) -> tuple[int, int]:
    """Write the side file of the (ids, vectors) ``blocks()`` yields in id order to ``write``:
    the float16 rows, then the run table. Returns (rows, runs)."""
    runs: list[tuple[int, int]] = []
    count = next_id = 0
    for ids, vectors in blocks():
        if len(ids) == 0:
            continue
        ids = np.asarray(ids, dtype=np.int64)
        starts = np.flatnonzero(np.diff(ids) != 1) + 1
        for first in np.r_[0, starts].tolist():
            if not (first == 0 and int(ids[0]) == next_id):  # else it goes on the last run
                runs.append((int(ids[first]), count + first))
        with np.errstate(over="ignore"):  # beyond float16's range: inf, ranked by the database
            write(np.ascontiguousarray(np.asarray(vectors).astype(SIDE_DTYPE)).tobytes())
        count += len(ids)
        next_id = int(ids[-1]) + 1
    write(np.asarray(runs, dtype=RUN_DTYPE).reshape(-1, 2).tobytes())
    return count, len(runs)
