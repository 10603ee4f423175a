"""What two hardening measures cost (issue 16): a filter at every limit, and an erasing delete.

    python benchmarks/hardening_costs.py [--docs 5000] [--erase-docs 50000]

1. A filter at all filter limits at once (512 ``$in`` conditions on a metadata key, 10,000
   values in all) through ``find_documents``, dense and BM25 search on a store of ``--docs``
   documents: CPU seconds and peak RSS growth, beside one condition of the same 10,000 values.
2. ``Store.delete`` with erasure (FTS5 merge, index rewrite, WAL truncation) against the delete
   plus flush it replaced, on ``--erase-docs`` documents of two chunks with 384-d vectors
   (the CLI always flushed on close): wall seconds of each, median of three deletes.

The last line is machine-readable:
``filter_limit_cpu_s=<x> filter_limit_rss_mib=<y> erase_ratio=<z>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_rag.store import filters
from mlflow_rag.store.store import Store
from tests.conftest import make_record

WORDS = np.array("retrieval vector index search ranking evaluation corpus chunk token embedding "
                 "query store bundle model score filter document metadata alpha beta".split())


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def filter_cost(root: Path, docs: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    with Store.open(root, create=True) as store:
        store.ensure_model("m", 16)
        store.write([make_record(f"p{i}", [f"plain doc {i}"], vectors=rng.normal(size=(1, 16)),
                                 metadata={"name": f"name-{i:06d}"}) for i in range(docs)])
        per = filters.MAX_VALUES // filters.MAX_CONDITIONS
        at_limits = json.dumps({"$or": [
            {"name": {"$in": [f"name-{j:06d}" for j in range(i * per, (i + 1) * per)]}}
            for i in range(filters.MAX_CONDITIONS)]})
        one = json.dumps({"name": {"$in": [f"name-{j:06d}" for j in range(filters.MAX_VALUES)]}})
        costs = []
        for spec in (one, at_limits):
            before, start = peak_mib(), time.process_time()
            store.find_documents(spec, limit=10)
            store.dense_search(np.ones(16), k=10, filters=spec)
            store.lexical_search("doc", k=10, filters=spec)
            costs.append((time.process_time() - start, peak_mib() - before))
    return costs[1][0], costs[1][1], costs[0][0]


def erase_cost(root: Path, docs: int) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    with Store.open(root, create=True) as store:
        store.ensure_model("m", 384)
        for first in range(0, docs, 2000):
            store.write([
                make_record(f"d{i}", [" ".join(rng.choice(WORDS, 60)) + f" w{i}a",
                                      " ".join(rng.choice(WORDS, 60)) + f" w{i}b"],
                            vectors=rng.normal(size=(2, 384)))
                for i in range(first, min(docs, first + 2000))])
    plain, erasing = [], []
    with Store.open(root) as store:
        store.dense_search(np.ones(384), k=1)  # the index is loaded, as a delete after use
        for i in range(3):
            start = time.perf_counter()
            store.delete(f"d{2 * i}", erase=False)
            store.flush()
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.delete(f"d{2 * i + 1}")
            erasing.append(time.perf_counter() - start)
    return statistics.median(plain), statistics.median(erasing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--erase-docs", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cpu, rss, cpu_one = filter_cost(Path(tmp) / "filters", args.docs)
        print(f"filter at every limit ({filters.MAX_CONDITIONS} $in conditions, "
              f"{filters.MAX_VALUES} values) on {args.docs} documents, find + dense + BM25: "
              f"{cpu:.2f} s CPU, peak RSS +{rss:.0f} MiB (one $in of the same values: "
              f"{cpu_one:.2f} s)")
        plain, erasing = erase_cost(Path(tmp) / "erase", args.erase_docs)
        print(f"delete on {args.erase_docs} documents ({2 * args.erase_docs} chunks): delete + "
              f"flush {plain:.2f} s, delete with erasure {erasing:.2f} s")
    print(f"filter_limit_cpu_s={cpu:.3f} filter_limit_rss_mib={rss:.0f} "
          f"erase_ratio={erasing / plain:.2f}")


if __name__ == "__main__":
    main()
