"""IVF-Flat parameter sweep: single-query p50 and recall@10 over an nlist x nprobe grid.

    python benchmarks/ivf_sweep.py [--n 1000000] [--nlists 1024,2048,4096] \
        [--nprobes 4,8,16,32,64] [--train-per-list 64] [--queries 200] [--modes 0,1]

Raw FAISS only (no store): this is the measured basis of ``choose_index``'s IVF rule. Each
index is trained on a random sample of ``train-per-list x nlist`` vectors (FAISS's k-means
uses at most 256 per list anyway), then every vector is added. For each nprobe: recall@10
against brute force (numpy), and single-query latency (one query per call, as a server
answers) for each ``parallel_mode`` (0: FAISS's default, which parallelises over queries and
so runs a single query on one thread; 1: over the probed lists, so both cores scan). The last
line is machine-readable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import clustered_vectors, queries_near


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = np.empty((len(queries), len(vectors)), dtype=np.float32)
    for start in range(0, len(vectors), 200_000):
        scores[:, start : start + 200_000] = queries @ vectors[start : start + 200_000].T
    return np.argsort(-scores, axis=1, kind="stable")[:, :10]


def p50_ms(index: faiss.Index, queries: np.ndarray, reps: int) -> float:
    runs = []
    for _ in range(reps):
        samples = []
        for q in queries:
            row = q.reshape(1, -1)
            start = time.perf_counter()
            index.search(row, 10)
            samples.append((time.perf_counter() - start) * 1000)
        runs.append(statistics.median(samples))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--nlists", default="1024,2048,4096")
    parser.add_argument("--nprobes", default="4,8,16,32,64")
    parser.add_argument("--train-per-list", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default="0,1")
    args = parser.parse_args()
    start = time.perf_counter()
    vectors = clustered_vectors(args.n, args.dim)
    queries = queries_near(vectors, args.queries)
    truth = exact_top10(vectors, queries)
    print(f"data {args.n:,} x {args.dim}, truth: {time.perf_counter() - start:.1f} s")
    rng = np.random.default_rng(7)
    summary: dict[str, float] = {}
    for nlist in (int(s) for s in args.nlists.split(",")):
        sample = vectors[np.sort(rng.choice(args.n, min(args.n, args.train_per_list * nlist),
                                            replace=False))]
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.dim), args.dim, nlist,
                                   faiss.METRIC_INNER_PRODUCT)
        start = time.perf_counter()
        index.train(sample)
        trained = time.perf_counter() - start
        start = time.perf_counter()
        index.add(vectors)
        added = time.perf_counter() - start
        sizes = np.array([index.invlists.list_size(i) for i in range(nlist)])
        print(f"\nnlist {nlist}: train {trained:.1f} s on {len(sample):,}, add {added:.1f} s; list "
              f"sizes median {int(np.median(sizes))} max {sizes.max()} (imbalance "
              f"{index.invlists.imbalance_factor():.2f})")
        del sample
        for nprobe in (int(s) for s in args.nprobes.split(",")):
            if nprobe > nlist:
                continue
            index.nprobe = nprobe
            index.parallel_mode = 0
            _, labels = index.search(queries, 10)
            recall = statistics.mean(len(set(got) & set(want)) / 10
                                     for got, want in zip(labels.tolist(), truth.tolist(), strict=True))
            line = f"  nprobe {nprobe:4d}: recall@10 {recall:.3f}"
            for mode in (int(m) for m in args.modes.split(",")):
                index.parallel_mode = mode
                ms = p50_ms(index, queries, args.reps)
                line += f"  p50 mode{mode} {ms:6.2f} ms"
                summary[f"n{args.n}_nlist{nlist}_nprobe{nprobe}_mode{mode}_p50_ms"] = ms
            summary[f"n{args.n}_nlist{nlist}_nprobe{nprobe}_recall"] = recall
            print(line, flush=True)
        del index
    print(" ".join(f"{k}={v:.3f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
