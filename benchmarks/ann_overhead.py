"""What the store adds to one unfiltered ANN query (HNSW or IVF), against the same FAISS index
object searched raw on one thread + one SQLite SELECT, interleaved round by round.

    python benchmarks/ann_overhead.py --n 1000000 --model auto [--dir /tmp/ann-overhead]
        [--queries 1000] [--rounds 5] [--mmap]

Builds (once, kept in ``--dir``) a store of N clustered 384-d chunks under one model (``auto``
is IVF above 250K vectors, ``hnsw`` on request) and the raw SQLite table of scale.py. Each
round times, in turn: the store's ``dense`` (hits hydrated through the per-generation vector
id -> chunk row map), the store with that map off (the join from the vector id, as before
issue 19's change), and raw. Reported: medians over rounds of each round's p50, the ratio
ours / raw per round (median and spread), recall@10 of both against brute force, the load
average, the map's build time (on its own thread) and memory, and what the second search
(which starts that build) took. The last line is machine-readable.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import chunk_text, clustered_vectors, queries_near
from benchmarks.scale import build_store, hydrate, raw_db
from mlflow_rag.index.vector_index import one_query
from mlflow_rag.store.hit_keys import HitKeys
from mlflow_rag.store.request import Retrieval
from mlflow_rag.store.store import Store


def prepare(folder: Path, n: int, model: str) -> None:
    if (folder / "raw.db").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    vectors = clustered_vectors(n, 384)
    texts = [chunk_text(i) for i in range(n)]
    build_store(folder / "store", vectors, texts, [model]).close()
    raw_db(folder / "raw.tmp", texts).close()
    (folder / "raw.tmp").rename(folder / "raw.db")


def p50_ms(fn: Callable[[int], object], count: int) -> float:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--model", default="hnsw", help="hnsw or auto (IVF above 250K)")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reader-cache-mib", type=int, default=0,
                        help="an experiment: the store's read connection's page cache (SQLite's "
                             "default is 2 MiB)")
    parser.add_argument("--mmap", action="store_true",
                        help="open the store as serving does (mmap=True): index and database "
                             "pages memory-mapped")
    args = parser.parse_args()
    folder = args.dir or Path(f"/tmp/ann-overhead-{args.model}-{args.n}")
    prepare(folder, args.n, args.model)
    vectors = clustered_vectors(args.n, 384)
    queries = queries_near(vectors, args.queries)
    store = Store.open(folder / "store", read_only=True, mmap=args.mmap)
    if args.reader_cache_mib:
        store.backend.conn.execute(f"PRAGMA cache_size = -{args.reader_cache_mib * 1024}")
    request = Retrieval.parse(k=10, filters=None)
    model = args.model
    store.dense(queries[0], request, model=model)
    cache = store._core.index_cache
    index = cache.indexes[model]
    rss_before = _rss_mb()
    start = time.perf_counter()
    store.dense(queries[0], request, model=model)  # the second search starts the map's build
    second_ms = (time.perf_counter() - start) * 1e3
    cache.wait_for_hit_maps()  # it is built on a thread of its own: wait for it here
    build_s = time.perf_counter() - start
    store.dense(queries[0], request, model=model)  # the third search takes it over
    rss_after = _rss_mb()
    hit_map = cache.hit_maps[model]
    conn = sqlite3.connect(folder / "raw.db")

    def ours(i: int) -> object:
        return store.dense(queries[i], request, model=model)

    def raw(i: int) -> object:
        _, labels = one_query(index.index, queries[i], 10)
        return hydrate(conn, [int(v) for v in labels[0] if v >= 0])

    # The map object is kept aside and put back before each of "ours" (``_join`` drops it).
    def with_map(fn: Callable[[int], object], keys: HitKeys | None) -> Callable[[int], object]:
        def run(i: int) -> object:
            cache.hit_maps[model] = keys
            return fn(i)
        return run

    forms = {
        "ours": with_map(ours, hit_map),
        "ours_join": with_map(lambda i: _join(store, queries[i], request, model), None),
        "raw": raw,
    }
    rounds: dict[str, list[float]] = {name: [] for name in forms}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, fn in forms.items():
            rounds[name].append(p50_ms(fn, args.queries))
    cache.hit_maps[model] = hit_map
    check = min(200, args.queries)
    truth = [np.argsort(-(vectors @ queries[i]))[:10].tolist() for i in range(check)]
    got = [[int(h.chunk_id[1:]) for h in store.dense(queries[i], request, model=model)]
           for i in range(check)]
    recall = statistics.mean(len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True))
    ratios = [o / r for o, r in zip(rounds["ours"], rounds["raw"], strict=True)]
    join_ratios = [o / r for o, r in zip(rounds["ours_join"], rounds["raw"], strict=True)]
    print(f"n={args.n} model={model} index={index.spec.kind} params={dict(index.spec.params)} "
          f"reader cache {args.reader_cache_mib or 2} MiB, mmap {args.mmap}")
    print(f"load average per round: {', '.join(f'{v:.1f}' for v in loads)}")
    for name, values in rounds.items():
        print(f"{name:10s} p50 {statistics.median(values):.3f} ms  rounds "
              f"{', '.join(f'{v:.3f}' for v in values)}")
    print(f"ours / raw per round: {', '.join(f'{v:.2f}' for v in ratios)} "
          f"(median {statistics.median(ratios):.2f}); join form / raw median "
          f"{statistics.median(join_ratios):.2f}")
    keys_mb = hit_map.nbytes / 1e6 if hit_map is not None else 0.0
    print(f"recall@10 {recall:.3f} over {check} queries; map built in {build_s:.2f} s "
          f"(off the request path: the second search took {second_ms:.1f} ms), {keys_mb:.1f} MB; "
          f"process RSS {rss_before:.0f} -> {rss_after:.0f} MB across the build")
    store.close(flush=False)
    print(f"ann_ratio={statistics.median(ratios):.3f} ann_join_ratio="
          f"{statistics.median(join_ratios):.3f} ours_p50_ms={statistics.median(rounds['ours']):.3f} "
          f"raw_p50_ms={statistics.median(rounds['raw']):.3f} recall={recall:.3f} "
          f"map_mb={keys_mb:.1f} map_build_s={build_s:.2f} second_search_ms={second_ms:.1f} "
          f"load={statistics.median(loads):.1f}")


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _join(store: Store, query: np.ndarray, request: Retrieval, model: str) -> object:
    """The store's search with no hit map: the first-search form (hydrated by the join)."""
    cache = store._core.index_cache
    cache.hit_maps.pop(model, None)  # hit_keys() then notes the model and returns None
    return store.dense(query, request, model=model)


if __name__ == "__main__":
    main()
