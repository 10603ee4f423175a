"""Where a compressed index's re-rank gets its vectors (issue 19): SQLite against a
memory-mapped float16 file of the same vectors, for the same candidates, in one process.

    python benchmarks/rerank_read.py --dir /work/tmp/scale20 --n 250000

Opens ``scale10m.py store-build``'s store of ``--n`` chunks (chunk ``c{i}`` holds row ``i`` of
the float16 file), takes ``rerank`` candidates per query from its IVF-PQ index, and times
reading their vectors through ``vectors_by_ids`` and through ``np.memmap`` (wall and CPU,
two passes), then counts the queries whose re-ranked top 10 agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scale10m import DIM, load
from mlflow_rag.index import compressed
from mlflow_rag.store.store import Store


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/work/tmp/scale20")
    parser.add_argument("--n", type=int, default=250_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    out_dir = Path(args.dir)
    store = Store.open(out_dir / f"store{args.n}", read_only=True)
    queries = np.load(out_dir / "queries.npy")[: args.queries]
    store.dense_search(queries[0], model="auto", k=10)
    index = store._core.index_cache.indexes["auto"]
    backend = store.backend
    depth = compressed.candidates(10, index.spec.params)
    pairs = backend.conn.execute("SELECT vector_id, chunk_id FROM embeddings").fetchall()  # type: ignore[attr-defined]
    row_of = np.zeros(max(p[0] for p in pairs) + 1, np.int64)
    for vector_id, chunk_id in pairs:
        row_of[vector_id] = int(chunk_id[1:])
    f16 = np.memmap(out_dir / "vectors.f16", dtype=np.float16, mode="r", shape=(args.n, DIM))

    def from_map(ids: np.ndarray) -> np.ndarray:
        order = np.argsort(ids)
        out = np.empty((len(ids), DIM), np.float32)
        out[order] = f16[row_of[ids[order]]]
        return out

    tops: dict[str, list[list[int]]] = {}
    for name, read in (("sqlite", lambda ids: backend.vectors_by_ids(ids.tolist(), DIM)),
                       ("float16 map", from_map)):
        for rep in range(2):
            wall, cpu, tops[name] = [], [], []
            for q in queries:
                found = index.search(q, depth)
                t, c = time.perf_counter(), time.process_time()
                vectors = read(found.ids)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                tops[name].append(compressed.rerank(found.ids, vectors, q, 10)[0].tolist())
            print(f"{name} pass {rep + 1}: {depth} rows p50 {ms(wall)} (CPU {ms(cpu)}); {load()}",
                  flush=True)
    same = sum(a == b for a, b in zip(tops["sqlite"], tops["float16 map"], strict=True))
    print(f"re-ranked top 10 identical for {same} of {len(queries)} queries")
    store.close()


if __name__ == "__main__":
    main()
