"""Child process for the fault, damage and memory tests: one store operation under one fault.

Usage: ``python -m tests.fault_child SCENARIO 'JSON ARGS'``. Each scenario prints JSON lines on
stdout; a crash (a negative exit code) is what the parent test looks for first, because FAISS
can take the whole process down on corrupt input and disk faults must never do that.

Scenarios:
- ``efbig``: run ``op`` (write, ingest, flush, snapshot, rebuild) with RLIMIT_FSIZE set to
  ``limit`` bytes and SIGXFSZ ignored, so every write past the limit fails with EFBIG (disk
  full, without root). Reports the error, then lifts the limit and reports what the same Store
  object still sees.
- ``selfkill``: run ``op`` and SIGKILL this process at the ``n``-th os.write/os.fsync/
  os.replace call: a kill at an exact step of persisting files.
- ``rebuild-loop`` / ``reingest``: work until killed by the parent, printing progress lines.
- ``open``: open each path as a bundle (immutable, verify_files) or a live store and search.
- ``rss``: ingest ``sources`` and report peak RSS growth (resource.getrusage).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.errors import RagError
from mlflow_rag.ingest import IngestOptions, ingest
from mlflow_rag.store.files import StorageError
from mlflow_rag.store.store import Store
from tests.conftest import make_record
from tests.hash_embedder import HashEmbedder

DIM = 16
MODEL = "hash-test"
OPTIONS = IngestOptions(embedder=MODEL, chunker="recursive", chunk_size=24, chunk_overlap=0)
# Changed versions of the corpus are written to another folder (v2): the same documents moved,
# which an ingest must be told (otherwise same-named files of two folders are refused).
REINGEST = replace(OPTIONS, overwrite=True)
QUERIES = np.random.default_rng(99).normal(size=(4, DIM))


def embedder() -> HashEmbedder:
    return HashEmbedder(DIM)


# --------------------------------------------------------------------------- corpora


def doc_text(i: int, version: int, sentences: int = 6) -> str:
    """Text of document ``i`` at ``version``: every word ends in the version digit, so any
    chunk of it tells which version it came from."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    out = []
    for s in range(sentences):
        picked = [words[(i * 7 + s * 3 + w) % len(words)] for w in range(6)]
        out.append(" ".join(f"{w}{version}" for w in [f"doc{i}", *picked]) + ".")
    return " ".join(out)


def write_corpus(folder: Path, ids: Sequence[int], version: int, *, sentences: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (folder / f"doc{i:05d}.txt").write_text(doc_text(i, version, sentences), encoding="utf-8")
    return folder


def build_store(path: Path, folder: Path) -> None:
    with Store.open(path, create=True) as store:
        ingest([str(folder)], store, options=OPTIONS, embedder=embedder(), progress=False)


def new_records(seed: int, n: int = 60) -> list[Any]:
    """New documents plus replacements of doc00000..doc00009 (written by the ``write`` op)."""
    rng = np.random.default_rng(seed)
    records = [
        make_record(f"new{seed}-{i}", [f"new text {i} " * 20, f"more new words {i} " * 20],
                    vectors=rng.normal(size=(2, DIM)), model=MODEL)
        for i in range(n)
    ]
    records += [
        make_record(f"doc{i:05d}.txt", [f"replaced {i} " * 30], vectors=rng.normal(size=(1, DIM)),
                    model=MODEL)
        for i in range(10)
    ]
    return records


# --------------------------------------------------------------------------- store state


def state(path: Path | str) -> dict[str, Any]:
    """What a user can observe: documents with their hashes, counts, dense and BM25 results,
    and the consistency checks. Opening it persists nothing."""
    store = Store.open(path)
    try:
        conn = store.backend.conn
        docs = conn.execute("SELECT id, content_hash FROM documents ORDER BY id").fetchall()
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM embeddings)"
        ).fetchone()
        dense = [[h.chunk_id for h in store.dense_search(q, k=8)] for q in QUERIES]
        lexical = [[h.chunk_id for h in store.lexical_search(w, k=8)]
                   for w in ("alpha1 beta1", "replaced", "new")]
        report = store.verify(sample=40)
        temp_files = sorted(p.name for p in Path(path).rglob(".*.tmp"))
        return {
            "documents": [list(d) for d in docs], "chunks": counts[0], "embeddings": counts[1],
            "dense": dense, "lexical": lexical, "integrity": report["integrity_check"],
            "models": report["models"], "events": list(store.events), "temp_files": temp_files,
        }
    finally:
        store.close(flush=False)


def observable(s: dict[str, Any]) -> dict[str, Any]:
    """The part of a state that must be exactly old or exactly new after a fault."""
    return {k: s[k] for k in ("documents", "chunks", "embeddings", "dense", "lexical")}


def consistent(s: dict[str, Any]) -> bool:
    return s["integrity"] == "ok" and all(
        m["ids_equal"] and m["self_found"] == m["sampled"] for m in s["models"].values()
    )


# --------------------------------------------------------------------------- operations


def operation(store: Store, args: dict[str, Any]) -> Callable[[], Any]:
    """Prepare ``args['op']`` outside the fault; return the call that runs inside it."""
    op = args["op"]
    if op == "write":
        records = new_records(args.get("seed", 0))
        return lambda: (store.write(records), store.flush())
    if op == "ingest":
        return lambda: ingest([args["folder"]], store, options=REINGEST, embedder=embedder(),
                              progress=False)
    if op == "flush":
        store.write(new_records(args.get("seed", 0)))  # committed before the fault
        return store.flush
    if op == "snapshot":
        return lambda: store.snapshot(args["dest"])
    if op == "rebuild":
        return store.rebuild_index
    raise SystemExit(f"unknown op {op!r}")


def describe(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {"error": None}
    return {
        "error": type(exc).__name__, "message": str(exc),
        "storage_error": isinstance(exc, StorageError), "os_error": isinstance(exc, OSError),
        "filename": getattr(exc, "filename", None),
        "traceback": "".join(traceback.format_exception(exc))[-3000:],
    }


def efbig(args: dict[str, Any]) -> None:
    store = Store.open(args["store"])
    run = operation(store, args)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (args["limit"], hard))
    try:
        run()
        outcome = describe(None)
    except Exception as exc:
        outcome = describe(exc)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    # the Store object that saw the error keeps working once there is room again
    after = store.stats()
    outcome["after_documents"] = after.documents
    outcome["after_search"] = len(store.dense_search(QUERIES[0], k=3))
    store.close(flush=False)
    print(json.dumps(outcome), flush=True)


def selfkill(args: dict[str, Any]) -> None:
    """SIGKILL ourselves right before the n-th os.write / os.fsync / os.replace call."""
    store = Store.open(args["store"])
    run = operation(store, args)
    calls = [0]

    def killing(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            if calls[0] == args["n"]:
                print(json.dumps({"killed_at": calls[0], "call": name}), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        return call

    for name in ("write", "fsync", "replace"):
        setattr(os, name, killing(name, getattr(os, name)))
    run()
    print(json.dumps({"completed": True, "calls": calls[0]}), flush=True)


def rebuild_loop(args: dict[str, Any]) -> None:
    store = Store.open(args["store"])
    i = 0
    while True:
        store.rebuild_index()
        print(f"ack {i}", flush=True)
        i += 1


def reingest(args: dict[str, Any]) -> None:
    store = Store.open(args["store"])
    real_write = store.write

    def write(records: Any, **kwargs: Any) -> Any:
        report = real_write(records, **kwargs)
        print(f"batch {len(records)}", flush=True)
        return report

    store.write = write  # type: ignore[method-assign]
    print("start", flush=True)
    ingest([args["folder"]], store, options=REINGEST, embedder=embedder(), progress=False)
    print("done", flush=True)
    store.close()


def open_paths(args: dict[str, Any]) -> None:
    """Open each path (bundle: immutable + verify_files; live: a writable store, or with
    ``mmap`` a read-only one whose index files are memory-mapped) and search."""
    mmap = bool(args.get("mmap"))
    for path in args["paths"]:
        print(json.dumps({"case": path}), flush=True)
        result: dict[str, Any] = {"path": path}
        try:
            if args["mode"] == "bundle":
                store = Store.open(path, immutable=True, verify_files=True, mmap=mmap)
            else:
                store = Store.open(path, read_only=mmap, mmap=mmap)
            try:
                hits = store.dense_search(QUERIES[0], k=5)
                result.update(opened=True, hits=[h.chunk_id for h in hits],
                              events=list(store.events), orphan_hits=store.orphan_hits)
                if args.get("verify"):
                    report = store.verify(sample=20)
                    models = report["models"].values()
                    result["integrity"] = report["integrity_check"]
                    result["ids_equal"] = all(m["ids_equal"] for m in models)
                    result["self_found"] = all(m["self_found"] == m["sampled"] for m in models)
                    result["consistent"] = (result["ids_equal"] and result["self_found"]
                                            and result["integrity"] == "ok")
            finally:
                store.close(flush=False)
        except Exception as exc:
            result.update(opened=False, error=type(exc).__name__, message=str(exc),
                          rag_error=isinstance(exc, RagError))
        print(json.dumps(result), flush=True)


def rss(args: dict[str, Any]) -> None:
    """Peak RSS growth (KiB) while ingest() reads ``sources`` into a fresh store."""
    work = Path(args["work"])
    warm = write_corpus(work / "warm", range(3), 1)
    with Store.open(work / "warm-store", create=True) as store:  # load every code path once
        ingest([str(warm)], store, options=OPTIONS, embedder=embedder(), progress=False)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    failures: list[str] = []
    with Store.open(work / "store", create=True) as store:
        options = replace(OPTIONS, loader_options=args.get("loader_options"))
        report = ingest(args["sources"], store, options=options, embedder=embedder(),
                        progress=False, on_failure=lambda f: failures.append(f.reason))
        documents = store.stats().documents
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kib": peak - baseline, "documents": documents,
                      "failed": report.documents_failed, "reasons": failures}), flush=True)


SCENARIOS: dict[str, Callable[[dict[str, Any]], None]] = {
    "efbig": efbig, "selfkill": selfkill, "rebuild-loop": rebuild_loop, "reingest": reingest,
    "open": open_paths, "rss": rss,
}


def copy_store(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]))
