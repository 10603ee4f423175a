"""Integrity checks of a store's contents beyond SQLite's own: each model's index against
SQLite (same ids, every sampled vector finds itself) and, given the model's embedder, that
the stored vectors are that embedder's output for their text."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlflow_rag.errors import EmbedderUnavailable
from mlflow_rag.index.choose import COMPRESSED_KINDS
from mlflow_rag.index.side_vectors import SIDE_DTYPE, SideVectors
from mlflow_rag.index.vector_index import VectorIndex
from mlflow_rag.store import retrieval
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.index_cache import vector_blocks
from mlflow_rag.types import ModelInfo

# verify(): a re-embedded sample must match its stored vector this closely. Deterministic
# embedders (tfidf, the same MiniLM backend) give 1.0 up to rounding; int8 ONNX varies with
# thread counts by far less than this; a vector of another fit or model is far below it.
EMBED_CHECK_MIN_COSINE = 0.98


def check_model(
    backend: Backend, info: ModelInfo, index: VectorIndex, *, sample: int, seed: int,
    embed: Callable[[Sequence[str]], np.ndarray] | None, embed_sample: int, min_cosine: float,
) -> dict[str, Any]:
    """One model's entry of ``Store.verify``'s report. Call inside a read transaction.

    ``embed`` (a function embedding texts as the model's recorded embedder does) adds a check
    that the stored vectors are that embedder's output for their text: ``embed_sample``
    spread vectors are re-embedded and each must have cosine >= ``min_cosine`` with its stored
    vector (``embed_mismatches`` counts those that do not; an embedder that cannot run or
    gives another dimension fails them all). Vectors from another fit of a tfidf model, or
    another model's, fail it; the self-retrieval check alone cannot tell."""
    count = backend.vector_count(info.name)
    index_ids = index.ids()
    rng = np.random.default_rng(seed)
    picks = rng.choice(count, size=min(sample, count), replace=False)
    side, side_rows = index.side, [0]  # side file rows that differ from the database

    def check_side(ids: np.ndarray, block: np.ndarray) -> None:
        if side is not None:
            side_rows[0] += side_rows_differing(side, ids, block)

    sql_ids, vectors = _ids_and_rows(backend, info, picks, on_block=check_side)
    found = 0
    for p in picks:
        result = retrieval.ranked(backend, index, vectors[p], 1)
        top = result.ids[:1].tolist()
        # duplicates (identical vectors) may outrank; accept an equal score
        if top and (top[0] == sql_ids[p] or result.scores[0] >= float(
            vectors[p] @ vectors[p]) - 1e-5):
            found += 1
    report: dict[str, Any] = {
        "ids_equal": bool(np.array_equal(np.sort(index_ids), sql_ids)),
        "vectors": len(sql_ids),
        "self_found": found,
        "sampled": len(picks),
    }
    if index.spec.kind in COMPRESSED_KINDS:
        # Not used: missing or failed its checks (store.events says why); the re-rank reads
        # the database until a flush of a writable store writes it again.
        report["side_file"] = "used" if side is not None else "not used"
    if side is not None:
        report["side_rows_differing"] = side_rows[0]
    if embed is not None and len(sql_ids):
        spread = np.unique(np.linspace(0, len(sql_ids) - 1,
                                       num=min(embed_sample, len(sql_ids))).astype(int))
        rows = backend.sample_vectors_with_text(info.name, sql_ids[spread].tolist())
        report.update(_embed_check(embed, rows, info.dimension, min_cosine))
    return report


def side_rows_differing(side: SideVectors, ids: np.ndarray, vectors: np.ndarray) -> int:
    """How many of ``ids`` the side file holds with another value than the float16 of their
    database vector (an id it does not hold is not wrong: the re-rank reads it from the
    database)."""
    where = side.positions(ids)
    inside = where >= 0
    rows = side.rows[where[inside]]
    with np.errstate(over="ignore"):
        want = vectors[inside].astype(SIDE_DTYPE)
    same = np.all((rows == want) | (np.isnan(rows) & np.isnan(want)), axis=1)
    return int((~same).sum())


def _ids_and_rows(
    backend: Backend, info: ModelInfo, positions: np.ndarray, *,
    on_block: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """All of the model's vector ids, and the vectors at ``positions`` (in id order), read
    a block at a time: ``verify`` holds the ids (8 B each), never every vector. ``on_block``
    sees each block."""
    wanted = np.sort(positions)
    parts: list[np.ndarray] = []
    rows: dict[int, np.ndarray] = {}
    offset = 0
    for ids, vectors in vector_blocks(backend, info.name, info.dimension)():
        parts.append(ids)
        if on_block is not None:
            on_block(ids, vectors)
        lo, hi = np.searchsorted(wanted, [offset, offset + len(ids)])
        rows.update((int(p), vectors[int(p) - offset].copy()) for p in wanted[lo:hi])
        offset += len(ids)
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), rows


def _embed_check(
    embed: Callable[[Sequence[str]], np.ndarray], rows: Sequence[tuple[int, str, bytes]],
    dimension: int, min_cosine: float,
) -> dict[str, Any]:
    """Re-embed sampled chunk texts; how many stored vectors the embedder does not give."""
    out: dict[str, Any] = {"embed_checked": len(rows), "embed_mismatches": 0}
    try:
        fresh = np.asarray(embed([text for _, text, _ in rows]), dtype=np.float64)
    except EmbedderUnavailable as exc:  # not installed here (no key, no extra): not a fault
        out.update(embed_checked=0, embed_skipped=str(exc))
        return out
    except Exception as exc:  # the recorded embedder cannot run: the check fails, named
        out.update(embed_mismatches=len(rows), embed_error=f"{type(exc).__name__}: {exc}")
        return out
    if fresh.ndim != 2 or fresh.shape != (len(rows), dimension):
        out.update(embed_mismatches=len(rows),
                   embed_error=f"the embedder gives vectors of shape {fresh.shape[1:]}, the "
                               f"stored ones have dimension {dimension}")
        return out
    stored = np.stack([np.frombuffer(blob, dtype="<f4").astype(np.float64) for _, _, blob in rows])
    norms = np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored, axis=1)
    cosines = (fresh * stored).sum(axis=1) / np.where(norms > 0, norms, 1.0)
    bad = cosines < min_cosine
    out.update(embed_mismatches=int(bad.sum()), embed_min_cosine=round(float(cosines.min()), 6))
    if bad.any():
        out["embed_mismatched_vector_ids"] = [int(rows[i][0]) for i in np.flatnonzero(bad)[:10]]
    return out
