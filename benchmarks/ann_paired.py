"""The store's unfiltered ANN query against raw, timed query by query in turn (a paired form
of ann_overhead.py that a busy machine disturbs less: each query's raw and store timings
are taken back to back, in alternating order).

    python benchmarks/ann_paired.py --dir D --n 100000 --model hnsw [--mmap] [--rounds 3]

D is a folder ann_overhead.py built (``store/`` and ``raw.db``). The store loads its indexes
and hit maps first (as a server does). Prints the median over rounds of ours / raw (each
round: median store time / median raw time over the queries) and the load average.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import clustered_vectors, queries_near
from benchmarks.scale import hydrate
from mlflow_rag.index.vector_index import one_query
from mlflow_rag.store.request import Retrieval
from mlflow_rag.store.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--model", default="hnsw")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mmap", action="store_true")
    args = parser.parse_args()
    queries = queries_near(clustered_vectors(args.n, 384), args.queries)
    store = Store.open(args.dir / "store", read_only=True, mmap=args.mmap)
    store.load_indexes()
    request = Retrieval.parse(k=10, filters=None)
    index = store._core.index_cache.indexes[args.model]
    conn = sqlite3.connect(args.dir / "raw.db")

    def ours(i: int) -> object:
        return store.dense(queries[i], request, model=args.model)

    def raw(i: int) -> object:
        _, labels = one_query(index.index, queries[i], 10)
        return hydrate(conn, [int(v) for v in labels[0] if v >= 0])

    ratios, ours_ms, raw_ms = [], [], []
    clock = time.perf_counter
    for _ in range(args.rounds):
        mine, theirs = [], []
        for i in range(args.queries):
            first, second = (ours, raw) if i % 2 else (raw, ours)
            a = clock()
            first(i)
            b = clock()
            second(i)
            c = clock()
            (mine if i % 2 else theirs).append(b - a)
            (theirs if i % 2 else mine).append(c - b)
        ours_ms.append(statistics.median(mine) * 1e3)
        raw_ms.append(statistics.median(theirs) * 1e3)
        ratios.append(ours_ms[-1] / raw_ms[-1])
    store.close(flush=False)
    print(f"ann_paired_ratio={statistics.median(ratios):.3f} ours_p50_ms="
          f"{statistics.median(ours_ms):.3f} raw_p50_ms={statistics.median(raw_ms):.3f} "
          f"rounds={','.join(f'{r:.2f}' for r in ratios)} mmap={args.mmap} "
          f"load={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
