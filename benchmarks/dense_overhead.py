"""What the store adds to one dense query, unfiltered (HNSW) and filtered, against raw FAISS +
SQLite in the same run, with the raw side timed on FAISS's default threads and on one.

    python benchmarks/dense_overhead.py [--n 100000] [--dir /tmp/dense-overhead] [--reps 3]

Builds (once, kept in ``--dir``) a store of N clustered 384-d chunks under a flat and an HNSW
model and the raw SQLite table of scale.py, then reports medians over ``--reps`` repetitions
(200 queries unfiltered, 50 filtered). Raw HNSW searches the store's own FAISS index object
(same graph, same efSearch); raw filtered is SQL ids through an index + FAISS flat with an
``IDSelectorBatch``. "raw 1t" runs FAISS on one OpenMP thread, as the store does per query
since this benchmark showed two threads waiting 16-20 ms for a core on a busy machine.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import chunk_metadata, chunk_text, clustered_vectors, queries_near
from benchmarks.scale import build_store, hydrate, raw_db
from mlflow_rag.store.store import Store

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)


def prepare(folder: Path, n: int) -> None:
    if (folder / "raw.db").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    vectors = clustered_vectors(n, 384)
    texts = [chunk_text(i) for i in range(n)]
    build_store(folder / "store", vectors, texts, ["flat", "hnsw"]).close()
    raw_db(folder / "raw.tmp", texts).close()
    (folder / "raw.tmp").rename(folder / "raw.db")


def median_ms(fn: Callable[[int], object], count: int, reps: int) -> float:
    out = []
    for _ in range(reps):
        samples = []
        for i in range(count):
            start = time.perf_counter()
            fn(i)
            samples.append((time.perf_counter() - start) * 1e3)
        out.append(statistics.median(samples))
    return statistics.median(out)


def raw_search(index: faiss.Index, conn: sqlite3.Connection, q: np.ndarray,
               allowed: np.ndarray | None, threads: int | None) -> list[int]:
    before = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed)) if allowed is not None else None
    _, labels = index.search(q.reshape(1, -1), 10, params=params)
    faiss.omp_set_num_threads(before)
    ids = [int(i) for i in labels[0] if i >= 0]
    hydrate(conn, ids)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dense-overhead"))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    prepare(args.dir, args.n)
    vectors = clustered_vectors(args.n, 384)
    queries = queries_near(vectors, 200)
    buckets = np.array([chunk_metadata(i)["bucket"] for i in range(args.n)])
    store = Store.open(args.dir / "store", read_only=True)
    conn = sqlite3.connect(args.dir / "raw.db")
    for model in ("flat", "hnsw"):
        store.dense_search(queries[0], model=model, k=10)
    hnsw = store._core.index_cache.indexes["hnsw"].index  # the same graph, searched raw
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(384))
    flat.add_with_ids(vectors, np.arange(args.n, dtype=np.int64))
    summary: dict[str, float] = {}

    def report(label: str, ours: float, raw1: float, raw: float) -> None:
        print(f"{label:26s} ours {ours:8.3f} ms  raw 1t {raw1:8.3f} ms ({ours / raw1:.2f}x)  "
              f"raw {raw:8.3f} ms ({ours / raw:.2f}x)", flush=True)
        summary[label.split()[0] + "_" + label.split()[-1]] = ours / raw1

    report("hnsw unfiltered",
           median_ms(lambda i: store.dense_search(queries[i], model="hnsw", k=10), 200, args.reps),
           median_ms(lambda i: raw_search(hnsw, conn, queries[i], None, 1), 200, args.reps),
           median_ms(lambda i: raw_search(hnsw, conn, queries[i], None, None), 200, args.reps))
    for selectivity in SELECTIVITIES:
        threshold = max(1, int(selectivity * 1000))
        filters = {"bucket": {"$lt": threshold}}
        allowed = np.flatnonzero(buckets < threshold)

        def raw_filtered(i: int, threads: int | None, t: int = threshold) -> list[int]:
            ids = np.fromiter((r[0] for r in conn.execute(
                "SELECT id FROM chunks WHERE bucket < ?", (t,))), dtype=np.int64)
            return raw_search(flat, conn, queries[i], ids, threads)

        for model in ("flat", "hnsw"):
            hits = store.dense_search(queries[3], model=model, k=10, filters=filters)
            want = allowed[np.argsort(-(vectors[allowed] @ queries[3]), kind="stable")[:10]]
            recall = len({int(h.chunk_id[1:]) for h in hits} & set(want.tolist())) / 10
            report(f"filtered_{model} {selectivity:.1%} recall {recall:.1f} {selectivity}",
                   median_ms(lambda i, m=model, f=filters: store.dense_search(
                       queries[i], model=m, k=10, filters=f), 50, args.reps),
                   median_ms(lambda i: raw_filtered(i, 1), 50, args.reps),
                   median_ms(lambda i: raw_filtered(i, None), 50, args.reps))
    store.close(flush=False)
    print(" ".join(f"{k}_ratio_1t={v:.3f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
