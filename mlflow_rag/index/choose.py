"""Which FAISS index to build: a pure, table-tested decision (autofaiss style)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_rag.errors import InvalidInput, UnknownChoice

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")

# Below this many vectors an exact scan answers in a few ms (memory bandwidth bound, ~4 ms per
# 100K x 384 floats on two cores) and never misses; above it an approximate index pays off.
EXACT_UP_TO = 250_000

DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128},
    "ivf": {"nlist": 0, "nprobe": 0},  # 0 = derived from the vector count
}


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # "flat" | "hnsw" | "ivf"
    params: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params)}


# IVF: ~sqrt(n) lists, and scan at least MIN_PROBES of them and at least 1/PROBE_SHARE of all.
# Measured at 1M x 384 on clustered data (benchmarks/RESULTS.md, "Scale: 1M chunks"): recall@10
# depends on the share of vectors scanned, hardly on nlist (1024 lists x 8 probes, 2048 x 16 and
# 4096 x 32 all give ~0.98 at ~1 ms), while k-means training and assignment cost grow with nlist
# (4096 lists: 170 s to train, 75 s to add; 1024: 9 s and 16 s). So: few lists, ~1 % probed.
MIN_PROBES = 8
PROBE_SHARE = 100


def ivf_lists(n_vectors: int) -> int:
    """~sqrt(n) lists, but at least 39 training points per list (FAISS's own minimum)."""
    return max(1, min(math.isqrt(max(n_vectors, 1)), n_vectors // 39))


def ivf_probes(nlist: int) -> int:
    """Lists scanned per query: ``MIN_PROBES``, or 1/``PROBE_SHARE`` of them if more."""
    return max(1, min(nlist, max(MIN_PROBES, -(-nlist // PROBE_SHARE))))


def choose_index(
    requested: str, n_vectors: int, dimension: int, params: Mapping[str, Any] | None = None
) -> IndexSpec:
    """The index for ``n_vectors`` of ``dimension``; ``requested`` "auto" decides by size."""
    if requested not in INDEX_TYPES:
        raise UnknownChoice("index type", requested, INDEX_TYPES)
    if dimension < 1:
        raise InvalidInput(f"dimension must be positive, got {dimension}")
    kind = requested
    if kind == "auto":
        kind = "flat" if n_vectors <= EXACT_UP_TO else "ivf"
    merged = dict(DEFAULT_PARAMS[kind])
    for key, value in (params or {}).items():
        if key not in DEFAULT_PARAMS[kind]:
            if requested == "auto":
                continue  # settings for a kind auto did not pick do not apply
            raise UnknownChoice(f"{kind} index parameter", key, DEFAULT_PARAMS[kind])
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"index parameter {key} must be a non-negative integer, got {value!r}")
        merged[key] = value
    if kind == "ivf":
        if not merged["nlist"]:
            merged["nlist"] = ivf_lists(n_vectors)
        if not merged["nprobe"]:
            merged["nprobe"] = ivf_probes(merged["nlist"])
    if kind == "hnsw" and merged["M"] < 2:
        raise InvalidInput(f"HNSW M must be at least 2, got {merged['M']}")
    return IndexSpec(kind, merged)
