"""Dense search overhead against raw FAISS + one SQLite SELECT, and exact filtered recall.

    python benchmarks/search_overhead.py [--n 100000] [--dim 384] [--queries 200] [--reps 5]
                                         [--skip-filtered]

Builds one store with N chunks (~500 bytes of text and a few metadata fields each, clustered
384-d vectors) and, beside it in the same run, the raw baseline: a FAISS IndexIDMap2 over
IndexFlatIP with the same vectors plus an SQLite table with the same rows. Reports the median
over repetitions of (our dense top-10 with hydration) / (raw FAISS search + one SELECT); the
same against the floor of any exact search, a bare numpy matrix-vector product ``m @ q`` over
an aligned copy of the same vectors (no top-k, no hydration: ``exact_to_numpy_ratio``); and
recall@10 of filtered search against brute force on the filtered set at 0.1/1/10/50 %
selectivity, for the flat and HNSW indexes. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    batched,
    bench_record,
    chunk_metadata,
    chunk_text,
    clustered_vectors,
    queries_near,
    recall_at_k,
    time_calls,
)
from mlflow_rag.store.store import Store

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)


def build_store(path: Path, vectors: np.ndarray, texts: list[str], *,
                models: tuple[str, ...] = ("flat", "hnsw")) -> Store:
    store = Store.open(path, create=True)
    for model in models:  # the model's name is its index type
        store.ensure_model(model, vectors.shape[1], index_type=model)
    for block in tqdm(list(batched(len(vectors), 2000)), desc="store ingest", unit="batch"):
        records = [bench_record(i, texts[i], {model: vectors[i : i + 1] for model in models})
                   for i in block]
        store.write(records)
    start = time.perf_counter()
    store.flush()
    print(f"index build + persist: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return store


def build_raw(path: Path, vectors: np.ndarray, texts: list[str]) -> tuple[faiss.Index, sqlite3.Connection]:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, chunk_id TEXT, document_id TEXT, "
        "chunk_type TEXT, chunk_index INTEGER, text TEXT, chunk_metadata TEXT, source_path TEXT, "
        "metadata TEXT)"
    )
    conn.executemany(
        "INSERT INTO chunks VALUES (?, ?, ?, 'text', 0, ?, '{}', ?, ?)",
        ((i, f"c{i}", f"doc{i}", texts[i], f"/corpus/doc{i}.txt", json.dumps(chunk_metadata(i)))
         for i in range(len(texts))),
    )
    conn.commit()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    return index, conn


def raw_search(index: faiss.Index, conn: sqlite3.Connection, query: np.ndarray, k: int) -> list:
    _, labels = index.search(query.reshape(1, -1), k)
    ids = [int(i) for i in labels[0] if i >= 0]
    rows = conn.execute(
        f"SELECT id, chunk_id, document_id, chunk_type, chunk_index, text, chunk_metadata, "
        f"source_path, metadata FROM chunks WHERE id IN ({','.join('?' * len(ids))})", ids
    ).fetchall()
    by_id = {r[0]: r for r in rows}
    return [by_id[i] for i in ids]


def dense_rounds(store: Store, index: faiss.Index, conn: sqlite3.Connection, bare: np.ndarray,
                 queries: np.ndarray, reps: int) -> tuple[float, float]:
    """Median per-round ratios of our dense top-10 (flat, exact, hydrated) to raw FAISS + one
    SELECT and to a bare ``bare @ q``; the three interleaved per round, so load hits them alike."""
    count = len(queries)
    ratios, to_numpy, ours_ms, raw_ms, numpy_ms = [], [], [], [], []
    for _ in range(reps):
        ours = time_calls(lambda i: store.dense_search(queries[i], model="flat", k=10), count)
        raw = time_calls(lambda i: raw_search(index, conn, queries[i], 10), count)
        floor = time_calls(lambda i: bare @ queries[i], count)
        ratios.append(ours.median_ms / raw.median_ms)
        to_numpy.append(ours.median_ms / floor.median_ms)
        ours_ms.append(ours.median_ms)
        raw_ms.append(raw.median_ms)
        numpy_ms.append(floor.median_ms)
    n, dim = bare.shape
    print(f"dense top-10 with hydration, {n:,} x {dim}: ours p50 "
          f"{statistics.median(ours_ms):.2f} ms, raw FAISS flat + SELECT p50 "
          f"{statistics.median(raw_ms):.2f} ms, bare numpy m @ q p50 "
          f"{statistics.median(numpy_ms):.2f} ms; ratios {statistics.median(ratios):.3f} (raw), "
          f"{statistics.median(to_numpy):.3f} (numpy) (median of {reps} per-round ratios: "
          f"{', '.join(f'{r:.3f}' for r in to_numpy)})")
    return statistics.median(ratios), statistics.median(to_numpy)


def filtered_recalls(store: Store, vectors: np.ndarray, queries: np.ndarray,
                     buckets: np.ndarray) -> dict[tuple[str, float], float]:
    """recall@10 (and p50) of exact filtered search against numpy brute force on the
    filtered set, per index and selectivity."""
    recalls: dict[tuple[str, float], float] = {}
    for model in ("flat", "hnsw"):
        for selectivity in SELECTIVITIES:
            threshold = max(1, int(selectivity * 1000))
            allowed = np.flatnonzero(buckets < threshold)
            filters = {"bucket": {"$lt": threshold}}
            per_query, latencies = [], []
            for q in queries[:50]:
                start = time.perf_counter()
                hits = store.dense_search(q, model=model, k=10, filters=filters)
                latencies.append((time.perf_counter() - start) * 1000)
                scores = vectors[allowed] @ q
                want = allowed[np.argsort(-scores, kind="stable")[:10]].tolist()
                got = [int(h.chunk_id[1:]) for h in hits]
                per_query.append(recall_at_k(got, want))
            recalls[(model, selectivity)] = float(np.mean(per_query))
            print(f"filtered {model:>4} at {selectivity:>6.1%} ({len(allowed):>6} chunks): "
                  f"recall@10 {recalls[(model, selectivity)]:.3f}, "
                  f"p50 {statistics.median(latencies):.2f} ms")
    return recalls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-filtered", action="store_true",
                        help="measure dense search only (no filtered recall/latency)")
    args = parser.parse_args()

    vectors = clustered_vectors(args.n, args.dim)
    texts = [chunk_text(i) for i in range(args.n)]
    queries = queries_near(vectors, args.queries)
    buckets = np.array([chunk_metadata(i)["bucket"] for i in range(args.n)])

    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp) / "store", vectors, texts,
                            models=("flat",) if args.skip_filtered else ("flat", "hnsw"))
        index, conn = build_raw(Path(tmp) / "raw.db", vectors, texts)
        # warm both (index load, page cache)
        store.dense_search(queries[0], model="flat", k=10)
        raw_search(index, conn, queries[0], 10)

        bare = np.array(vectors, dtype=np.float32, order="C")  # a fresh aligned matrix
        ratio, to_numpy = dense_rounds(store, index, conn, bare, queries, args.reps)
        recalls = {} if args.skip_filtered else filtered_recalls(store, vectors, queries, buckets)
        store.close(flush=False)
        conn.close()
    recall = f" filtered_recall_min={min(recalls.values()):.3f}" if recalls else ""
    print(f"search_overhead_ratio={ratio:.3f} exact_to_numpy_ratio={to_numpy:.3f}{recall}")


if __name__ == "__main__":
    main()
