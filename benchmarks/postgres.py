"""PostgreSQL against SQLite on the same data: concurrent ingest, search, query log, visibility.

    python benchmarks/postgres.py [--n 20000] [--dim 384] [--writers 1,2,4] [--queries 200]
        [--reps 3] [--log-clients 8] [--log-queries 200] [--visibility 20] [--json OUT.json]

A throwaway PostgreSQL cluster is started for the run (``tests/pg_cluster.py``: initdb into a
temp folder, fsync off, synchronous_commit on) and removed at the end; SQLite stores go to a
temp folder. Both backends get the same rows (``benchmarks/common.py``: clustered vectors,
~500 bytes of text, three metadata fields per chunk, one chunk per document) and are measured
in the same run, so machine load affects both; PostgreSQL figures are reported as ratios to
SQLite's (PG / SQLite: above 1 is slower for times, faster for rates). Measured:

- ingest with precomputed vectors (``Store.write`` in transactions of ``--batch`` documents):
  1, 2 and 4 writer processes on one PostgreSQL store, each writing its own slice, against one
  writer on SQLite; rate = chunks / (last writer's end - first writer's start), then the
  index build of a fresh process (``Store.open`` + ``flush``) timed apart;
- search p50/p95, hydration included, on the one-writer stores: dense (flat), dense filtered
  to 1 % and 10 % of the chunks, BM25 (three words), hybrid (dense + BM25, convex z-score);
  repetitions alternate the backends;
- query-log throughput: ``--log-clients`` processes each logging ``--log-queries`` queries
  with their ten hits at once;
- visibility: a writer process writes one new document; a reader process, already open and
  polling with the document's vector, reports when its dense search first returns it. The
  latency is that moment minus the writer's ``write`` returning (one clock, CLOCK_MONOTONIC,
  for both processes; a negative value means the reader saw the commit before ``write``
  returned to its caller).

Processes are spawned (not forked), so each is a separate client, as separate hosts would be.
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import batched, bench_record, chunk_text, clustered_vectors, queries_near
from mlflow_rag.store.store import Store

MODEL = "bench"
FILTERS = {"filtered_1pct": {"bucket": {"$lt": 10}}, "filtered_10pct": {"bucket": {"$lt": 100}}}
CTX = mp.get_context("spawn")


# --------------------------------------------------------------------------- child processes


def _writer(location: str, vectors_path: str, start: int, stop: int, batch: int,
            barrier: Any, results: Any) -> None:
    vectors = np.load(vectors_path, mmap_mode="r")
    records = [bench_record(i, chunk_text(i), {MODEL: np.array(vectors[i : i + 1])})
               for i in range(start, stop)]
    store = Store.open(location)
    barrier.wait()
    began = time.monotonic()
    for block in batched(len(records), batch):
        store.write(records[block.start : block.stop], skip_unchanged=False)
    ended = time.monotonic()
    store.close(flush=False)  # the index build is timed apart, once per store
    results.put((began, ended))


def _query_logger(location: str, query: list[float], count: int, barrier: Any,
                  results: Any) -> None:
    store = Store.open(location)
    hits = store.dense_search(np.array(query, dtype=np.float32), model=MODEL, k=10)
    barrier.wait()
    began = time.monotonic()
    for i in range(count):
        store.logs.log_query(f"query {os.getpid()} {i}", hits, model_name=MODEL)
    ended = time.monotonic()
    store.close(flush=False)
    results.put((began, ended))


def _visibility_reader(location: str, conn: Any) -> None:
    """Polls with each document's vector until its dense search returns the document."""
    store = Store.open(location, read_only=True)
    store.dense_search(np.ones(1, dtype=np.float32).repeat(_dimension(store)), model=MODEL, k=1)
    while (job := conn.recv()) is not None:
        doc_id, vector = job[0], np.array(job[1], dtype=np.float32)
        conn.send("ready")
        deadline = time.monotonic() + 60
        seen = float("nan")
        while time.monotonic() < deadline:
            hits = store.dense_search(vector, model=MODEL, k=1)
            if hits and hits[0].document_id == doc_id:
                seen = time.monotonic()
                break
        conn.send(seen)
    store.close(flush=False)


def _visibility_writer(location: str, conn: Any) -> None:
    store = Store.open(location)
    while (job := conn.recv()) is not None:
        i, vector = job[0], np.array(job[1], dtype=np.float32).reshape(1, -1)
        store.write([bench_record(i, chunk_text(i), {MODEL: vector})], skip_unchanged=False)
        conn.send(time.monotonic())
    store.close(flush=False)


def _dimension(store: Store) -> int:
    return store.model(MODEL).dimension


# --------------------------------------------------------------------------- measurements


def new_store(location: str, dim: int) -> None:
    with Store.open(location, create=True) as store:
        store.ensure_model(MODEL, dim, index_type="flat")


def ingest(location: str, vectors_path: Path, n: int, writers: int, batch: int) -> dict[str, float]:
    """Chunks/s of ``writers`` processes writing slices of ``n`` documents, then the index build."""
    barrier = CTX.Barrier(writers)
    results = CTX.Queue()
    bounds = np.linspace(0, n, writers + 1).astype(int)
    procs = [CTX.Process(target=_writer, args=(location, str(vectors_path), int(bounds[w]),
                                               int(bounds[w + 1]), batch, barrier, results))
             for w in range(writers)]
    for proc in procs:
        proc.start()
    spans = [results.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"a writer of {writers} exited with {proc.exitcode}")
    written = max(e for _, e in spans) - min(b for b, _ in spans)
    began = time.perf_counter()
    with Store.open(location) as store:
        store.flush()
        count = store.stats().chunks
    build = time.perf_counter() - began
    if count != n:
        raise RuntimeError(f"{location}: {count} chunks after ingest, expected {n}")
    return {"chunks_per_s": n / written, "write_s": written, "index_build_s": build}


def percentiles(fn: Callable[[int], object], count: int) -> tuple[float, float]:
    samples = []
    for i in range(count):
        began = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def search_kinds(store: Store, queries: np.ndarray) -> dict[str, Callable[[int], object]]:
    from mlflow_rag.search import Searcher

    searcher = Searcher(store, model=MODEL)
    n = len(queries)
    kinds: dict[str, Callable[[int], object]] = {
        "dense": lambda i: store.dense_search(queries[i % n], model=MODEL, k=10)}
    for name, filters in FILTERS.items():
        kinds[name] = functools.partial(_filtered, store, queries, filters)
    kinds["bm25"] = lambda i: store.lexical_search(f"protein cell gene {i % 7}", k=10)
    kinds["hybrid"] = lambda i: searcher.hybrid(f"protein cell gene {i % 7}", queries[i % n], k=10)
    return kinds


def _filtered(store: Store, queries: np.ndarray, filters: dict[str, Any], i: int) -> object:
    return store.dense_search(queries[i % len(queries)], model=MODEL, k=10, filters=filters)


def search(stores: dict[str, Store], queries: np.ndarray, count: int, reps: int,
           bar: tqdm) -> dict[str, dict[str, float]]:
    """p50/p95 per kind and backend: medians over ``reps`` rounds that alternate backends."""
    kinds = {backend: search_kinds(store, queries) for backend, store in stores.items()}
    out: dict[str, dict[str, float]] = {}
    for kind in kinds["sqlite"]:
        p50s: dict[str, list[float]] = {b: [] for b in stores}
        p95s: dict[str, list[float]] = {b: [] for b in stores}
        for backend in stores:
            kinds[backend][kind](0)  # warm: loads the index, the filter's vector keys
        for rep in range(reps):
            order = list(stores) if rep % 2 == 0 else list(reversed(stores))
            for backend in order:
                p50, p95 = percentiles(kinds[backend][kind], count)
                p50s[backend].append(p50)
                p95s[backend].append(p95)
                bar.update(1)
        out[kind] = {f"{b}_{p}_ms": statistics.median(v[b])
                     for p, v in (("p50", p50s), ("p95", p95s)) for b in stores}
        out[kind]["ratio_p50"] = out[kind]["postgres_p50_ms"] / out[kind]["sqlite_p50_ms"]
        bar.set_postfix_str(f"{kind} PG/SQLite {out[kind]['ratio_p50']:.2f}")
    return out


def query_log(location: str, query: np.ndarray, clients: int, per_client: int) -> float:
    """Queries logged per second by ``clients`` processes at once."""
    barrier = CTX.Barrier(clients)
    results = CTX.Queue()
    procs = [CTX.Process(target=_query_logger, args=(location, query.tolist(), per_client,
                                                     barrier, results)) for _ in range(clients)]
    for proc in procs:
        proc.start()
    spans = [results.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    return clients * per_client / (max(e for _, e in spans) - min(b for b, _ in spans))


def visibility(location: str, first_id: int, trials: int, dim: int) -> dict[str, float]:
    """Write -> visible in another process's dense search: p50 and max in milliseconds."""
    rng = np.random.default_rng(7)
    reader_end, reader_child = CTX.Pipe()
    writer_end, writer_child = CTX.Pipe()
    reader = CTX.Process(target=_visibility_reader, args=(location, reader_child))
    writer = CTX.Process(target=_visibility_writer, args=(location, writer_child))
    reader.start()
    writer.start()
    delays = []
    try:
        for t in range(trials):
            vector = rng.normal(size=dim).astype(np.float32)
            vector /= np.linalg.norm(vector)
            reader_end.send((f"doc{first_id + t}", vector.tolist()))
            reader_end.recv()  # polling
            writer_end.send((first_id + t, vector.tolist()))
            committed = writer_end.recv()
            seen = reader_end.recv()
            delays.append((seen - committed) * 1000)
    finally:
        for end in (reader_end, writer_end):
            end.send(None)
        reader.join(60)
        writer.join(60)
    if any(np.isnan(d) for d in delays):
        raise RuntimeError(f"{location}: a written document never became visible in 60 s")
    return {"p50_ms": statistics.median(delays), "max_ms": max(delays)}


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Any]:
    from tests.pg_cluster import running_cluster

    with running_cluster() as cluster:
        yield cluster


def run(args: argparse.Namespace, cluster: Any, tmp: Path) -> dict[str, Any]:
    os.environ.setdefault("MLFLOW_RAG_CACHE_DIR", str(tmp / "cache"))  # PG stores' index files
    vectors = clustered_vectors(args.n, args.dim)
    vectors_path = tmp / "vectors.npy"
    np.save(vectors_path, vectors)
    queries = queries_near(vectors, args.queries)
    del vectors
    figures: dict[str, Any] = {"n": args.n, "dim": args.dim, "ingest": {}}
    locations = {"sqlite": str(tmp / "sqlite-1")}
    configs = [("sqlite", 1)] + [("postgres", w) for w in args.writers]
    for backend, writers in tqdm(configs, desc="ingest", unit="store"):
        if backend == "sqlite":
            location = locations["sqlite"]
        else:
            location = cluster.dsn(cluster.new_database(f"bench_w{writers}"))
            locations.setdefault("postgres", location)  # the first (one-writer) store searches
        new_store(location, args.dim)
        result = ingest(location, vectors_path, args.n, writers, args.batch)
        figures["ingest"][f"{backend}_{writers}"] = result
        tqdm.write(f"ingest {backend} x{writers}: {result['chunks_per_s']:,.0f} chunks/s, "
                   f"index build {result['index_build_s']:.2f} s")
    base = figures["ingest"]["sqlite_1"]["chunks_per_s"]
    for result in figures["ingest"].values():
        result["ratio_to_sqlite_1"] = result["chunks_per_s"] / base

    stores = {backend: Store.open(locations[backend], read_only=True)
              for backend in ("sqlite", "postgres")}
    try:
        with tqdm(total=(2 + len(FILTERS) + 2) * 2 * args.reps, desc="search", unit="round") as bar:
            figures["search"] = search(stores, queries, args.queries, args.reps, bar)
    finally:
        for store in stores.values():
            store.close(flush=False)

    figures["query_log"] = {}
    for backend in tqdm(("sqlite", "postgres"), desc="query log", unit="backend"):
        figures["query_log"][f"{backend}_per_s"] = query_log(
            locations[backend], queries[0], args.log_clients, args.log_queries)
    figures["query_log"]["ratio"] = (figures["query_log"]["postgres_per_s"]
                                     / figures["query_log"]["sqlite_per_s"])

    figures["visibility"] = {}
    for backend in tqdm(("sqlite", "postgres"), desc="visibility", unit="backend"):
        figures["visibility"][backend] = visibility(locations[backend], args.n, args.visibility,
                                                    args.dim)
    return figures


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    n = figures["n"]
    print(f"\n### PostgreSQL vs SQLite, {n:,} chunks x {figures['dim']}")
    print("| measure | SQLite | PostgreSQL | PG / SQLite |\n|---|---|---|---|")
    base = figures["ingest"]["sqlite_1"]
    for key, result in figures["ingest"].items():
        if key.startswith("postgres"):
            writers = key.split("_")[1]
            print(f"| ingest, chunks/s ({writers} writer{'s' if writers != '1' else ''} on PG; "
                  f"1 on SQLite) | {base['chunks_per_s']:,.0f} | {result['chunks_per_s']:,.0f} | "
                  f"{result['ratio_to_sqlite_1']:.2f} |")
    pg1 = figures["ingest"].get(f"postgres_{args.writers[0]}", {})
    if pg1:
        print(f"| index build after ingest (fresh process), s | {base['index_build_s']:.2f} | "
              f"{pg1['index_build_s']:.2f} | {pg1['index_build_s'] / base['index_build_s']:.2f} |")
    for kind, row in figures["search"].items():
        print(f"| {kind} p50 / p95, ms | {row['sqlite_p50_ms']:.2f} / {row['sqlite_p95_ms']:.2f} | "
              f"{row['postgres_p50_ms']:.2f} / {row['postgres_p95_ms']:.2f} | "
              f"{row['ratio_p50']:.2f} |")
    log = figures["query_log"]
    print(f"| query log, queries/s ({args.log_clients} clients) | {log['sqlite_per_s']:,.0f} | "
          f"{log['postgres_per_s']:,.0f} | {log['ratio']:.2f} |")
    vis = figures["visibility"]
    print(f"| write -> visible in another process, p50 / max ms | {vis['sqlite']['p50_ms']:.1f} / "
          f"{vis['sqlite']['max_ms']:.1f} | {vis['postgres']['p50_ms']:.1f} / "
          f"{vis['postgres']['max_ms']:.1f} | "
          f"{vis['postgres']['p50_ms'] / max(vis['sqlite']['p50_ms'], 1e-3):.2f} |")
    pairs = {f"pg_ingest_w{k.split('_')[1]}_ratio": v["ratio_to_sqlite_1"]
             for k, v in figures["ingest"].items() if k.startswith("postgres")}
    pairs.update({f"pg_{kind}_p50_ratio": row["ratio_p50"] for kind, row in figures["search"].items()})
    pairs["pg_query_log_ratio"] = log["ratio"]
    pairs["pg_visible_p50_ms"] = vis["postgres"]["p50_ms"]
    pairs["sqlite_visible_p50_ms"] = vis["sqlite"]["p50_ms"]
    print(" ".join(f"{k}={v:.3f}" for k, v in pairs.items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="chunks (one per document)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--writers", default="1,2,4",
                        help="writer process counts on PostgreSQL; the first store is searched")
    parser.add_argument("--batch", type=int, default=1000, help="documents per write transaction")
    parser.add_argument("--queries", type=int, default=200, help="queries per search round")
    parser.add_argument("--reps", type=int, default=3, help="search rounds per backend")
    parser.add_argument("--log-clients", type=int, default=8)
    parser.add_argument("--log-queries", type=int, default=200, help="queries logged per client")
    parser.add_argument("--visibility", type=int, default=20, help="write -> visible trials")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        args.writers = [int(w) for w in args.writers.split(",") if w]
    except ValueError:
        parser.error(f"--writers: {args.writers!r} is not a comma-separated list of counts")
    if not args.writers or min(args.writers) < 1:
        parser.error(f"--writers: {args.writers!r}; give counts >= 1, e.g. 1,2,4")
    for name in ("n", "dim", "batch", "queries", "reps", "log_clients", "log_queries", "visibility"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)}; must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, postgres_cluster() as cluster:
        figures = run(args, cluster, Path(tmp))
    figures["seconds"] = time.perf_counter() - started
    figures["load_average"] = os.getloadavg()
    report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    main()
