"""The store beside peer vector stores on the same precomputed vectors, texts and metadata.

    python benchmarks/peers.py [--n 100000] [--chroma-n 20000] [--queries 100] [--reps 3]
                               [--only store,langchain-faiss,lancedb,chroma]

Loads N clustered 384-d normalised vectors (``benchmarks/common.py``), ~500 bytes of text and
three metadata fields per chunk (``bucket`` 0..999, ``country``, ``year``) into, each in its
own temp dir and persisted to disk:

- ``raw``: SQLite + FAISS flat, the hand-written loader of ``benchmarks/ingest.py``
  (imported, not copied); always runs, it is what every ratio divides by;
- ``store``: mlflow-rag's ``Store.write`` in batches of 2,000 + ``flush`` (ingest.py's loader);
- ``langchain-faiss``: LangChain's FAISS vector store, ``from_embeddings`` then
  ``add_embeddings`` per batch (inner product), ``save_local``;
- ``lancedb``: one LanceDB table created from the whole Arrow table (no vector index: exact);
- ``chroma``: a ``PersistentClient`` collection (inner-product HNSW), ``add`` in batches of
  ``get_max_batch_size()``. Chroma loads ~500 chunks/s, so it gets ``--chroma-n`` chunks (the
  first ones of the same data); its rates are comparable, its search latencies are at that n.

Ingest: seconds and chunks/s, median over ``--reps`` (order rotating, each after
``os.sync()``), and the ratio to raw's chunks/s in the same repetition. Search, on the last
repetition's copies reopened from disk: top-10 dense p50/p95 unfiltered and with a 1 %
metadata filter (``bucket < 10``) in each library's own filter API, medians over ``--reps``
passes of ``--queries`` queries (fewer once a variant has searched 30 s), and recall@10
against exact numpy top-10 (on the filtered subset for the filter). Peers whose packages are
missing are skipped with one line (extra ``bench``). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    batched,
    chunk_metadata,
    chunk_text,
    clustered_vectors,
    queries_near,
    recall_at_k,
)
from benchmarks.ingest import BATCH, ingest_raw, ingest_store

K = 10
FILTER_BUCKETS = 10  # bucket < 10: 1 % of chunks (bucket = i * 7919 mod 1000)
EXTRA = "pip install -e '.[bench]'"
PASS_BUDGET_S = 30.0  # no further search passes of a variant once it has spent this long


@dataclass(frozen=True)
class Data:
    vectors: np.ndarray
    texts: list[str]
    metadata: list[dict[str, Any]]

    @property
    def n(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> Data:
        return Data(self.vectors[:n], self.texts[:n], self.metadata[:n])


Search = Callable[[np.ndarray], list[int]]  # a query vector -> chunk numbers, best first


@dataclass
class Opened:
    """A store reopened from disk: its searches, each named with whether it is exact."""

    dense: tuple[str, Search]
    filtered: list[tuple[str, Search]]
    close: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Peer:
    name: str
    modules: tuple[str, ...]  # modules it needs (all from the bench extra), imported up front
    ingest: Callable[[Path, Data], None]
    open: Callable[[Path, Data], Opened]


def chunk_number(chunk_id: str) -> int:
    return int(chunk_id[1:])  # "c123" -> 123


# ------------------------------------------------------------------ raw SQLite + FAISS


def ingest_raw_peer(path: Path, data: Data) -> None:
    ingest_raw(path, data.vectors, data.texts)


def open_raw(path: Path, data: Data) -> Opened:
    """FAISS flat (exact) on one OpenMP thread + one SELECT hydrating text and metadata; the
    filter's allowed ids come from the bucket field read once at open into numpy (raw keeps no
    field index), passed to FAISS as an ``IDSelectorBatch``."""
    index = faiss.read_index(str(path / "raw.faiss"))
    conn = sqlite3.connect(path / "raw.db")
    buckets = np.empty(data.n, dtype=np.int64)
    for rowid, bucket in conn.execute(
            "SELECT c.fts_rowid, json_extract(d.metadata, '$.bucket') FROM chunks c "
            "JOIN documents d ON d.id = c.document_id"):
        buckets[rowid] = bucket

    def search(q: np.ndarray, allowed: np.ndarray | None = None) -> list[int]:
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed)) if allowed is not None else None
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # as the store runs one query: a busy machine's OpenMP join
        try:                          # waits for a core (RESULTS.md, filtered search)
            _, labels = index.search(q.reshape(1, -1), K, params=params)
        finally:
            faiss.omp_set_num_threads(threads)
        ids = [int(i) for i in labels[0] if i >= 0]
        rows = conn.execute(
            "SELECT c.fts_rowid, c.text, d.metadata FROM chunks c JOIN documents d "
            f"ON d.id = c.document_id WHERE c.fts_rowid IN ({','.join('?' * len(ids))})", ids).fetchall()
        by_id = {r[0]: (r[1], json.loads(r[2])) for r in rows}
        return [i for i in ids if i in by_id]

    return Opened(("exact", search),
                  [("exact", lambda q: search(q, np.flatnonzero(buckets < FILTER_BUCKETS)))],
                  conn.close)


# ------------------------------------------------------------------ mlflow-rag


def ingest_store_peer(path: Path, data: Data) -> None:
    ingest_store(path, data.vectors, data.texts)


def open_store(path: Path, data: Data) -> Opened:
    from mlflow_rag.store.store import Store

    store = Store.open(path, read_only=True)
    filters = {"bucket": {"$lt": FILTER_BUCKETS}}

    def dense(q: np.ndarray) -> list[int]:
        return [chunk_number(h.chunk_id) for h in store.dense_search(q, model="bench", k=K)]

    def filtered(q: np.ndarray) -> list[int]:
        return [chunk_number(h.chunk_id)
                for h in store.dense_search(q, model="bench", k=K, filters=filters)]

    return Opened(("exact", dense), [("exact (pre-filter)", filtered)],
                  lambda: store.close(flush=False))


# ------------------------------------------------------------------ LangChain FAISS


def _fake_embeddings() -> Any:
    from langchain_core.embeddings import FakeEmbeddings

    return FakeEmbeddings(size=384)  # never called: every vector is given


def ingest_langchain(path: Path, data: Data) -> None:
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy

    store = None
    for block in batched(data.n, BATCH):
        pairs = [(data.texts[i], data.vectors[i]) for i in block]
        metadatas = [data.metadata[i] for i in block]
        ids = [f"c{i}" for i in block]
        if store is None:
            store = FAISS.from_embeddings(pairs, _fake_embeddings(), metadatas=metadatas, ids=ids,
                                          distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)
        else:
            store.add_embeddings(pairs, metadatas=metadatas, ids=ids)
    assert store is not None
    store.save_local(str(path))


def open_langchain(path: Path, data: Data) -> Opened:
    """Its filter runs after the FAISS search, over the ``fetch_k`` nearest (20 by default): at
    1 % selectivity that finds almost nothing, so it is exact only with ``fetch_k=n``."""
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy

    store = FAISS.load_local(str(path), _fake_embeddings(), allow_dangerous_deserialization=True,
                             distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)
    filters = {"bucket": {"$lt": FILTER_BUCKETS}}

    def search(q: np.ndarray, **kwargs: Any) -> list[int]:
        docs = store.similarity_search_with_score_by_vector(q.tolist(), k=K, **kwargs)
        return [chunk_number(str(doc.id)) for doc, _ in docs]

    return Opened(("exact", search),
                  [("exact (post-filter, fetch_k=n)",
                    lambda q: search(q, filter=filters, fetch_k=data.n)),
                   ("approximate (post-filter, default fetch_k=20)",
                    lambda q: search(q, filter=filters))])


# ------------------------------------------------------------------ LanceDB


def ingest_lancedb(path: Path, data: Data) -> None:
    import lancedb
    import pyarrow as pa

    table = pa.table({
        "id": [f"c{i}" for i in range(data.n)],
        "text": data.texts,
        **{key: [m[key] for m in data.metadata] for key in data.metadata[0]},
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.vectors.ravel()),
                                                    data.vectors.shape[1]),
    })
    lancedb.connect(str(path)).create_table("chunks", data=table)


def open_lancedb(path: Path, data: Data) -> Opened:
    """No vector index: LanceDB scans every vector (exact); ``where(prefilter=True)`` filters
    before the scan (exact)."""
    import lancedb

    table = lancedb.connect(str(path)).open_table("chunks")
    columns = ["id", "text", *data.metadata[0], "_distance"]

    def search(q: np.ndarray, where: str | None = None) -> list[int]:
        query: Any = table.search(q).distance_type("dot")  # type: ignore[attr-defined]
        if where is not None:
            query = query.where(where, prefilter=True)
        found = query.select(columns).limit(K).to_arrow()
        return [chunk_number(i) for i in found.column("id").to_pylist()]

    return Opened(("exact (flat scan)", search),
                  [("exact (prefilter)", lambda q: search(q, f"bucket < {FILTER_BUCKETS}"))])


# ------------------------------------------------------------------ Chroma


def _chroma_client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def ingest_chroma(path: Path, data: Data) -> None:
    client = _chroma_client(path)
    collection = client.create_collection("chunks", configuration={"hnsw": {"space": "ip"}},
                                          embedding_function=None)
    for block in batched(data.n, client.get_max_batch_size()):
        collection.add(ids=[f"c{i}" for i in block], embeddings=data.vectors[block.start:block.stop],
                       documents=[data.texts[i] for i in block],
                       metadatas=[data.metadata[i] for i in block])


def open_chroma(path: Path, data: Data) -> Opened:
    """HNSW (approximate) unfiltered; with ``where``, Chroma searches the HNSW graph restricted
    to the matching ids: recall tells how exact that is."""
    collection = _chroma_client(path).get_collection("chunks", embedding_function=None)

    def search(q: np.ndarray, where: dict[str, Any] | None = None) -> list[int]:
        found = collection.query(query_embeddings=q.reshape(1, -1), n_results=K, where=where,
                                 include=["documents", "metadatas", "distances"])
        return [chunk_number(i) for i in found["ids"][0]]

    return Opened(("approximate (HNSW)", search),
                  [("HNSW restricted to matches",
                    lambda q: search(q, {"bucket": {"$lt": FILTER_BUCKETS}}))])


PEERS = {p.name: p for p in (
    Peer("raw", (), ingest_raw_peer, open_raw),
    Peer("store", (), ingest_store_peer, open_store),
    Peer("langchain-faiss", ("langchain_core.embeddings", "langchain_community.vectorstores"),
         ingest_langchain, open_langchain),
    Peer("lancedb", ("lancedb", "pyarrow"), ingest_lancedb, open_lancedb),
    Peer("chroma", ("chromadb",), ingest_chroma, open_chroma),
)}


# ------------------------------------------------------------------ measuring


@dataclass
class Row:
    """One search variant of one store."""

    store: str
    kind: str  # "dense" or "filtered"
    exact: str
    p50_ms: float
    p95_ms: float
    recall: float
    passes: int


@dataclass
class Figures:
    n: dict[str, int] = field(default_factory=dict)
    ingest_s: dict[str, list[float]] = field(default_factory=dict)
    ratio: dict[str, list[float]] = field(default_factory=dict)  # chunks/s over raw's, per rep
    open_s: dict[str, float] = field(default_factory=dict)
    search: list[Row] = field(default_factory=list)

    def rate(self, name: str) -> float:
        return self.n[name] / statistics.median(self.ingest_s[name])


def exact_top(vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None) -> list[list[int]]:
    ids = np.arange(len(vectors)) if allowed is None else allowed
    scores = queries @ vectors[ids].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return [ids[row].tolist() for row in order]


def one_pass(fn: Search, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    samples, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(fn(q))
        samples.append((time.perf_counter() - start) * 1000)
    return samples, found


def measure_search(name: str, opened: Opened, data: Data, queries: np.ndarray, reps: int) -> list[Row]:
    """p50/p95 per pass, medians over up to ``reps`` passes (fewer once a variant has spent
    PASS_BUDGET_S: LangChain's exact filter loops over every chunk in Python); recall from
    the first pass's results."""
    allowed = np.flatnonzero(np.array([m["bucket"] for m in data.metadata]) < FILTER_BUCKETS)
    rows = []
    variants: list[tuple[str, str, Search, np.ndarray | None]] = [("dense", *opened.dense, None)]
    variants += [("filtered", exact, fn, allowed) for exact, fn in opened.filtered]
    for kind, exact, fn, subset in variants:
        truth = exact_top(data.vectors, queries, subset)
        fn(queries[0])  # warm up outside the timing
        p50s, p95s, recall, spent = [], [], 0.0, 0.0
        for rep in range(reps):
            samples, found = one_pass(fn, queries)
            if rep == 0:
                recall = statistics.mean(recall_at_k(got, want)
                                         for got, want in zip(found, truth, strict=True))
            p50s.append(statistics.median(samples))
            p95s.append(sorted(samples)[int(0.95 * (len(samples) - 1))])
            spent += sum(samples) / 1000
            if spent > PASS_BUDGET_S:
                break
        rows.append(Row(name, kind, exact, statistics.median(p50s), statistics.median(p95s), recall,
                        len(p50s)))
    return rows


def available(names: list[str]) -> list[str]:
    """The peers whose packages import, imported now so that no ingest timing pays for it."""
    out = []
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's notice
                for module in PEERS[name].modules:
                    importlib.import_module(module)
        except ImportError as error:
            print(f"skipped {name}: {error.name or error} not installed ({EXTRA})")
        else:
            out.append(name)
    return out


def run(args: argparse.Namespace) -> Figures:
    names = available(["raw", *[n for n in PEERS if n != "raw" and n in args.only]])
    vectors = clustered_vectors(args.n, 384)
    full = Data(vectors, [chunk_text(i) for i in range(args.n)], [chunk_metadata(i) for i in range(args.n)])
    sized = {name: full.head(min(args.n, args.chroma_n)) if name == "chroma" else full for name in names}
    queries = queries_near(vectors, args.queries)
    figures = Figures(n={name: sized[name].n for name in names})
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
            seconds = {}
            for name in order:
                os.sync()
                start = time.perf_counter()
                PEERS[name].ingest(Path(tmp) / name, sized[name])
                seconds[name] = time.perf_counter() - start
                figures.ingest_s.setdefault(name, []).append(seconds[name])
                print(f"rep {rep}: {name} {sized[name].n:,} chunks in {seconds[name]:.2f} s", flush=True)
            for name in names:
                raw_rate = figures.n["raw"] / seconds["raw"]
                figures.ratio.setdefault(name, []).append(sized[name].n / seconds[name] / raw_rate)
            if rep == args.reps - 1:
                for name in names:
                    start = time.perf_counter()
                    opened = PEERS[name].open(Path(tmp) / name, sized[name])
                    figures.open_s[name] = time.perf_counter() - start
                    rows = measure_search(name, opened, sized[name], queries, args.reps)
                    opened.close()
                    figures.search += rows
                    print(f"searched {name}: " + ", ".join(
                        f"{r.kind} p50 {r.p50_ms:.2f} ms recall {r.recall:.3f}" for r in rows), flush=True)
    return figures


def report(figures: Figures, args: argparse.Namespace) -> str:
    lines = [f"ingest, {args.n:,} chunks x 384 dims (precomputed vectors), median of {args.reps}:", "",
             "| store | chunks | ingest s | chunks/s | / raw | open s |", "|---|---|---|---|---|---|"]
    for name in figures.n:
        capped = " (capped: --chroma-n)" if figures.n[name] < args.n else ""
        seconds = statistics.median(figures.ingest_s[name])
        lines.append(f"| {name} | {figures.n[name]:,}{capped} | {seconds:.2f} "
                     f"| {figures.rate(name):,.0f} | {statistics.median(figures.ratio[name]):.2f} "
                     f"| {figures.open_s[name]:.2f} |")
    raw_p50 = {r.kind: r.p50_ms for r in figures.search if r.store == "raw"}
    lines += ["", f"search, top-{K}, {args.queries} queries x {args.reps} passes; filtered: "
              f"bucket < {FILTER_BUCKETS} (1 %):", "",
              "| store | search | exact? | p50 ms | p95 ms | p50 / raw | recall@10 | passes |",
              "|---|---|---|---|---|---|---|---|"]
    for r in figures.search:
        lines.append(f"| {r.store} | {r.kind} | {r.exact} | {r.p50_ms:.2f} | {r.p95_ms:.2f} "
                     f"| {r.p50_ms / raw_p50[r.kind]:.2f} | {r.recall:.3f} | {r.passes} |")
    return "\n".join(lines)


def key_values(figures: Figures) -> str:
    pairs = [f"{name}_ingest_ratio={statistics.median(figures.ratio[name]):.3f}"
             for name in figures.n if name != "raw"]
    if "store" in figures.n:
        pairs += [f"store_over_{name}_ingest={figures.rate('store') / figures.rate(name):.3f}"
                  for name in figures.n if name not in ("raw", "store")]
    raw_p50 = {r.kind: r.p50_ms for r in figures.search if r.store == "raw"}
    seen: set[tuple[str, str]] = set()
    for r in figures.search:  # each store's first variant of a kind: its exact one
        if r.store != "raw" and (r.store, r.kind) not in seen:
            seen.add((r.store, r.kind))
            pairs.append(f"{r.store}_{r.kind}_p50_ratio={r.p50_ms / raw_p50[r.kind]:.3f}")
    return " ".join(pairs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--chroma-n", type=int, default=20_000,
                        help="chunks for Chroma (~500 chunks/s), at most --n")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default=",".join(n for n in PEERS if n != "raw"),
                        help="comma-separated peers besides raw, which always runs: "
                             + ", ".join(n for n in PEERS if n != "raw"))
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    bad = [name for name in args.only if name not in PEERS]
    if bad:
        parser.error(f"--only: unknown peer {', '.join(bad)}; choose from {', '.join(PEERS)}")
    for option in ("n", "chroma_n", "queries", "reps"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.queries > args.n:
        parser.error(f"--queries ({args.queries}) must be <= --n ({args.n})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()
    figures = run(args)
    print(f"\nload average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}\n")
    print(report(figures, args))
    print(key_values(figures))


if __name__ == "__main__":
    main()
