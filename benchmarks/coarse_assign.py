"""IVF assignment cost at the 10M rule's 3,162 lists (issue 19): brute force (BLAS) against an
HNSW graph over the centroids, one thread, CPU time per vector.

    python benchmarks/coarse_assign.py --dir /work/tmp/scale20 --n 100000

Trains IVF3162,PQ48 briefly (4 k-means iterations: only the assignment's cost is measured),
then assigns ``--n`` vectors of ``scale10m.py gen``'s file both ways and adds them
(``add_with_ids`` with the flat quantizer; ``add_core`` with the graph's assignments).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scale10m import DIM, load, read_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/work/tmp/scale20")
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    path, nlist, n = Path(args.dir) / "vectors.f16", 3162, args.n
    x = read_block(path, 1_000_000, 1_000_000 + n)
    idx = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, nlist, 48, 8, faiss.METRIC_INNER_PRODUCT)
    idx.cp.niter = 4
    idx.pq.cp.niter = 4
    idx.train(read_block(path, 0, nlist * 20))
    centroids = idx.quantizer.reconstruct_n(0, nlist)
    ids = np.arange(n, dtype=np.int64)
    cpu = time.process_time()
    _, flat = idx.quantizer.search(x, 1)
    assign = time.process_time() - cpu
    plain = faiss.clone_index(idx)
    cpu = time.process_time()
    plain.add_with_ids(x, ids)
    print(f"brute force: assign {assign / n * 1e6:.1f} us/vector, whole add "
          f"{(time.process_time() - cpu) / n * 1e6:.1f} us/vector; {load()}", flush=True)
    for ef in (16, 32, 64):
        graph = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 40
        graph.add(centroids)
        graph.hnsw.efSearch = ef
        cpu = time.process_time()
        _, lists = graph.search(x, 1)
        assign = time.process_time() - cpu
        other = faiss.clone_index(idx)
        cpu = time.process_time()
        other.add_core(n, faiss.swig_ptr(x), faiss.swig_ptr(ids),
                       faiss.swig_ptr(np.ascontiguousarray(lists[:, 0])))
        print(f"HNSW32 efSearch {ef}: assign {assign / n * 1e6:.1f} us/vector (same list as brute "
              f"force {np.mean(lists[:, 0] == flat[:, 0]):.4f}), add_core "
              f"{(time.process_time() - cpu) / n * 1e6:.1f} us/vector; {load()}", flush=True)


if __name__ == "__main__":
    main()
