"""Which FAISS index to build: a pure, table-tested decision (autofaiss style)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_rag.errors import InvalidInput, UnknownChoice

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
# The kinds that are inverted-file indexes (lists of ids, trained k-means, nprobe).
IVF_KINDS = ("ivf", "ivfpq")
# Kinds whose scores are approximate (compressed codes): the store re-scores their candidates
# with the exact vectors it keeps in its database.
COMPRESSED_KINDS = ("ivfpq",)

# Below this many vectors an exact scan answers in a few ms (memory bandwidth bound, ~4 ms per
# 100K x 384 floats on two cores) and never misses; above it an approximate index pays off.
EXACT_UP_TO = 250_000

DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128},
    "ivf": {"nlist": 0, "nprobe": 0},  # 0 = derived from the vector count
    # m sub-quantizers of 8 bits (0 = one per 8 dimensions); rerank = candidates re-scored
    "ivfpq": {"nlist": 0, "nprobe": 0, "m": 0, "rerank": 0},
}

# Above this many bytes of float32 vectors (n x d x 4) ``auto`` compresses: IVF-Flat keeps
# every vector in memory (1.5 KB per 384-d vector; 3 GB at 2M, 15 GB at 10M), IVF-PQ keeps
# d/8 bytes of code per vector (48 B) and re-scores its candidates exactly from the database.
# Measured at 2M x 384 raw and 300K through the store (benchmarks/RESULTS.md, "10M chunks").
COMPRESS_ABOVE_BYTES = 3_000_000_000
# Sub-vector width of the product quantizer: 8 dimensions per 8-bit code.
PQ_DIMS_PER_CODE = 8
# Candidates the compressed index hands to the exact re-scoring, per query (at least k). PQ48's
# own ranking degrades as the store grows denser: at 2M x 384 (raw FAISS, 1414 lists, 15
# probed) re-scoring 200 candidates gave recall@10 0.868, 500 gave 0.953 (1.2 ms with the
# vectors cached), 1000 gave 0.978 (2.4 ms); at 300K through the store, 200 gave 0.937.
RERANK_DEPTH = 500


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # "flat" | "hnsw" | "ivf" | "ivfpq"
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


def pq_codes(dimension: int) -> int:
    """Sub-quantizers: ~one per ``PQ_DIMS_PER_CODE`` dimensions, a divisor of ``dimension``."""
    target = max(1, dimension // PQ_DIMS_PER_CODE)
    return next(m for m in range(target, 0, -1) if dimension % m == 0)


def _derive_ivf(kind: str, params: dict[str, int], n_vectors: int, dimension: int) -> None:
    """Fill in the IVF settings left at 0 (derived from the size), and check IVF-PQ's."""
    if not params["nlist"]:
        params["nlist"] = ivf_lists(n_vectors)
    if not params["nprobe"]:
        params["nprobe"] = ivf_probes(params["nlist"])
    if kind == "ivfpq":
        if not params["m"]:
            params["m"] = pq_codes(dimension)
        if dimension % params["m"]:
            raise InvalidInput(f"ivfpq m must divide the dimension {dimension}, got {params['m']}")
        if not params["rerank"]:
            params["rerank"] = RERANK_DEPTH


def auto_kind(n_vectors: int, dimension: int) -> str:
    if n_vectors <= EXACT_UP_TO:
        return "flat"
    return "ivfpq" if n_vectors * dimension * 4 > COMPRESS_ABOVE_BYTES else "ivf"


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
        kind = auto_kind(n_vectors, dimension)
    merged = dict(DEFAULT_PARAMS[kind])
    for key, value in (params or {}).items():
        if key not in DEFAULT_PARAMS[kind]:
            if requested == "auto":
                continue  # settings for a kind auto did not pick do not apply
            raise UnknownChoice(f"{kind} index parameter", key, DEFAULT_PARAMS[kind])
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"index parameter {key} must be a non-negative integer, got {value!r}")
        merged[key] = value
    if kind in IVF_KINDS:
        _derive_ivf(kind, merged, n_vectors, dimension)
    if kind == "hnsw" and merged["M"] < 2:
        raise InvalidInput(f"HNSW M must be at least 2, got {merged['M']}")
    return IndexSpec(kind, merged)
