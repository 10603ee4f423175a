"""Where a compressed index's re-rank gets its vectors (issue 19): every candidate read from
the database, against the store's float16 side file (index/side_vectors.py: float16 bounds
every candidate's score, and only those it cannot rule out are read from the database), for
the same candidates, in one process.

    python benchmarks/rerank_read.py --dir /work/tmp/f16side21 --n 250000

Opens ``scale10m.py store-build``'s store of ``--n`` chunks read-only (``--mmap``: as serving
does), takes ``rerank`` candidates per query from its IVF-PQ index, and times the re-rank
each way (wall and CPU, two passes each, alternating), the rows read from the database per
query, and checks that both give the same top 10 (ids and scores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scale10m import DIM, load
from mlflow_rag.index import compressed
from mlflow_rag.index.side_vectors import rerank_bounded
from mlflow_rag.store.store import Store


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/work/tmp/f16side21")
    parser.add_argument("--n", type=int, default=250_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--mmap", action="store_true", help="open as serving does")
    parser.add_argument("--cold", action="store_true",
                        help="drop the database's and the side file's pages from the page "
                             "cache before each query (posix_fadvise DONTNEED; no root needed)")
    args = parser.parse_args()
    out_dir = Path(args.dir)
    root = out_dir / f"store{args.n}"
    store = Store.open(root, read_only=True, mmap=args.mmap)
    queries = np.load(out_dir / "queries.npy")[: args.queries]
    store.dense_search(queries[0], model="auto", k=10)
    index = store._core.index_cache.indexes["auto"]
    side = index.side
    assert side is not None, store.events
    backend = store.backend
    depth = compressed.candidates(10, index.spec.params)
    candidates = [index.search(q, depth).ids for q in queries]
    files = [root / "metadata.db", *root.glob("index/*.f16")]

    def evict() -> None:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def database(ids: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        exact = backend.vectors_by_ids(ids.tolist(), DIM)
        return (*compressed.rerank(ids, exact, q, 10), len(ids))

    def side_file(ids: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        return rerank_bounded(ids, side, q, 10,
                              lambda keep: backend.vectors_by_ids(keep.tolist(), DIM))

    ways: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, int]]] = {
        "database, every candidate": database, "side file + database for the undecided": side_file}
    tops: dict[str, list[tuple[list[int], list[float]]]] = {}
    with backend.read_transaction():
        for rep in range(2):
            for name, rank in ways.items():
                wall, cpu, rows, tops[name] = [], [], [], []
                for q, ids in zip(queries, candidates, strict=True):
                    if args.cold:
                        evict()
                    t, c = time.perf_counter(), time.process_time()
                    found, scores, read = rank(ids, q)
                    wall.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
                    rows.append(read)
                    tops[name].append((found.tolist(), scores.tolist()))
                print(f"{name}, pass {rep + 1}: re-rank of {depth} p50 {ms(wall)} (CPU "
                      f"{ms(cpu)}), rows read from the database per query: median "
                      f"{statistics.median(rows):.0f}, max {max(rows)}; {load()}", flush=True)
    first, second = tops.values()
    same = sum(a == b for a, b in zip(first, second, strict=True))
    print(f"top 10 (ids and scores) identical for {same} of {len(queries)} queries")
    sizes = {f.name: f.stat().st_size for f in root.rglob("*") if f.is_file()}
    print("bytes on disk: " + ", ".join(f"{name} {size / 1e6:,.1f} MB"
                                        for name, size in sorted(sizes.items())))
    store.close()


if __name__ == "__main__":
    main()
