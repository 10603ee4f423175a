"""10M chunks, raw FAISS: a compressed IVF index (PQ or SQ8) plus an exact re-rank.

    python benchmarks/scale10m.py gen   --dir /work/tmp/scale19 --n 10000000
    python benchmarks/scale10m.py build --dir /work/tmp/scale19 --factory IVF3162,PQ48
    python benchmarks/scale10m.py query --dir /work/tmp/scale19 --factory IVF3162,PQ48 \
        --nprobes 16,32,64 --reranks 0,50,100,200

``gen`` writes the clustered benchmark data (benchmarks/common.py's Gaussian mixture around a
low-rank subspace, normalised) block by block as a float16 file (``vectors.f16``, 768 B per
384-d vector, 7.7 GB at 10M), 200 queries near corpus points, and the exact top-10 of each
query over the float16 vectors (blockwise matmul, no index). The float16 file *is* the
dataset: the exact re-rank reads the same values the ground truth scored.

``build`` trains the index on a seeded sample (``--train`` vectors), adds every vector in
blocks read with plain file reads (not a memory map, whose touched pages would count in the
process's RSS), and writes ``<factory>.faiss``: train and add times, peak RSS, bytes.

``store-build`` writes the first ``--n`` vectors of the same file through ``Store.write``
(5,000 one-chunk documents per transaction, 200-character texts, model ``auto``) and
flushes: write time, index build time, peak RSS, bytes of the store. ``store-query`` opens
it in a fresh process and times ``dense_search`` (top 10, the compressed index's candidates
re-scored with the vectors SQLite keeps) against the exact top 10 over those ``n`` vectors.

``query`` is what a server does, in a fresh process: read the index, map ``vectors.f16``, and
for each query (one per call, one core) take ``rerank`` candidates from the index, read their
float16 vectors through the map, score them exactly and keep the top 10. Reported per nprobe x
rerank: p50 and p95 latency, recall@10 against the exact top-10, and the process's peak RSS
(VmHWM, which counts the mapped pages it touched). Each line prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIM = 384
BLOCK = 250_000


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def read_block(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the float16 file as float32, by a plain read (no mapping)."""
    with path.open("rb") as f:
        f.seek(start * DIM * 2)
        raw = np.fromfile(f, dtype=np.float16, count=(stop - start) * DIM)
    return raw.reshape(-1, DIM).astype(np.float32)


def read_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """Rows of the float16 file as float32 by reads, not through a map: a sample spread over
    the whole file touches nearly every page of it, which a map would count in the RSS (the
    first 10M build, sampling through a map, peaked at 6.2 GB, all of it those pages)."""
    out = np.empty((len(rows), DIM), dtype=np.float16)
    with path.open("rb") as f:
        for i, row in enumerate(rows.tolist()):
            f.seek(row * DIM * 2)
            out[i] = np.frombuffer(f.read(DIM * 2), dtype=np.float16)
    return out.astype(np.float32)


def gen(args: argparse.Namespace) -> None:
    out_dir = Path(args.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, clusters, rank = args.n, 1000, 64
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(rank, DIM)).astype(np.float32)
    centers = rng.normal(size=(clusters, rank)).astype(np.float32) @ basis
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    assignment = rng.choice(clusters, size=n, p=weights / weights.sum()).astype(np.int32)
    start_t = time.perf_counter()
    path = out_dir / "vectors.f16"
    with path.open("wb") as f:
        for start in range(0, n, BLOCK):
            stop = min(n, start + BLOCK)
            low = rng.normal(size=(stop - start, rank)).astype(np.float32) @ basis * 0.35
            noise = rng.standard_normal(size=(stop - start, DIM), dtype=np.float32) * 0.6
            block = centers[assignment[start:stop]] + low + noise
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            block.astype(np.float16).tofile(f)
    print(f"generated {n:,} x {DIM} float16 in {time.perf_counter() - start_t:.0f} s "
          f"({path.stat().st_size / 1e9:.2f} GB); {load()}", flush=True)
    qrng = np.random.default_rng(1)
    rows = np.sort(qrng.choice(n, size=args.queries, replace=False))
    vectors = np.memmap(path, dtype=np.float16, mode="r", shape=(n, DIM))
    picks = vectors[rows].astype(np.float32)
    del vectors
    q = picks + qrng.normal(size=picks.shape).astype(np.float32) * 0.04
    queries = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    np.save(out_dir / "queries.npy", queries)
    start_t = time.perf_counter()
    best_i = exact_top10(out_dir, queries, n)
    np.save(out_dir / "truth.npy", best_i)
    print(f"exact top-10 of {len(queries)} queries in {time.perf_counter() - start_t:.0f} s; "
          f"peak RSS {peak_rss_mb():.0f} MB; {load()}", flush=True)


def n_vectors(out_dir: Path, rows: int = 0) -> int:
    """The file's vector count, or the first ``rows`` of it (``--rows``: a smaller index)."""
    total = (out_dir / "vectors.f16").stat().st_size // (DIM * 2)
    return min(total, rows) if rows else total


def exact_top10(out_dir: Path, queries: np.ndarray, n: int) -> np.ndarray:
    """The exact top 10 of each query over the first ``n`` vectors (blockwise, no index)."""
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 10), dtype=np.int64)
    for start in range(0, n, BLOCK):
        s = queries @ read_block(out_dir / "vectors.f16", start, min(n, start + BLOCK)).T
        top = np.argpartition(-s, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :10]
        best_s = np.take_along_axis(cand_s, keep, axis=1)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
    return best_i


def index_path(out_dir: Path, factory: str, n: int) -> Path:
    return out_dir / (re.sub(r"[^A-Za-z0-9]+", "_", factory) + f"_{n}.faiss")


def build(args: argparse.Namespace) -> None:
    out_dir = Path(args.dir)
    path = out_dir / "vectors.f16"
    n = n_vectors(out_dir, args.rows)
    rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, args.train), replace=False))
    sample = read_rows(path, rows)
    index = faiss.index_factory(DIM, args.factory, faiss.METRIC_INNER_PRODUCT)
    start_t = time.perf_counter()
    index.train(sample)
    trained = time.perf_counter() - start_t
    del sample
    print(f"{args.factory}: trained on {len(rows):,} in {trained:.0f} s; {load()}", flush=True)
    start_t = time.perf_counter()
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        index.add_with_ids(read_block(path, start, stop), np.arange(start, stop, dtype=np.int64))
    added = time.perf_counter() - start_t
    out = index_path(out_dir, args.factory, n)
    faiss.write_index(index, str(out))
    record = {"factory": args.factory, "n": n, "train_s": trained, "add_s": added,
              "build_peak_rss_mb": peak_rss_mb(), "index_bytes": out.stat().st_size,
              "load": os.getloadavg()[0]}
    print(f"{args.factory}: added {n:,} in {added:.0f} s; index file {out.stat().st_size / 1e9:.2f} GB;"
          f" build peak RSS {record['build_peak_rss_mb']:.0f} MB; {load()}", flush=True)
    print(json.dumps(record), flush=True)


def query(args: argparse.Namespace) -> None:
    out_dir = Path(args.dir)
    n = n_vectors(out_dir, args.rows)
    queries = np.load(out_dir / "queries.npy")[: args.queries]
    if n == n_vectors(out_dir):
        truth = np.load(out_dir / "truth.npy")[: args.queries]
    else:
        truth = exact_top10(out_dir, queries, n)
    start_t = time.perf_counter()
    index = faiss.read_index(str(index_path(out_dir, args.factory, n)))
    opened = time.perf_counter() - start_t
    vectors = np.memmap(out_dir / "vectors.f16", dtype=np.float16, mode="r", shape=(n, DIM))
    ivf = faiss.extract_index_ivf(index)
    faiss.omp_set_num_threads(1)  # one query on one core, as the store searches
    print(f"{args.factory}: index read in {opened:.1f} s, RSS after read {peak_rss_mb():.0f} MB",
          flush=True)

    def search(q: np.ndarray, rerank: int) -> np.ndarray:
        _, labels = index.search(q.reshape(1, -1), max(10, rerank))
        ids = labels[0][labels[0] >= 0]
        if rerank == 0:
            return ids[:10]
        ids = np.sort(ids)
        exact = vectors[ids].astype(np.float32) @ q
        return ids[np.argsort(-exact, kind="stable")[:10]]

    summary = {}
    for nprobe in (int(s) for s in args.nprobes.split(",")):
        ivf.nprobe = nprobe
        for rerank in (int(s) for s in args.reranks.split(",")):
            search(queries[0], rerank)
            samples, recalls = [], []
            for _ in range(args.reps):
                for q, want in zip(queries, truth, strict=True):
                    t = time.perf_counter()
                    got = search(q, rerank)
                    samples.append((time.perf_counter() - t) * 1000)
                    recalls.append(len(set(got.tolist()) & set(want.tolist())) / 10)
            samples.sort()
            p50 = statistics.median(samples)
            p95 = samples[int(0.95 * (len(samples) - 1))]
            recall = statistics.mean(recalls)
            print(f"  nprobe {nprobe:4d} rerank {rerank:4d}: recall@10 {recall:.3f}  p50 {p50:6.2f} ms"
                  f"  p95 {p95:6.2f} ms  peak RSS {peak_rss_mb():.0f} MB; {load()}", flush=True)
            summary[f"nprobe{nprobe}_rerank{rerank}"] = {"recall": recall, "p50_ms": p50, "p95_ms": p95}
    print(json.dumps({"factory": args.factory, "n": n, "peak_rss_mb": peak_rss_mb(), **summary}))


def block_texts(start: int, count: int) -> list[str]:
    """~200-character texts of chunks ``start``.. from one generator per block: common.py's
    chunk_text seeds a generator per chunk (106 us of CPU each, as much as the store's own
    write of the chunk), which made the first store-build measure the benchmark as much as
    the store."""
    from benchmarks.common import WORDS

    words = np.array(WORDS)[np.random.default_rng(start).integers(len(WORDS), size=(count, 28))]
    return [f"chunk {start + i} " + " ".join(row) for i, row in enumerate(words.tolist())]


def store_build(args: argparse.Namespace) -> None:
    from benchmarks.common import bench_record
    from mlflow_rag.store.store import Store

    out_dir = Path(args.dir)
    root = out_dir / f"store{args.n}"
    store = Store.open(root, create=True)
    store.ensure_model("auto", DIM, index_type=args.index_type)
    start_t = time.perf_counter()
    in_write = cpu_in_write = 0.0
    step = args.step
    for start in range(0, args.n, step):
        block = read_block(out_dir / "vectors.f16", start, min(args.n, start + step))
        records = [bench_record(start + i, text, {"auto": block[i:i + 1]})
                   for i, text in enumerate(block_texts(start, len(block)))]
        wall, cpu = time.perf_counter(), time.process_time()
        store.write(records, skip_unchanged=False)
        in_write += time.perf_counter() - wall
        cpu_in_write += time.process_time() - cpu
        if start % 250_000 == 0:
            print(f"  {start + len(block):,} written, {time.perf_counter() - start_t:.0f} s, "
                  f"RSS peak {peak_rss_mb():.0f} MB; {load()}", flush=True)
    written = time.perf_counter() - start_t
    print(f"store {args.n:,}: {args.n / in_write:,.0f} chunks/s inside Store.write "
          f"({args.n / cpu_in_write:,.0f} per CPU second); peak RSS before the flush "
          f"{peak_rss_mb():.0f} MB", flush=True)
    start_t = time.perf_counter()
    store.flush()
    flushed = time.perf_counter() - start_t
    kind = next(m.index_type for m in store.models() if m.name == "auto")
    store.close()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    index_bytes = sum(f.stat().st_size for f in root.rglob("*.faiss"))
    print(f"store {args.n:,}: write {written:.0f} s ({args.n / written:,.0f} chunks/s), flush "
          f"(index {kind} build + persist) {flushed:.0f} s; peak RSS {peak_rss_mb():.0f} MB; "
          f"bytes {size / 1e9:.2f} GB (index {index_bytes / 1e9:.3f} GB); {load()}", flush=True)


def store_query(args: argparse.Namespace) -> None:
    from mlflow_rag.store.store import Store

    out_dir = Path(args.dir)
    queries = np.load(out_dir / "queries.npy")[: args.queries]
    if args.n == n_vectors(out_dir):  # gen's ground truth (13-17 minutes to recompute at 10M)
        best_i = np.load(out_dir / "truth.npy")[: args.queries]
    else:
        best_i = exact_top10(out_dir, queries, args.n)
    before = peak_rss_mb()
    start_t = time.perf_counter()
    store = Store.open(out_dir / f"store{args.n}", read_only=True)
    store.dense_search(queries[0], model="auto", k=10)
    cache = store._core.index_cache
    if args.no_side:  # re-rank as before the side file: every candidate from the database
        cache.sides["auto"] = cache.indexes["auto"].side = None
    side = "database read" if cache.indexes["auto"].side is None else "side file"
    print(f"store {args.n:,} ({side}): open + first search {time.perf_counter() - start_t:.1f} s", flush=True)
    samples, recalls = [], []
    for rep in range(args.reps):  # the first pass reads the candidates' rows from disk
        these = []
        for q, want in zip(queries, best_i, strict=True):
            t = time.perf_counter()
            hits = store.dense_search(q, model="auto", k=10)
            these.append((time.perf_counter() - t) * 1000)
            recalls.append(len({int(h.chunk_id[1:]) for h in hits} & set(want.tolist())) / 10)
        print(f"  pass {rep + 1}: p50 {statistics.median(these):.2f} ms; {load()}", flush=True)
        samples += these
    samples.sort()
    index = store._core.index_cache.indexes["auto"]
    print(f"store {args.n:,} ({index.spec.kind} {dict(index.spec.params)}, {side}): recall@10 "
          f"{statistics.mean(recalls):.3f}  p50 {statistics.median(samples):.2f} ms  p95 "
          f"{samples[int(0.95 * (len(samples) - 1))]:.2f} ms; peak RSS {peak_rss_mb():.0f} MB "
          f"({before:.0f} MB before the store opened); {load()}", flush=True)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("gen", "build", "query", "store-build", "store-query"))
    parser.add_argument("--dir", default="/work/tmp/scale19")
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rows", type=int, default=0,
                        help="build/query: index only the first ROWS vectors (0: all)")
    parser.add_argument("--factory", default="IVF3162,PQ48")
    parser.add_argument("--train", type=int, default=256_000)
    parser.add_argument("--nprobes", default="16,32,64")
    parser.add_argument("--reranks", default="0,50,100,200")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--index-type", default="auto", help="store-build: the model's index type")
    parser.add_argument("--no-side", action="store_true",
                        help="store-query: re-rank from the database, not the float16 side file")
    parser.add_argument("--step", type=int, default=5000, help="store-build: chunks per write")
    args = parser.parse_args()
    {"gen": gen, "build": build, "query": query, "store-build": store_build,
     "store-query": store_query}[args.stage](args)


if __name__ == "__main__":
    main()
