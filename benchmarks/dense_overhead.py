"""What the store adds to one dense query, unfiltered (HNSW) and filtered, against raw FAISS +
SQLite in the same run, with the raw side timed on FAISS's default threads and on one.

    python benchmarks/dense_overhead.py [--n 100000] [--dir /tmp/dense-overhead] [--reps 5]
        [--queries 200] [--code OTHER_CHECKOUT] [--models flat,hnsw,ivf]

Builds (once, kept in ``--dir``) a store of N clustered 384-d chunks under a flat, an HNSW and
an IVF model and the raw SQLite table of scale.py. Each row times ours, raw on one thread and
raw on FAISS's default threads in turn within each of ``--reps`` repetitions (``--queries``
queries each, per-query median), and reports the median over repetitions of each and of the
per-repetition ratio ours / raw 1t, by wall time and by the process's CPU time, with the load
average before and after the row (the machine is shared: a wall-time ratio from one
repetition can be a scheduler artefact; CPU time counts the work whatever the waiting). Raw HNSW
searches the store's own FAISS index object (same graph, same efSearch); raw filtered is SQL
ids through an index + FAISS flat with an ``IDSelectorBatch``. "raw 1t" runs FAISS on one
OpenMP thread, as the store does per query since this benchmark showed two threads waiting
16-20 ms for a core on a busy machine. Every query of a filtered row uses the same filter, so
"ours" is a repeated filter (its allowed ids remembered for the store generation,
store/filter_cache.py); "cold" times the same queries with that memory emptied before each,
as the first query of a filter after a write pays. ``--code`` imports mlflow_rag from another checkout
(an A/B on the same store and queries; the store is opened read-only).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if "--code" in sys.argv:  # before mlflow_rag is imported
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--code") + 1]).resolve()))

from benchmarks.common import chunk_metadata, chunk_text, clustered_vectors, queries_near
from benchmarks.scale import build_store, hydrate, raw_db
from mlflow_rag.store.store import Store

SELECTIVITIES = (0.001, 0.01, 0.02, 0.1, 0.5)
MODELS = ("flat", "hnsw", "ivf")


def prepare(folder: Path, n: int) -> None:
    if (folder / "raw.db").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    vectors = clustered_vectors(n, 384)
    texts = [chunk_text(i) for i in range(n)]
    build_store(folder / "store", vectors, texts, list(MODELS)).close()
    raw_db(folder / "raw.tmp", texts).close()
    (folder / "raw.tmp").rename(folder / "raw.db")


def timed_rounds(fns: list[Callable[[int], object]], count: int,
                 reps: int) -> list[list[tuple[float, float]]]:
    """Per repetition, each function's median (wall ms, CPU ms) over ``count`` queries; the
    functions take turns within a repetition, so a busy spell weighs on all of them alike.
    CPU time is the process's (every thread, BLAS's included): on a machine with more
    runnable threads than cores, wall time is mostly waiting for a core."""
    rounds = []
    for _ in range(reps):
        medians = []
        for fn in fns:
            wall, cpu = [], []
            for i in range(count):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(i)
                cpu.append((time.process_time() - start_cpu) * 1e3)
                wall.append((time.perf_counter() - start) * 1e3)
            medians.append((statistics.median(wall), statistics.median(cpu)))
        rounds.append(medians)
    return rounds


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


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
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--code", type=Path, help="import mlflow_rag from this checkout")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="the store's models to time, comma-separated")
    args = parser.parse_args()
    import mlflow_rag
    print(f"mlflow_rag from {Path(mlflow_rag.__file__).parent.parent}; load {load()}", flush=True)
    prepare(args.dir, args.n)
    vectors = clustered_vectors(args.n, 384)
    queries = queries_near(vectors, args.queries)
    buckets = np.array([chunk_metadata(i)["bucket"] for i in range(args.n)])
    store = Store.open(args.dir / "store", read_only=True)
    conn = sqlite3.connect(args.dir / "raw.db")
    models = args.models.split(",")
    for model in models:
        store.dense_search(queries[0], model=model, k=10)
    hnsw = store._core.index_cache.indexes["hnsw"].index  # the same graph, searched raw
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(384))
    flat.add_with_ids(vectors, np.arange(args.n, dtype=np.int64))
    summary: dict[str, float] = {}

    def cold_search(query: np.ndarray, model: str, filters: dict[str, object]) -> object:
        # The filter's remembered ids (if this checkout has them) forgotten first: the cost
        # of a filter's first query at a generation.
        cached = store._core.index_cache.keys.get(model)
        if cached is not None and hasattr(cached[1], "results"):
            cached[1].results.clear()
        return store.dense_search(query, model=model, k=10, filters=filters)
    count = args.queries

    def report(label: str, ours: Callable[[int], object], raw1: Callable[[int], object],
               raw: Callable[[int], object], cold: Callable[[int], object] | None = None) -> None:
        before = load()
        rounds = timed_rounds([ours, raw1, raw, *([cold] if cold else [])], count, args.reps)
        (o, oc), (r1, r1c), (r, _), *rest = (
            (statistics.median(w for w, _ in column), statistics.median(c for _, c in column))
            for column in zip(*rounds, strict=True))
        ratios = [row[0][0] / row[1][0] for row in rounds]
        ratio = statistics.median(ratios)
        cpu_ratio = statistics.median(row[0][1] / row[1][1] for row in rounds)
        cold_text = ""
        if rest:
            cold_cpu = statistics.median(row[3][1] / row[1][1] for row in rounds)
            cold_text = f" cold {rest[0][1]:.3f} ms ({cold_cpu:.2f}x)"
        print(f"{label:34s} ours {o:8.3f} ms  raw 1t {r1:8.3f} ms  raw {r:8.3f} ms  "
              f"ours/raw 1t {ratio:.2f}x (reps {min(ratios):.2f}-{max(ratios):.2f}; "
              f"ours/raw {o / r:.2f}x)  CPU ours {oc:.3f} raw 1t {r1c:.3f} ms "
              f"({cpu_ratio:.2f}x){cold_text}  load {before} -> {load()}", flush=True)
        summary[label.split()[0] + "_" + label.split()[-1]] = ratio

    report("hnsw unfiltered",
           lambda i: store.dense_search(queries[i], model="hnsw", k=10),
           lambda i: raw_search(hnsw, conn, queries[i], None, 1),
           lambda i: raw_search(hnsw, conn, queries[i], None, None))
    for selectivity in SELECTIVITIES:
        threshold = max(1, int(selectivity * 1000))
        filters = {"bucket": {"$lt": threshold}}
        allowed = np.flatnonzero(buckets < threshold)

        def raw_filtered(i: int, threads: int | None, t: int = threshold) -> list[int]:
            ids = np.fromiter((r[0] for r in conn.execute(
                "SELECT id FROM chunks WHERE bucket < ?", (t,))), dtype=np.int64)
            return raw_search(flat, conn, queries[i], ids, threads)

        for model in models:
            recalls = []
            for q in range(0, count, max(1, count // 20)):  # 20 queries against brute force
                hits = store.dense_search(queries[q], model=model, k=10, filters=filters)
                want = allowed[np.argsort(-(vectors[allowed] @ queries[q]), kind="stable")[:10]]
                recalls.append(len({int(h.chunk_id[1:]) for h in hits} & set(want.tolist())) / 10)
            report(f"filtered_{model} {selectivity:.1%} recall {min(recalls):.2f} {selectivity}",
                   lambda i, m=model, f=filters: store.dense_search(
                       queries[i], model=m, k=10, filters=f),
                   lambda i: raw_filtered(i, 1), lambda i: raw_filtered(i, None),
                   lambda i, m=model, f=filters: cold_search(queries[i], m, f))
    store.close(flush=False)
    print(" ".join(f"{k}_ratio_1t={v:.3f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
