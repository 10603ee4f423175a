"""Peak RSS of the store's blockwise index build as n grows (issue 19): the vectors of
``scale10m.py gen``'s file handed to ``VectorIndex.build_from_blocks`` in the store's block size,
as ``IndexCache.build`` hands it SQLite's rows, with the kind and parameters ``auto`` chooses.

    python benchmarks/build_rss.py --dir /work/tmp/scale20 --n 1000000 [--kind auto]

One build per process (VmHWM is per process): run it once per n and compare the peaks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scale10m import DIM, load, peak_rss_mb, read_block
from mlflow_rag.index.choose import choose_index
from mlflow_rag.index.vector_index import VectorIndex
from mlflow_rag.store.index_cache import BUILD_BLOCK_BYTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/work/tmp/scale20")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--kind", default="ivfpq")
    args = parser.parse_args()
    path = Path(args.dir) / "vectors.f16"
    rows = BUILD_BLOCK_BYTES // (4 * DIM)

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, args.n, rows):
            stop = min(args.n, start + rows)
            yield np.arange(start + 1, stop + 1, dtype=np.int64), read_block(path, start, stop)

    spec = choose_index(args.kind, args.n, DIM)
    before = peak_rss_mb()
    start_t, cpu = time.perf_counter(), time.process_time()
    index = VectorIndex.build_from_blocks(spec, DIM, blocks, args.n, generation=1)
    record = {"n": args.n, "spec": spec.to_dict(), "build_s": round(time.perf_counter() - start_t),
              "build_cpu_s": round(time.process_time() - cpu), "peak_rss_mb": round(peak_rss_mb()),
              "rss_before_mb": round(before), "ntotal": index.ntotal, "load": load()}
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
