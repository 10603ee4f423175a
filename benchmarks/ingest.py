"""Ingest throughput: the store with precomputed vectors against raw SQLite + FAISS, and MiniLM.

    python benchmarks/ingest.py [--n 100000] [--reps 3] [--minilm-texts 500]

The store writes documents, chunks (with FTS5), metadata field rows and float32 vectors in
batched transactions, then builds and persists the index (``Store.write`` + ``Store.flush``).
The raw baseline, measured in the same run on the same rows, is what a careful hand-written
loader does for the same features: ``executemany`` into documents / chunks / embeddings
tables plus an FTS5 table over chunk text, one transaction, then ``faiss.IndexFlatIP.add`` and
``faiss.write_index``. Both use WAL with synchronous=FULL; each run starts after ``os.sync()``,
in an order that rotates per repetition. Reported: chunks per second and
their ratio (median over repetitions); a second baseline runs the same raw loop into the
store's own schema (indexes, metadata field tables, triggers), so the two ratios separate
what the schema costs from what ``Store.write`` adds; then MiniLM embedding throughput on this machine
(SciFact abstracts when ../shared/data is there). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import batched, bench_record, chunk_metadata, chunk_text, clustered_vectors, text_hash
from mlflow_rag.store.store import Store

BATCH = 2000


def ingest_store(path: Path, vectors: np.ndarray, texts: list[str]) -> float:
    start = time.perf_counter()
    with Store.open(path, create=True) as store:
        store.ensure_model("bench", vectors.shape[1], index_type="flat")
        for block in batched(len(texts), BATCH):
            store.write([bench_record(i, texts[i], {"bench": vectors[i : i + 1]}) for i in block],
                        skip_unchanged=False)
    return time.perf_counter() - start


RAW_SCHEMA = """
CREATE TABLE documents (id TEXT PRIMARY KEY, source_path TEXT, source_type TEXT,
    content_hash TEXT, imported_at TEXT, metadata TEXT);
CREATE TABLE chunks (id TEXT PRIMARY KEY, document_id TEXT REFERENCES documents(id),
    chunk_index INTEGER, chunk_type TEXT, text TEXT, start_char INTEGER, end_char INTEGER,
    token_count INTEGER, metadata TEXT, fts_rowid INTEGER UNIQUE);
CREATE TABLE embeddings (id TEXT PRIMARY KEY, chunk_id TEXT REFERENCES chunks(id),
    model_name TEXT, vector_dimension INTEGER, vector BLOB, created_at TEXT,
    vector_id INTEGER UNIQUE);
CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='fts_rowid',
    tokenize='porter unicode61 remove_diacritics 2');
"""


def ingest_raw(path: Path, vectors: np.ndarray, texts: list[str]) -> float:
    start = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(RAW_SCHEMA)
    now = "2026-01-01T00:00:00+00:00"
    for block in batched(len(texts), BATCH):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO documents VALUES (?, ?, 'text', ?, ?, ?)",
                         [(f"doc{i}", f"/corpus/doc{i}.txt", text_hash(texts[i]), now,
                           json.dumps(chunk_metadata(i))) for i in block])
        conn.executemany("INSERT INTO chunks VALUES (?, ?, 0, 'text', ?, 0, ?, 100, '{}', ?)",
                         [(f"c{i}", f"doc{i}", texts[i], len(texts[i]), i) for i in block])
        conn.executemany("INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)",
                         [(i, texts[i]) for i in block])
        conn.executemany("INSERT INTO embeddings VALUES (?, ?, 'bench', ?, ?, ?, ?)",
                         [(f"c{i}:bench", f"c{i}", vectors.shape[1], vectors[i].tobytes(), now, i)
                          for i in block])
        conn.execute("COMMIT")
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    faiss.write_index(index, str(path / "raw.faiss"))
    conn.close()
    return time.perf_counter() - start


def ingest_raw_store_schema(path: Path, vectors: np.ndarray, texts: list[str]) -> float:
    """The raw loop into the store's own schema (its indexes, field tables and triggers), to
    tell what the schema costs from what ``Store.write`` does on top of it."""
    from mlflow_rag.store.sqlite import connection
    from mlflow_rag.store.sqlite.backend import SqliteBackend

    start = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    conn = connection.connect(path / "metadata.db")
    connection.migrate(conn, path / "metadata.db")
    SqliteBackend(conn, path / "metadata.db").insert_model(
        name="bench", slug="bench", dimension=vectors.shape[1], embedder=None,
        model_version=None, index_type="flat", index_params={})
    now = "2026-01-01T00:00:00+00:00"
    for block in batched(len(texts), BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO documents(id, source_path, source_type, content_hash, imported_at, "
            "metadata) VALUES (?, ?, 'text', ?, ?, ?)",
            [(f"doc{i}", f"/corpus/doc{i}.txt", text_hash(texts[i]), now,
              json.dumps(chunk_metadata(i))) for i in block])
        conn.executemany("INSERT INTO document_fields(document_id, key, value) VALUES (?, ?, ?)",
                         [(f"doc{i}", key, value) for i in block
                          for key, value in chunk_metadata(i).items()])
        conn.executemany(
            "INSERT INTO chunks(id, document_id, chunk_index, chunk_type, text, start_char, "
            "end_char, token_count, metadata, text_hash, fts_rowid) "
            "VALUES (?, ?, 0, 'text', ?, 0, ?, 100, '{}', ?, ?)",
            [(f"c{i}", f"doc{i}", texts[i], len(texts[i]), text_hash(texts[i]), i + 1)
             for i in block])
        conn.executemany("INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)",
                         [(i + 1, texts[i]) for i in block])
        conn.executemany(
            "INSERT INTO embeddings(id, chunk_id, model_name, vector_dimension, vector, "
            "created_at, vector_id) VALUES (?, ?, 'bench', ?, ?, ?, ?)",
            [(f"c{i}:bench", f"c{i}", vectors.shape[1], vectors[i].tobytes(), now, i + 1)
             for i in block])
        conn.execute("COMMIT")
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.arange(1, len(vectors) + 1, dtype=np.int64))
    faiss.write_index(index, str(path / "raw.faiss"))
    conn.close()
    return time.perf_counter() - start


LOADERS = {"raw": ingest_raw, "raw-schema": ingest_raw_store_schema, "store": ingest_store}


def cpu_seconds() -> float:
    """User + system CPU time of this process, every thread (FAISS's, the hash thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bytes_written() -> int:
    """Bytes this process handed to write calls (Linux ``/proc/self/io`` wchar; 0 elsewhere)."""
    try:
        with open("/proc/self/io") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("wchar:"))
    except (OSError, StopIteration):
        return 0


def timed_in_turn(
    rep: int, tmp: Path, vectors: np.ndarray, texts: list[str]
) -> dict[str, tuple[float, float, int]]:
    """Each loader's (seconds, CPU seconds, bytes written); the order rotates per repetition
    and each starts after ``os.sync()``, so none pays for writing back the page cache the
    one before it dirtied (the last of three otherwise waited on ~1 GB of the others' files
    at 100K). CPU seconds and bytes are the figures a busy machine disturbs least."""
    names = list(LOADERS)
    names = names[rep % len(names):] + names[:rep % len(names)]
    times = {}
    for name in names:
        os.sync()
        cpu, written = cpu_seconds(), bytes_written()
        seconds = LOADERS[name](tmp / name, vectors, texts)
        times[name] = (seconds, cpu_seconds() - cpu, bytes_written() - written)
    return times


def minilm_throughput(count: int) -> float:
    from mlflow_rag.embed.minilm import MiniLMEmbedder

    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    shared = Path(os.environ.get("MLFLOW_RAG_SHARED_DATA", default))
    corpus = shared / "scifact-train" / "corpus.jsonl"
    if corpus.is_file():
        with corpus.open() as handle:
            rows = [json.loads(line) for _, line in zip(range(count), handle, strict=False)]
        texts = [f"{r['title']}\n\n{r['text']}" for r in rows]
        source = "SciFact abstracts"
    else:
        texts = [chunk_text(i, size=1200) for i in range(count)]
        source = "synthetic 1200-byte texts (../shared/data not found)"
    embedder = MiniLMEmbedder()
    embedder.embed(texts[:8])  # load the model outside the timing
    start = time.perf_counter()
    embedder.embed(texts)
    rate = len(texts) / (time.perf_counter() - start)
    print(f"MiniLM: {rate:.1f} chunks/s on {len(texts)} {source}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--minilm-texts", type=int, default=500)
    args = parser.parse_args()
    vectors = clustered_vectors(args.n, args.dim)
    texts = [chunk_text(i) for i in range(args.n)]
    ratios, schema_ratios, ours, raw, raw_schema = [], [], [], [], []
    cpu_ratios, cpu_schema_ratios = [], []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            times = timed_in_turn(rep, Path(tmp), vectors, texts)
            t_raw, t_schema, t_ours = (times[name][0] for name in ("raw", "raw-schema", "store"))
            (_, c_raw, w_raw), (_, c_schema, w_schema), (_, c_ours, w_ours) = (
                times[name] for name in ("raw", "raw-schema", "store"))
        cpu_ratios.append(c_raw / c_ours)
        cpu_schema_ratios.append(c_schema / c_ours)
        print(f"rep {rep}: CPU s store {c_ours:.2f}, raw {c_raw:.2f}, raw into the store's "
              f"schema {c_schema:.2f}; MB written {w_ours / 1e6:,.0f}, {w_raw / 1e6:,.0f}, "
              f"{w_schema / 1e6:,.0f}; load {os.getloadavg()[0]:.1f}")
        ours.append(args.n / t_ours)
        raw.append(args.n / t_raw)
        raw_schema.append(args.n / t_schema)
        ratios.append(ours[-1] / raw[-1])
        schema_ratios.append(ours[-1] / raw_schema[-1])
        print(f"rep {rep}: store {ours[-1]:,.0f} chunks/s, raw {raw[-1]:,.0f} chunks/s "
              f"(ratio {ratios[-1]:.3f}), raw into the store's schema {raw_schema[-1]:,.0f} "
              f"chunks/s (ratio {schema_ratios[-1]:.3f})")
    ratio = statistics.median(ratios)
    print(f"ingest with precomputed vectors, {args.n:,} chunks x {args.dim}: store "
          f"{statistics.median(ours):,.0f} chunks/s, raw {statistics.median(raw):,.0f} chunks/s, "
          f"raw into the store's schema {statistics.median(raw_schema):,.0f} chunks/s")
    rate = minilm_throughput(args.minilm_texts) if args.minilm_texts else 0.0
    print(f"ingest_ratio={ratio:.3f} ingest_ratio_same_schema={statistics.median(schema_ratios):.3f} "
          f"ingest_cpu_ratio={statistics.median(cpu_ratios):.3f} "
          f"ingest_cpu_ratio_same_schema={statistics.median(cpu_schema_ratios):.3f} "
          f"minilm_chunks_per_s={rate:.1f}")


if __name__ == "__main__":
    main()
