"""Scale: search, filtered search, BM25/hybrid, cold start, memory and disk at 10K-1M chunks.

    python benchmarks/scale.py [--sizes 10000,100000] [--models flat,hnsw,auto] [--queries 200]
        [--reps 3] [--selectivities 0.001,0.01,0.1,0.5] [--filtered-queries 50]

For each size one store is built with precomputed clustered vectors under up to three models
(flat, HNSW, and the automatic choice, which is IVF above 250K vectors), and beside it the raw
baselines of the same index types and parameters over the same vectors plus one SQLite table.
Reported per size: dense top-10 p50 and its ratio to raw of the same index type with recall@10
against brute force; filtered search at 0.1/1/10/50 % against raw flat filtered (SQL ids +
FAISS IDSelector), with recall; BM25 and hybrid p50; process start to first answer (vector
given) against raw (faiss.read_index + SELECT) and the peak RSS of that process, per model;
bytes on disk. The last line is machine-readable.

At 1M x 384 each copy of the vectors is 1.5 GB: ``--models flat,auto`` skips HNSW (its build
takes minutes per copy), and only one raw index besides raw flat is held at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
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
from mlflow_rag.index.choose import choose_index
from mlflow_rag.index.vector_index import IVF_PARALLEL_MODE, training_sample
from mlflow_rag.search import Searcher
from mlflow_rag.store.store import Store

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
MODELS = ("flat", "hnsw", "auto")


def build_store(path: Path, vectors: np.ndarray, texts: list[str], models: list[str]) -> Store:
    store = Store.open(path, create=True)
    for name in models:
        store.ensure_model(name, vectors.shape[1], index_type=name)
    start = time.perf_counter()
    for block in tqdm(list(batched(len(texts), 5000)), desc="store ingest", unit="batch"):
        store.write([bench_record(i, texts[i], {m: vectors[i : i + 1] for m in models})
                     for i in block], skip_unchanged=False)
    written = time.perf_counter() - start
    store.flush()
    print(f"store write {written:.1f} s, index build + persist {time.perf_counter() - start - written:.1f} s"
          f" ({len(models)} models)")
    return store


def raw_index(kind: str, vectors: np.ndarray) -> faiss.Index:
    spec = choose_index(kind, len(vectors), vectors.shape[1])
    ids = np.arange(len(vectors), dtype=np.int64)
    if spec.kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    elif spec.kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(vectors.shape[1], spec.params["M"], faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = spec.params["ef_construction"]
        hnsw.hnsw.efSearch = spec.params["ef_search"]
        index = faiss.IndexIDMap2(hnsw)
    else:  # the same nlist, nprobe, training sample size and parallel mode as the store's
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], spec.params["nlist"],
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(training_sample(vectors, spec.params["nlist"]))
        index.nprobe = spec.params["nprobe"]
        index.parallel_mode = IVF_PARALLEL_MODE
    index.add_with_ids(vectors, ids)
    return index


def raw_db(path: Path, texts: list[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, chunk_id TEXT, document_id TEXT, "
                 "text TEXT, source_path TEXT, metadata TEXT, bucket INTEGER)")
    conn.execute("CREATE INDEX chunks_bucket ON chunks(bucket)")
    conn.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                     ((i, f"c{i}", f"doc{i}", texts[i], f"/corpus/doc{i}.txt",
                       json.dumps(chunk_metadata(i)), chunk_metadata(i)["bucket"])
                      for i in range(len(texts))))
    conn.commit()
    return conn


def hydrate(conn: sqlite3.Connection, ids: list[int]) -> list:
    rows = conn.execute(f"SELECT * FROM chunks WHERE id IN ({','.join('?' * len(ids))})",
                        ids).fetchall()
    by_id = {r[0]: r for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def raw_search(index: faiss.Index, conn: sqlite3.Connection, q: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> list[int]:
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed)) if allowed is not None else None
    _, labels = index.search(q.reshape(1, -1), k, params=params)
    ids = [int(i) for i in labels[0] if i >= 0]
    hydrate(conn, ids)
    return ids


# Peak RSS from /proc (VmHWM: this process's own memory). ru_maxrss is not usable here: Linux
# carries it across fork + exec, so a child of a 10 GB benchmark reports 10 GB.
COLD_OURS = """
import re, sys, time, numpy as np
t = time.perf_counter()
from mlflow_rag.store.store import Store
store = Store.open(sys.argv[1], read_only=True)
hits = store.dense_search(np.load(sys.argv[2]), model=sys.argv[3], k=10)
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(time.perf_counter() - t, hwm, len(hits))
"""
# The same with the index memory-mapped (serving's default): no private copy of the vectors.
COLD_OURS_MMAP = COLD_OURS.replace("read_only=True)", "read_only=True, mmap=True)")
COLD_RAW = """
import re, sqlite3, sys, time, numpy as np
t = time.perf_counter()
import faiss
index = faiss.read_index(sys.argv[1])
conn = sqlite3.connect(sys.argv[2])
_, labels = index.search(np.load(sys.argv[3]).reshape(1, -1), 10)
ids = [int(i) for i in labels[0]]
rows = conn.execute(f"SELECT * FROM chunks WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(time.perf_counter() - t, hwm, len(rows))
"""


def cold(script: str, *args: str) -> tuple[float, int]:
    # Python as users run it: this sandbox sets PYTHONDONTWRITEBYTECODE, which would make
    # every start compile mlflow_rag from source, while numpy and faiss come with bytecode
    # compiled at install time. The caller discards a first run per script (it writes the
    # bytecode and warms the page cache for both sides alike).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent, env=env).stdout.split()
    return float(out[0]), int(out[1])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_size(n: int, args: argparse.Namespace, summary: dict[str, float]) -> None:
    models: list[str] = args.models
    print(f"\n### {n:,} chunks x {args.dim}, models {','.join(models)}")
    vectors = clustered_vectors(n, args.dim)
    texts = [chunk_text(i) for i in range(n)]
    queries = queries_near(vectors, args.queries)
    sample = min(args.filtered_queries, len(queries))  # queries for recall and filtered timings
    buckets = np.array([chunk_metadata(i)["bucket"] for i in range(n)])
    truth = [np.argsort(-(vectors @ q), kind="stable")[:10].tolist() for q in queries[:sample]]
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        store = build_store(tmpdir / "store", vectors, texts, models)
        conn = raw_db(tmpdir / "raw.db", texts)
        del texts
        auto_kind = next((m.index_type for m in store.models() if m.name == "auto"), "")
        flat_raw = raw_index("flat", vectors)  # the filtered and cold-start baseline too
        for model in models:
            index = flat_raw if model == "flat" else raw_index(
                auto_kind if model == "auto" else model, vectors)
            store.dense_search(queries[0], model=model, k=10)
            ratios, ours_p50, raw_p50 = [], [], []
            for _ in range(args.reps):
                ours = time_calls(lambda i, m=model: store.dense_search(queries[i], model=m, k=10),
                                  args.queries)
                raw = time_calls(lambda i, ix=index: raw_search(ix, conn, queries[i], 10), args.queries)
                ratios.append(ours.median_ms / raw.median_ms)
                ours_p50.append(ours.median_ms)
                raw_p50.append(raw.median_ms)
            recall = statistics.mean(
                recall_at_k([int(h.chunk_id[1:]) for h in store.dense_search(q, model=model, k=10)], t)
                for q, t in zip(queries[:sample], truth, strict=True))
            raw_recall = statistics.mean(
                recall_at_k(raw_search(index, conn, q, 10), t)
                for q, t in zip(queries[:sample], truth, strict=True))
            label = f"{model}({auto_kind})" if model == "auto" else model
            print(f"dense {label:>10}: ours p50 {statistics.median(ours_p50):7.2f} ms  raw p50 "
                  f"{statistics.median(raw_p50):7.2f} ms  ratio {statistics.median(ratios):.3f}  "
                  f"recall@10 ours {recall:.3f} raw {raw_recall:.3f}", flush=True)
            summary[f"n{n}_{model}_ratio"] = statistics.median(ratios)
            summary[f"n{n}_{model}_p50_ms"] = statistics.median(ours_p50)
            summary[f"n{n}_{model}_recall"] = recall
            del index  # one raw index besides raw flat at a time (1.5 GB each at 1M x 384)
        for selectivity in args.selectivities:
            threshold = max(1, int(selectivity * 1000))
            allowed = np.flatnonzero(buckets < threshold)
            filters = {"bucket": {"$lt": threshold}}

            def raw_filtered(i: int, t: int = threshold) -> list[int]:
                ids = np.fromiter((r[0] for r in conn.execute(
                    "SELECT id FROM chunks WHERE bucket < ?", (t,))), dtype=np.int64)
                return raw_search(flat_raw, conn, queries[i], 10, allowed=ids)

            raw = time_calls(raw_filtered, sample)
            for model in models:
                ours = time_calls(lambda i, m=model, f=filters: store.dense_search(
                    queries[i], model=m, k=10, filters=f), sample)
                got = [int(h.chunk_id[1:]) for h in store.dense_search(queries[1], model=model, k=10,
                                                                         filters=filters)]
                want = allowed[np.argsort(-(vectors[allowed] @ queries[1]), kind="stable")[:10]].tolist()
                print(f"filtered {model:>4} {selectivity:6.1%}: ours p50 {ours.median_ms:7.2f} ms  "
                      f"raw flat p50 {raw.median_ms:7.2f} ms  ratio {ours.median_ms / raw.median_ms:.2f}"
                      f"  recall@10 {recall_at_k(got, want):.3f}", flush=True)
                summary[f"n{n}_filtered_{model}_{selectivity}_ratio"] = ours.median_ms / raw.median_ms
                summary[f"n{n}_filtered_{model}_{selectivity}_p50_ms"] = ours.median_ms
        searcher = Searcher(store, model=models[0], embedder=_VectorEmbedder(queries, models[0]))
        bm25 = time_calls(lambda i: store.lexical_search(f"protein cell gene {i % 7}", k=10), 100)
        hybrid = time_calls(lambda i: searcher.search(str(i % len(queries)), k=10, mode="hybrid"), 100)
        print(f"bm25 p50 {bm25.median_ms:.2f} ms, hybrid ({models[0]}) p50 {hybrid.median_ms:.2f} ms")
        summary[f"n{n}_bm25_p50_ms"] = bm25.median_ms
        summary[f"n{n}_hybrid_p50_ms"] = hybrid.median_ms
        store.close(flush=False)  # drops its indexes
        np.save(tmpdir / "q.npy", queries[0])
        faiss.write_index(flat_raw, str(tmpdir / "raw.faiss"))
        flat_raw.reset()  # frees its vectors before the cold-start processes load theirs
        del vectors
        conn.close()
        raw_args = (str(tmpdir / "raw.faiss"), str(tmpdir / "raw.db"), str(tmpdir / "q.npy"))
        cold(COLD_RAW, *raw_args)  # discarded: warms the page cache (see cold())
        cold_raw = [cold(COLD_RAW, *raw_args) for _ in range(3)]
        raw_s = statistics.median(c[0] for c in cold_raw)
        for model in models:
            cold(COLD_OURS, str(tmpdir / "store"), str(tmpdir / "q.npy"), model)  # discarded
            cold_ours = [cold(COLD_OURS, str(tmpdir / "store"), str(tmpdir / "q.npy"), model)
                         for _ in range(3)]
            ours_s = statistics.median(c[0] for c in cold_ours)
            print(f"start to first answer ({model}): ours {ours_s:.2f} s, raw flat {raw_s:.2f} s, "
                  f"ratio {ours_s / raw_s:.2f}; peak RSS ours {max(c[1] for c in cold_ours) / 1024:.0f}"
                  f" MB, raw flat {max(c[1] for c in cold_raw) / 1024:.0f} MB", flush=True)
            summary[f"n{n}_cold_{model}_ratio"] = ours_s / raw_s
            summary[f"n{n}_cold_{model}_rss_mb"] = max(c[1] for c in cold_ours) / 1024
            if model == "flat":
                cold_mmap = [cold(COLD_OURS_MMAP, str(tmpdir / "store"), str(tmpdir / "q.npy"),
                                  model) for _ in range(3)]
                mmap_s = statistics.median(c[0] for c in cold_mmap)
                print(f"start to first answer (flat, mapped): {mmap_s:.2f} s, ratio "
                      f"{mmap_s / raw_s:.2f}", flush=True)
                summary[f"n{n}_cold_mmap_ratio"] = mmap_s / raw_s
        index_files = {p.name: p.stat().st_size for p in (tmpdir / "store").rglob("*.faiss")}
        print(f"bytes on disk: store {dir_bytes(tmpdir / 'store') / 1e6:.0f} MB ({len(models)} models;"
              f" index files {', '.join(f'{k} {v / 1e6:.0f} MB' for k, v in sorted(index_files.items()))}),"
              f" raw {(os.path.getsize(tmpdir / 'raw.db') + os.path.getsize(tmpdir / 'raw.faiss')) / 1e6:.0f}"
              f" MB (SQLite + flat index)")


class _VectorEmbedder:
    """Hybrid search needs a query embedder; the benchmark's queries are vectors already."""

    version = "bench"

    def __init__(self, queries: np.ndarray, name: str) -> None:
        self.queries = queries
        self.name = name
        self.dimension = queries.shape[1]

    def embed(self, texts):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def embed_query(self, text: str) -> np.ndarray:
        return self.queries[int(text)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--selectivities", default=",".join(map(str, SELECTIVITIES)),
                        help="filter selectivities to time (50 %% of 1M takes seconds per query)")
    parser.add_argument("--filtered-queries", type=int, default=50,
                        help="queries for recall@10 and filtered timings")
    args = parser.parse_args()
    args.selectivities = [float(s) for s in args.selectivities.split(",") if s]
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    summary: dict[str, float] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        run_size(n, args, summary)
    keys = [k for k in summary if (k.endswith(("_ratio", "_recall", "_p50_ms"))
                                   and "filtered" not in k) or k.endswith("_0.01_p50_ms")]
    print(" ".join(f"{k}={summary[k]:.3f}" for k in keys))


if __name__ == "__main__":
    main()
