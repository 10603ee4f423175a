"""Shared benchmark data: clustered vectors with realistic structure, text, metadata.

Uniform random vectors make every ANN index look broken, so vectors are a mixture of
Gaussian clusters (sizes drawn from a Zipf-like law) around a low-rank subspace, which is
how sentence-embedding corpora look: topics, with most variance in few directions.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from mlflow_rag.types import ChunkRecord, DocumentRecord, VectorBatch

WORDS = (
    "retrieval augmented generation vector index chunk document embedding query model "
    "store metadata filter search rank score latency throughput memory disk cache "
    "batch token text legacy modernization speaker abstract biography protein cell "
    "gene clinical trial patient dose effect cohort mutation receptor signal pathway "
    "expression tumour immune response"
).split()


def clustered_vectors(n: int, dim: int, *, seed: int = 0, clusters: int = 1000, rank: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim)).astype(np.float32)
    centers = rng.normal(size=(clusters, rank)).astype(np.float32) @ basis
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    assignment = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    step = 50_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        low = rng.normal(size=(stop - start, rank)).astype(np.float32) @ basis * 0.35
        noise = rng.normal(size=(stop - start, dim)).astype(np.float32) * 0.6
        block = centers[assignment[start:stop]] + low + noise
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def queries_near(vectors: np.ndarray, count: int, *, seed: int = 1) -> np.ndarray:
    """Queries that resemble the corpus (perturbed corpus points), as real queries do."""
    rng = np.random.default_rng(seed)
    picks = vectors[rng.choice(len(vectors), size=count, replace=False)]
    q = picks + rng.normal(size=picks.shape).astype(np.float32) * 0.04
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def chunk_text(i: int, *, size: int = 500) -> str:
    rng = np.random.default_rng(i)
    words = []
    length = 0
    while length < size:
        word = WORDS[int(rng.integers(len(WORDS)))]
        words.append(word)
        length += len(word) + 1
    return f"chunk {i} " + " ".join(words)


def chunk_metadata(i: int) -> dict[str, object]:
    """A few metadata fields; ``bucket`` in 0..999 makes any selectivity a range filter."""
    return {"bucket": (i * 7919) % 1000, "country": ["UK", "Germany", "France", "Spain"][i % 4],
            "year": 2000 + i % 25}


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bench_record(i: int, text: str, vectors: dict[str, np.ndarray]) -> DocumentRecord:
    """Document ``doc{i}`` with one chunk ``c{i}`` and a (1, d) vector per model name."""
    digest = text_hash(text)
    return DocumentRecord(
        id=f"doc{i}", source_path=f"/corpus/doc{i}.txt", source_type="text", content_hash=digest,
        raw_text=None,
        chunks=(ChunkRecord(id=f"c{i}", chunk_index=0, chunk_type="text", text=text, start_char=0,
                            end_char=len(text), token_count=100, text_hash=digest),),
        vectors=tuple(VectorBatch(name, vector) for name, vector in vectors.items()),
        metadata=chunk_metadata(i),
    )


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p95_ms: float


def time_calls(fn: Callable[[int], object], count: int) -> Timing:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return Timing(statistics.median(samples), samples[int(0.95 * (len(samples) - 1))])


def batched(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def recall_at_k(got: list[int], want: list[int]) -> float:
    return len(set(got) & set(want)) / max(1, len(want))
