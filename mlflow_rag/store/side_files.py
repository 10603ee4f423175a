"""A compressed index's float16 side file (``index/<slug>.f16``): written, checked, mapped.

The file is derived from the database like the index (index/side_vectors.py has its format):
written whole, temp -> fsync -> replace, under the store's lock, hashed per 16 MiB block on
its way to disk, and vouched for by the manifest only once the manifest naming its size and
block hashes is written. A file that does not check out (missing, truncated, grown, a flipped
bit, another store's with recomputed hashes) is never mapped or used to rank: the re-rank
reads the database, and the next flush of a writable store writes the file again.
Readers map it read-only; writers replace it, so a map keeps the inode it checked.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from mlflow_rag.index.side_vectors import RUN_DTYPE, SIDE_DTYPE, SideVectors, float16_rows
from mlflow_rag.index.vector_index import sorted_unique
from mlflow_rag.store import layout
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.files import (
    HASH_BLOCK_BYTES,
    FileStamp,
    atomic_write_stream,
    block_sha256s_fd,
)
from mlflow_rag.store.manifest import ModelEntry
from mlflow_rag.types import ModelInfo

SPOT_CHECKS = 16  # rows compared with the database when a file is opened (as for the index)

Blocks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


def write(root: Path, info: ModelInfo, entry: ModelEntry, blocks: Blocks, *,
          generation: int) -> SideVectors:
    """Write the model's side file from ``blocks()`` (its vectors in id order, read in one
    snapshot at ``generation``) and record it in ``entry``; returns it mapped."""
    shape: list[int] = []

    def produce(write_bytes: Callable[[bytes], None]) -> None:
        shape.extend(float16_rows(blocks, info.dimension, write_bytes))

    path = layout.vectors_path(root, info)
    stored = atomic_write_stream(path, produce, block=HASH_BLOCK_BYTES)
    rows, runs = shape
    entry.vectors_file = layout.vectors_relative(info)
    entry.vectors_bytes = stored.size
    entry.vectors_block_sha256 = stored.block_sha256
    entry.vectors_rows = rows
    entry.vectors_runs = runs
    entry.vectors_generation = generation
    with open(path, "rb") as handle:  # the store's lock is held: no one replaced it since
        return _mapped(handle.fileno(), rows, runs, info.dimension, generation)


def clear(root: Path, info: ModelInfo, entry: ModelEntry | None) -> None:
    """Forget the model's side file (its index is no longer compressed)."""
    if entry is not None:
        entry.vectors_file, entry.vectors_bytes, entry.vectors_block_sha256 = "", 0, []
        entry.vectors_rows = entry.vectors_runs = entry.vectors_generation = 0
    layout.vectors_path(root, info).unlink(missing_ok=True)


def load(
    root: Path, info: ModelInfo, entry: ModelEntry, backend: Backend, live_ids: np.ndarray,
    *, verified_files: Mapping[str, FileStamp],
) -> tuple[SideVectors | None, str]:
    """The model's side file mapped, or (None, why it must not be used). Call inside a read
    transaction: ``live_ids`` (the index's ids) pick the rows compared with the database."""
    relative = layout.vectors_relative(info)
    if not entry.vectors_file:
        return None, "no side file recorded"
    if entry.vectors_file != relative:  # never opened: the manifest may name only this file
        return None, f"the manifest names the side file {entry.vectors_file!r}, not {relative}"
    row_bytes = info.dimension * SIDE_DTYPE.itemsize
    if entry.vectors_bytes != entry.vectors_rows * row_bytes \
            + entry.vectors_runs * 2 * RUN_DTYPE.itemsize:
        return None, f"{relative}: the manifest's size and rows disagree"
    path = layout.vectors_path(root, info)
    if not path.is_file():
        return None, f"{relative} is missing"
    with open(path, "rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        if size != entry.vectors_bytes:
            return None, f"{relative} has {size} bytes, expected {entry.vectors_bytes}"
        known = verified_files.get(relative)  # verify_bundle hashed this very file just now
        hashed = known is not None and FileStamp.of(fd, known.sha256) == known
        if not hashed and block_sha256s_fd(fd, size, block=HASH_BLOCK_BYTES) \
                != entry.vectors_block_sha256:
            return None, f"{relative} does not match its sha256 (block hashes)"
        side = _mapped(fd, entry.vectors_rows, entry.vectors_runs, info.dimension,
                       entry.vectors_generation)
    if side.problem():
        return None, f"{relative}: {side.problem()}"
    differs = first_differing_row(side, backend, live_ids, info.dimension)
    if differs is not None:
        return None, f"{relative}: vector {differs} differs from the database (a foreign file?)"
    return side, ""


def first_differing_row(
    side: SideVectors, backend: Backend, live_ids: np.ndarray, dimension: int
) -> int | None:
    """Up to ``SPOT_CHECKS`` spread ids the file holds must each be the float16 of their
    database vector (ids it does not hold were deleted when it was written, after this
    snapshot, or are newer)."""
    where = side.positions(live_ids)
    held = np.flatnonzero(where >= 0)
    if len(held) == 0:
        return None
    picks = held[sorted_unique(np.linspace(0, len(held) - 1,
                                           num=min(SPOT_CHECKS, len(held))).astype(int))]
    stored = backend.vectors_by_ids(live_ids[picks].tolist(), dimension)
    with np.errstate(over="ignore"):
        expected = stored.astype(SIDE_DTYPE)
    for pick, want in zip(picks.tolist(), expected, strict=True):
        if not np.array_equal(side.rows[where[pick]], want, equal_nan=True):
            return int(live_ids[pick])
    return None


def _mapped(fd: int, rows: int, runs: int, dimension: int, generation: int) -> SideVectors:
    """The rows mapped; the run table (16 B a run) read into memory."""
    row_bytes = rows * dimension * SIDE_DTYPE.itemsize
    table = np.frombuffer(os.pread(fd, runs * 2 * RUN_DTYPE.itemsize, row_bytes),
                          dtype=RUN_DTYPE).reshape(-1, 2)
    if rows == 0:
        return SideVectors(np.zeros((0, dimension), SIDE_DTYPE), table, generation=generation)
    view = mmap.mmap(fd, row_bytes, prot=mmap.PROT_READ)
    return SideVectors(np.frombuffer(view, dtype=SIDE_DTYPE).reshape(rows, dimension), table,
                       generation=generation)
