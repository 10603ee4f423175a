"""Promises 1, 2 and 4 under faults: disk full and I/O errors, SIGKILL during index rebuilds
and re-ingests, damaged bundles and index files (docs/reliability.md).

Disk full is simulated without root: a child process sets RLIMIT_FSIZE and ignores SIGXFSZ,
so every write past the limit fails with EFBIG (tests/fault_child.py). I/O errors at each
step of persisting files are injected in-process by making the n-th os call fail. Every case
that hands files to FAISS runs in a child process, and a negative exit code (a signal, e.g. a
segfault) fails the test.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlflow_rag.errors import BundleCorrupt, RagError
from mlflow_rag.store.files import HASH_BLOCK_BYTES, StorageError, block_sha256s
from mlflow_rag.store.store import Store
from tests.conftest import make_record
from tests.fault_child import (
    DIM,
    build_store,
    consistent,
    copy_store,
    doc_text,
    embedder,
    new_records,
    observable,
    state,
    write_corpus,
)

REPO = Path(__file__).resolve().parent.parent
KILL_ROUNDS = int(os.environ.get("MLFLOW_RAG_KILL_ROUNDS", "60"))


def run_child(scenario: str, args: dict[str, Any], *, timeout: float = 300) -> list[dict[str, Any]]:
    """Run tests.fault_child; fail on a crash (negative exit code) or an error exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fault_child", scenario, json.dumps(args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode >= 0, (
        f"child killed by signal {-proc.returncode} (a crash): {proc.stdout[-2000:]}"
        f"{proc.stderr[-2000:]}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def start_child(scenario: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fault_child", scenario, json.dumps(args)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def read_until(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child ended before {prefix!r}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if line.startswith(prefix):
            return line


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


# =========================================================================== disk full (EFBIG)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base``: a store ingested from 150 text files (v1); ``v2``: 50 of them changed + 30 new."""
    root = tmp_path_factory.mktemp("faults")
    build_store(root / "base", write_corpus(root / "v1", range(150), 1))
    write_corpus(root / "v2", range(50), 2)
    write_corpus(root / "v2", range(150, 180), 2)
    return root


OPS = ("write", "ingest", "flush", "snapshot", "rebuild")
_reference: dict[str, dict[str, Any]] = {}


def op_args(op: str, corpus: Path, store: Path, limit: int) -> dict[str, Any]:
    return {"op": op, "store": str(store), "limit": limit, "folder": str(corpus / "v2"),
            "dest": str(store.parent / f"{store.name}-bundle"), "seed": 1}


def reference(op: str, corpus: Path, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(old, new): the base store's state, and its state after ``op`` ran without a fault."""
    if "old" not in _reference:
        _reference["old"] = state(corpus / "base")
    if op in ("snapshot", "rebuild"):  # these must not change what the store holds
        return _reference["old"], _reference["old"]
    if op not in _reference:
        work = copy_store(corpus / "base", tmp_path / f"reference-{op}")
        [outcome] = run_child("efbig", op_args(op, corpus, work, 2**40))
        assert outcome["error"] is None, outcome
        _reference[op] = state(work)
    return _reference["old"], _reference[op]


def check_disk_full(op: str, limit: int, corpus: Path, tmp_path: Path) -> dict[str, Any]:
    """Run ``op`` with writes capped at ``limit`` bytes; the store must be old or new, never a
    mix, open, and pass integrity_check and verify(); an error must be a StorageError (an
    OSError and a RagError) naming the file."""
    old, new = reference(op, corpus, tmp_path)
    work = copy_store(corpus / "base", tmp_path / f"{op}-{limit}")
    [outcome] = run_child("efbig", op_args(op, corpus, work, limit))
    after = state(work)
    assert consistent(after), after
    assert after["temp_files"] == []
    if outcome["error"] is None:
        assert observable(after) == observable(new)
    else:
        assert outcome["storage_error"] and outcome["os_error"], outcome
        assert outcome["filename"] and outcome["filename"] in outcome["message"], outcome
        assert observable(after) in (observable(old), observable(new)), outcome["message"]
        if "rolled back" in outcome["message"]:  # the failed transaction left nothing behind
            assert observable(after) == observable(old)
        assert outcome["after_documents"] in (len(old["documents"]), len(new["documents"]))
        assert outcome["after_search"] == 3
    if op == "snapshot":
        bundle = work.parent / f"{work.name}-bundle"
        if outcome["error"] is None:
            Store.open(bundle, immutable=True, verify_files=True).close()
        else:
            assert not bundle.exists(), "a failed snapshot left a partial bundle"
    return outcome


FAST_LIMITS = [
    ("write", 4096),  # the WAL append fails: the transaction rolls back
    ("ingest", 4096),
    ("flush", 1024),  # SQLite committed before; the index file cannot be written
    ("snapshot", 200_000),  # VACUUM INTO the bundle's database fails
]


@pytest.mark.parametrize(("op", "limit"), FAST_LIMITS)
def test_disk_full_raises_a_storage_error_naming_the_file_and_the_store_stays_usable(
    corpus: Path, tmp_path: Path, op: str, limit: int
) -> None:
    outcome = check_disk_full(op, limit, corpus, tmp_path)
    assert outcome["error"] == "StorageError", outcome


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_disk_full_at_every_power_of_two_byte_limit_leaves_old_or_new_state(
    corpus: Path, tmp_path: Path, op: str
) -> None:
    limits = [2**k for k in range(0, 24)]
    outcomes = [check_disk_full(op, limit, corpus, tmp_path) for limit in limits]
    failed = sum(o["error"] is not None for o in outcomes)
    assert failed >= 3, "the sweep should include limits that fail"
    print(f"disk full during {op}: {len(limits)} limits, {failed} failed cleanly, "
          f"{len(limits) - failed} completed")


def test_cli_reports_a_full_disk_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    import resource

    folder = write_corpus(tmp_path / "docs", range(3), 1)

    def small_disk() -> None:  # runs in the child before exec; both settings are inherited
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [sys.executable, "-m", "mlflow_rag.cli", "ingest", str(folder), "--store",
         str(tmp_path / "store"), "--embedder", "tfidf", "--no-track"],
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=small_disk, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write {tmp_path / 'store' / 'metadata.db'}: ")


# =========================================================================== I/O error at each step


class FailNth:
    """Make the n-th call to os.open / os.write / os.fsync / os.replace (and shutil.copyfile)
    raise EIO, as a failing disk would."""

    NAMES = ("open", "write", "fsync", "replace")

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0
        self.fired: str | None = None

    def wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.n:
                self.fired = name
                raise OSError(errno.EIO, "Input/output error (injected)")
            return real(*args, **kwargs)
        return call

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in self.NAMES:
            monkeypatch.setattr(os, name, self.wrap(name, getattr(os, name)))
        monkeypatch.setattr(shutil, "copyfile", self.wrap("copyfile", shutil.copyfile))


def sweep_io_errors(
    base: Path, tmp_path: Path, prepare: Callable[[Store], Callable[[], Any]],
    check: Callable[[Path, BaseException | None, FailNth], None],
) -> int:
    """Fail the 1st, 2nd, ... I/O call of an operation until it completes untouched."""
    n = 0
    while True:
        n += 1
        work = copy_store(base, tmp_path / "work")
        store = Store.open(work)
        run = prepare(store)
        fault = FailNth(n)
        error: BaseException | None = None
        with pytest.MonkeyPatch.context() as monkeypatch:
            fault.install(monkeypatch)
            try:
                run()
            except Exception as exc:
                error = exc
        store.close(flush=False)
        if fault.fired is None:
            assert error is None
            check(work, None, fault)
            return n - 1
        check(work, error, fault)
        assert n < 200, "the operation never completed"


def assert_named_storage_error(error: BaseException | None, fault: FailNth) -> None:
    assert isinstance(error, StorageError), (fault.fired, error)
    assert isinstance(error, OSError) and isinstance(error, RagError)
    assert error.filename and error.filename in str(error)
    assert "Input/output error" in str(error)


def test_io_error_at_each_step_of_persisting_the_index_is_named_and_loses_nothing(
    corpus: Path, tmp_path: Path
) -> None:
    _, new = reference("flush", corpus, tmp_path)

    def prepare(store: Store) -> Callable[[], Any]:
        store.write(new_records(1))
        return store.flush

    def check(work: Path, error: BaseException | None, fault: FailNth) -> None:
        if error is not None:
            assert_named_storage_error(error, fault)
        after = state(work)
        assert consistent(after) and after["temp_files"] == []
        assert observable(after) == observable(new)  # SQLite committed before the flush

    steps = sweep_io_errors(corpus / "base", tmp_path, prepare, check)
    assert steps >= 8  # lock, index temp file, write, fsync, replace, dir fsync, manifest...
    print(f"I/O error injected at each of the {steps} file steps of a flush")


def test_io_error_at_each_step_of_a_snapshot_removes_the_partial_bundle(
    corpus: Path, tmp_path: Path
) -> None:
    old, _ = reference("snapshot", corpus, tmp_path)

    def prepare(store: Store) -> Callable[[], Any]:
        return lambda: store.snapshot(tmp_path / "bundle")

    def check(work: Path, error: BaseException | None, fault: FailNth) -> None:
        bundle = tmp_path / "bundle"
        if error is not None:
            assert_named_storage_error(error, fault)
            assert not bundle.exists()
        else:
            Store.open(bundle, immutable=True, verify_files=True).close()
            shutil.rmtree(bundle)
        after = state(work)
        assert consistent(after) and observable(after) == observable(old)

    steps = sweep_io_errors(corpus / "base", tmp_path, prepare, check)
    assert steps >= 8
    print(f"I/O error injected at each of the {steps} file steps of a snapshot")


def test_io_error_opening_the_index_lock_is_a_storage_error(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(tmp_path / "s", create=True)
    store.ensure_model("m", 4)
    store.write([make_record("a", ["alpha"], vectors=np.ones((1, 4)))])
    fault = FailNth(1)
    fault.install(monkeypatch)
    with pytest.raises(StorageError, match=r"\.lock"):
        store.flush()
    monkeypatch.undo()
    store.close()


# =========================================================================== SIGKILL: index rebuild


class RebuildStores:
    """20,000 vectors of dimension 32 per index type, built on first use (HNSW takes a while):
    a rebuild takes long enough to be hit at a random moment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}

    def __getitem__(self, kind: str) -> Path:
        if kind not in self.paths:
            rng = np.random.default_rng(7)
            path = self.root / kind
            with Store.open(path, create=True) as store:
                store.ensure_model("m", 32, index_type=kind)
                for start in range(0, 5000, 1000):
                    store.write([
                        make_record(f"d{i}", [f"document {i} part {j}" for j in range(4)],
                                    vectors=rng.normal(size=(4, 32)))
                        for i in range(start, start + 1000)
                    ])
            self.paths[kind] = path
        return self.paths[kind]


@pytest.fixture(scope="module")
def rebuild_stores(tmp_path_factory: pytest.TempPathFactory) -> RebuildStores:
    return RebuildStores(tmp_path_factory.mktemp("rebuild"))


def check_after_kill(path: Path) -> list[str]:
    """Reopen after a kill: consistent, exact (flat), and no stray temp files once flushed."""
    store = Store.open(path)
    report = store.verify(sample=30)
    assert report["integrity_check"] == "ok"
    model = report["models"]["m"]
    assert model["ids_equal"] and model["self_found"] == model["sampled"], model
    assert model["vectors"] == 20_000
    if store.model("m").index_type == "flat":
        ids, vectors = _sqlite_vectors(store)
        query = np.random.default_rng(1).normal(size=32).astype(np.float32)
        hits = store.dense_search(query, k=10)
        exact = ids[np.argsort(-(vectors @ (query / np.linalg.norm(query))))[:10]]
        assert [h.vector_id for h in hits] == exact.tolist()
    events = list(store.events)
    store.close()
    assert sorted(p.name for p in path.rglob(".*.tmp")) == []
    return events


def _sqlite_vectors(store: Store) -> tuple[np.ndarray, np.ndarray]:
    rows = store.backend.conn.execute(
        "SELECT vector_id, vector FROM embeddings ORDER BY vector_id").fetchall()
    ids = np.array([r[0] for r in rows])
    return ids, np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), -1)


def sweep_selfkill(
    base: Path, tmp_path: Path, op: str, check: Callable[[Path], Any], points: Any
) -> int:
    """Kill the process right before its n-th os.write/fsync/replace while it runs ``op``."""
    kills = 0
    for n in points:
        work = copy_store(base, tmp_path / "selfkill")
        proc = start_child("selfkill", {"op": op, "store": str(work), "n": n, "seed": 1})
        out, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            assert '"completed"' in out
            break
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        assert '"killed_at"' in out
        check(work)
        kills += 1
    return kills


def test_sigkill_at_file_steps_of_persisting_a_rebuild_leaves_a_usable_index(
    rebuild_stores: RebuildStores, tmp_path: Path
) -> None:
    # the index temp file's write and the os.replace (all steps: the slow test below)
    kills = sweep_selfkill(rebuild_stores["flat"], tmp_path, "rebuild", check_after_kill, [1, 3])
    assert kills == 2


def check_flush_kills(corpus: Path, tmp_path: Path, points: Any) -> int:
    _, new = reference("flush", corpus, tmp_path)

    def check(work: Path) -> None:
        after = state(work)
        assert consistent(after) and observable(after) == observable(new)
        Store.open(work).close()  # a writer's flush removes what the killed one left
        assert sorted(p.name for p in work.rglob(".*.tmp")) == []

    return sweep_selfkill(corpus / "base", tmp_path, "flush", check, points)


def test_sigkill_at_file_steps_of_a_flush_after_a_write_keeps_the_write(
    corpus: Path, tmp_path: Path
) -> None:
    assert check_flush_kills(corpus, tmp_path, [3, 6]) == 2  # index replace, manifest fsync


@pytest.mark.slow
def test_sigkill_at_every_file_step_of_a_flush_after_a_write(corpus: Path, tmp_path: Path) -> None:
    kills = check_flush_kills(corpus, tmp_path, range(1, 20))
    assert kills == 8  # index and manifest: write, fsync, replace, fsync(dir) each
    print(f"flush self-kills at file steps survived: {kills}")


@pytest.mark.slow
def test_sigkill_at_every_file_step_of_persisting_a_rebuild(
    rebuild_stores: RebuildStores, tmp_path: Path
) -> None:
    total = 0
    for kind in ("flat", "hnsw", "ivf"):
        path = rebuild_stores[kind]
        kills = sweep_selfkill(path, tmp_path, "rebuild", check_after_kill, range(1, 20))
        # The index file's four steps; an HNSW graph built in one batch differs from the one
        # the ingest grew batch by batch, so its new hash also rewrites the manifest.
        assert kills == (8 if kind == "hnsw" else 4), kind
        total += kills
    print(f"rebuild self-kills at file steps survived: {total} (flat, hnsw, ivf)")


def check_side_after_kill(path: Path) -> list[str]:
    """:func:`check_after_kill` of a compressed store, whose writable reopen wrote its side
    file again if the kill left it unvouched for: the next open uses it, every row right, and
    ranks as the database read does."""
    events = check_after_kill(path)
    with Store.open(path, read_only=True) as store:
        query = np.random.default_rng(1).normal(size=32).astype(np.float32)
        hits = [(h.chunk_id, h.score) for h in store.dense_search(query, k=10)]
        cache = store._core.index_cache
        assert cache.indexes["m"].side is not None, store.events
        assert store.verify(sample=10)["models"]["m"]["side_rows_differing"] == 0
        cache.sides["m"] = cache.indexes["m"].side = None
        assert [(h.chunk_id, h.score) for h in store.dense_search(query, k=10)] == hits
    return events


def test_sigkill_while_persisting_a_compressed_rebuild_never_ranks_by_a_torn_side_file(
    rebuild_stores: RebuildStores, tmp_path: Path
) -> None:
    # the side file's write and replace, after the index's four steps (a rebuild writes the
    # same bytes again, so the manifest is not rewritten)
    kills = sweep_selfkill(rebuild_stores["ivfpq"], tmp_path, "rebuild", check_side_after_kill,
                           [5, 7])
    assert kills == 2


@pytest.mark.slow
def test_sigkill_at_every_file_step_of_persisting_a_compressed_rebuild(
    rebuild_stores: RebuildStores, tmp_path: Path
) -> None:
    kills = sweep_selfkill(rebuild_stores["ivfpq"], tmp_path, "rebuild", check_side_after_kill,
                           range(1, 20))
    assert kills == 8  # index and side file: write, fsync, replace, fsync(dir) each
    print(f"compressed rebuild self-kills at file steps survived: {kills}")


def kill_rebuilds(
    stores: RebuildStores, kinds: list[str], tmp_path: Path, rounds: int
) -> dict[str, int]:
    rng = np.random.default_rng(2026)
    outcome = {"kills": 0, "rebuilt_at_open": 0}
    works = {kind: copy_store(stores[kind], tmp_path / f"loop-{kind}") for kind in kinds}
    for round_ in range(rounds):
        kind = kinds[round_ % len(kinds)]
        proc = start_child("rebuild-loop", {"store": str(works[kind])})
        started = time.perf_counter()
        read_until(proc, "ack 0")
        one_rebuild = time.perf_counter() - started
        # a random moment of a later rebuild: building, serialising, writing, replacing
        time.sleep(float(rng.uniform(0, min(one_rebuild, 3.0))))
        kill(proc)
        events = check_after_kill(works[kind])
        outcome["kills"] += 1
        outcome["rebuilt_at_open"] += bool(events)
    return outcome


def test_sigkill_during_index_rebuilds_leaves_the_old_or_the_new_index(
    rebuild_stores: RebuildStores, tmp_path: Path
) -> None:
    outcome = kill_rebuilds(rebuild_stores, ["flat"], tmp_path, rounds=2)
    assert outcome["kills"] == 2


@pytest.mark.slow
def test_sigkill_at_random_moments_of_index_rebuilds(
    rebuild_stores: RebuildStores, tmp_path: Path
) -> None:
    rounds = max(3, KILL_ROUNDS // 2)
    outcome = kill_rebuilds(rebuild_stores, ["flat", "hnsw", "ivf"], tmp_path, rounds=rounds)
    assert outcome["kills"] == rounds
    print(f"rebuild kills survived: {outcome['kills']} "
          f"(index rebuilt from SQLite at reopen: {outcome['rebuilt_at_open']})")


# =========================================================================== SIGKILL: re-ingest


@pytest.fixture(scope="module")
def reingest_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """600 documents in 3 write batches; v2 changes all of them and adds 60."""
    root = tmp_path_factory.mktemp("reingest")
    build_store(root / "base", write_corpus(root / "v1", range(600), 1, sentences=8))
    write_corpus(root / "v2", range(660), 2, sentences=5)
    old = _documents(root / "base")
    done = copy_store(root / "base", root / "reference")
    proc = start_child("reingest", {"store": str(done), "folder": str(root / "v2")})
    read_until(proc, "start")
    started = time.perf_counter()  # how long the ingest itself takes, start-up excluded
    read_until(proc, "done")
    proc.wait()
    return {"root": root, "old": old, "new": _documents(done),
            "seconds": time.perf_counter() - started}


def _documents(path: Path) -> dict[str, tuple[str, list[str]]]:
    """document id -> (raw text, chunk texts in order)."""
    store = Store.open(path)
    rows = store.backend.conn.execute(
        "SELECT d.id, d.raw_text, c.text FROM documents d JOIN chunks c ON c.document_id = d.id "
        "ORDER BY d.id, c.chunk_index").fetchall()
    store.close(flush=False)
    out: dict[str, tuple[str, list[str]]] = {}
    for doc_id, raw, text in rows:
        out.setdefault(doc_id, (raw, []))[1].append(text)
    return out


def check_reingest_state(path: Path, old: dict[str, Any], new: dict[str, Any]) -> dict[str, int]:
    """Per document: all chunks old or all new, each vector the embedding of its chunk text,
    the index in step with SQLite."""
    docs = _documents(path)
    assert set(old) <= set(docs) <= set(new)
    counts = {"old": 0, "new": 0}
    for doc_id, value in docs.items():
        if value == new[doc_id]:
            counts["new"] += 1
        else:
            assert value == old.get(doc_id), f"{doc_id} mixes old and new chunks"
            counts["old"] += 1
    store = Store.open(path)
    model = embedder()
    rows = store.backend.conn.execute(
        "SELECT c.text, e.vector FROM embeddings e JOIN chunks c ON c.id = e.chunk_id").fetchall()
    for text, blob in rows:
        assert np.allclose(np.frombuffer(blob, "<f4"), model.embed_query(text), atol=1e-6), text
    report = store.verify(sample=40)
    model_report = report["models"]["hash-test"]
    assert report["integrity_check"] == "ok"
    assert model_report["ids_equal"] and model_report["self_found"] == model_report["sampled"]
    assert model_report["vectors"] == len(rows)
    store.close()
    return counts


def kill_reingests(data: dict[str, Any], tmp_path: Path, rounds: int) -> dict[str, int]:
    rng = np.random.default_rng(11)
    totals = {"kills": 0, "documents_checked": 0, "partly_new": 0}
    for _ in range(rounds):
        work = copy_store(data["root"] / "base", tmp_path / "reingest")
        proc = start_child("reingest", {"store": str(work), "folder": str(data["root"] / "v2")})
        read_until(proc, "start")
        time.sleep(float(rng.uniform(0, data["seconds"])))  # a random moment of the ingest
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts = check_reingest_state(work, data["old"], data["new"])
        totals["kills"] += proc.returncode == -signal.SIGKILL
        totals["documents_checked"] += counts["old"] + counts["new"]
        totals["partly_new"] += bool(counts["old"] and counts["new"])
    return totals


def test_sigkill_during_a_reingest_leaves_each_document_all_old_or_all_new(
    reingest_corpus: dict[str, Any], tmp_path: Path
) -> None:
    totals = kill_reingests(reingest_corpus, tmp_path, rounds=2)
    assert totals["documents_checked"] >= 1200
    print(f"re-ingest kills (quick): {totals}")


@pytest.mark.slow
def test_sigkill_at_random_moments_of_reingests(
    reingest_corpus: dict[str, Any], tmp_path: Path
) -> None:
    rounds = max(3, KILL_ROUNDS // 3)
    totals = kill_reingests(reingest_corpus, tmp_path, rounds=rounds)
    print(f"re-ingest kills: {totals['kills']} of {rounds} rounds killed before the ingest ended; "
          f"{totals['documents_checked']} documents checked all-old-or-all-new; "
          f"{totals['partly_new']} rounds stopped between write batches")


# =========================================================================== damaged bundles


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two bundles (a, b) of two different stores, and their live stores."""
    root = tmp_path_factory.mktemp("bundles")
    rng = np.random.default_rng(3)
    out = {}
    for name in ("a", "b"):
        with Store.open(root / f"{name}-live", create=True) as store:
            store.ensure_model("m", DIM)
            store.write([make_record(f"{name}{i}", [doc_text(i, 1), doc_text(i + 1, 1)],
                                     vectors=rng.normal(size=(2, DIM))) for i in range(200)])
            store.snapshot(root / name)
        out[name] = root / name
        out[f"{name}-live"] = root / f"{name}-live"
    return out


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _rehash(bundle: Path) -> None:
    """Recompute the manifest's file hashes (as a careless tool would after editing files)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for relative in manifest["files"]:
        data = (bundle / relative).read_bytes()
        manifest["files"][relative] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    for entry in manifest["models"].values():
        entry["sha256"] = manifest["files"][entry["index_file"]]["sha256"]
        entry["bytes"] = manifest["files"][entry["index_file"]]["bytes"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _set_user_version(bundle: Path, version: int) -> None:
    conn = sqlite3.connect(bundle / "metadata.db")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def _edit_manifest(bundle: Path, **changes: Any) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _swap(name: str) -> Callable[[Path, Path], None]:
    def swap(bundle: Path, other: Path) -> None:
        shutil.copy2(other / name, bundle / name)
    return swap


BUNDLE_DAMAGE: dict[str, tuple[Callable[[Path, Path], None], type[RagError], str]] = {
    "truncated database": (lambda b, o: _truncate(b / "metadata.db", 0.5), BundleCorrupt,
                           r"metadata\.db is \d+ bytes, the manifest records \d+ \(truncated"),
    "truncated index": (lambda b, o: _truncate(b / "index/m.faiss", 0.9), BundleCorrupt,
                        r"index/m\.faiss is \d+ bytes.*truncated"),
    "empty index": (lambda b, o: _truncate(b / "index/m.faiss", 0), BundleCorrupt,
                    r"index/m\.faiss is 0 bytes"),
    "bit-flipped database": (lambda b, o: _flip(b / "metadata.db", 5000, 3), BundleCorrupt,
                             r"metadata\.db does not match its recorded sha256"),
    "bit-flipped index": (lambda b, o: _flip(b / "index/m.faiss", 777, 6), BundleCorrupt,
                          r"index/m\.faiss does not match its recorded sha256"),
    "index swapped from another store": (_swap("index/m.faiss"), BundleCorrupt,
                                         r"index/m\.faiss (is \d+ bytes|does not match)"),
    "database swapped from another store": (_swap("metadata.db"), BundleCorrupt,
                                            r"metadata\.db (is \d+ bytes|does not match)"),
    "database swapped, hashes recomputed": (
        lambda b, o: (_swap("metadata.db")(b, o), _rehash(b)), BundleCorrupt,
        r"belongs to store \w+ but manifest\.json to store \w+"),
    "missing index": (lambda b, o: (b / "index/m.faiss").unlink(), BundleCorrupt,
                      r"index/m\.faiss is missing"),
    "manifest schema_version bumped": (lambda b, o: _edit_manifest(b, schema_version=99),
                                       BundleCorrupt, r"schema version 99, newer"),
    "user_version bumped": (lambda b, o: _set_user_version(b, 99), BundleCorrupt,
                            r"metadata\.db does not match its recorded sha256"),
    "user_version bumped, hashes recomputed": (
        lambda b, o: (_set_user_version(b, 99), _rehash(b)), RagError,
        r"schema version 99, newer than this mlflow-rag knows"),
    "manifest names a file outside the bundle": (
        lambda b, o: _edit_manifest(b, files={"../a-live/metadata.db": {"sha256": "0", "bytes": 1},
                                              "metadata.db": {"sha256": "0", "bytes": 1}}),
        BundleCorrupt, r"outside the bundle"),
    "manifest deleted": (lambda b, o: (b / "manifest.json").unlink(), BundleCorrupt,
                         r"no readable manifest\.json"),
    "manifest garbage": (lambda b, o: (b / "manifest.json").write_bytes(b"\x00{garbage"),
                         BundleCorrupt, r"no readable manifest\.json"),
}


def open_in_child(paths: dict[str, Path], mode: str, **options: Any) -> dict[str, dict[str, Any]]:
    """Open every path in one child process (a crash names the case it was on)."""
    results = run_child("open", {"paths": [str(p) for p in paths.values()], "mode": mode,
                                 **options})
    by_path = {r["path"]: r for r in results if "path" in r}
    return {case: by_path[str(path)] for case, path in paths.items()}


@pytest.fixture(scope="module")
def damaged_bundles(bundles: dict[str, Path],
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("damaged-bundles")
    paths = {"undamaged": bundles["a"]}
    for i, (case, (damage, _, _)) in enumerate(sorted(BUNDLE_DAMAGE.items())):
        paths[case] = copy_store(bundles["a"], root / f"case{i}")
        damage(paths[case], bundles["b"])
    return open_in_child(paths, "bundle")


@pytest.fixture(scope="module")
def damaged_bundles_mapped(bundles: dict[str, Path],
                           tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("damaged-bundles-mapped")
    paths = {"undamaged": bundles["a"]}
    for i, (case, (damage, _, _)) in enumerate(sorted(BUNDLE_DAMAGE.items())):
        paths[case] = copy_store(bundles["a"], root / f"case{i}")
        damage(paths[case], bundles["b"])
    return open_in_child(paths, "bundle", mmap=True)


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("case", sorted(BUNDLE_DAMAGE))
def test_damaged_bundle_is_refused_with_a_message_that_says_which_file_and_why(
    request: pytest.FixtureRequest, case: str, mapped: bool
) -> None:
    damaged_bundles: dict[str, dict[str, Any]] = request.getfixturevalue(
        "damaged_bundles_mapped" if mapped else "damaged_bundles")
    _, error, message = BUNDLE_DAMAGE[case]
    result = damaged_bundles[case]
    assert not result["opened"], result
    assert result["rag_error"] and result["error"] in {error.__name__, "SchemaTooNew"}, result
    assert re.search(message, result["message"]), result["message"]


def test_an_undamaged_bundle_opens_verified(damaged_bundles: dict[str, dict[str, Any]],
                                            damaged_bundles_mapped: dict[str, dict[str, Any]]) -> None:
    result = damaged_bundles["undamaged"]
    assert result["opened"] and result["events"] == [] and len(result["hits"]) == 5
    assert damaged_bundles_mapped["undamaged"] == result


LIVE_DAMAGE: dict[str, Callable[[Path, Path], None]] = {
    "truncated": lambda s, o: _truncate(s / "index/m.faiss", 0.5),
    "empty": lambda s, o: _truncate(s / "index/m.faiss", 0),
    "bit-flipped header": lambda s, o: _flip(s / "index/m.faiss", 3, 1),
    "bit-flipped vectors": lambda s, o: _flip(s / "index/m.faiss", 4000, 7),
    "garbage": lambda s, o: (s / "index/m.faiss").write_bytes(os.urandom(50_000)),
    "from another store": _swap("index/m.faiss"),
    "manifest from another store": _swap("manifest.json"),
    "missing": lambda s, o: (s / "index/m.faiss").unlink(),
    "manifest missing": lambda s, o: (s / "manifest.json").unlink(),
    "from another store, hashes recomputed": lambda s, o: (
        _swap("index/m.faiss")(s, o), _rehash_live(s)),
}


def _rehash_live(store: Path) -> None:
    """Make the manifest vouch for whatever index file is there now."""
    manifest = json.loads((store / "manifest.json").read_text())
    for entry in manifest["models"].values():
        data = (store / entry["index_file"]).read_bytes()
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["bytes"] = len(data)
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def damaged_live_stores(bundles: dict[str, Path],
                        tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("damaged-live")
    paths = {"undamaged": copy_store(bundles["a-live"], root / "undamaged")}
    for i, (case, damage) in enumerate(sorted(LIVE_DAMAGE.items())):
        paths[case] = copy_store(bundles["a-live"], root / f"case{i}")
        damage(paths[case], bundles["b-live"])
    return open_in_child(paths, "live", verify=True)


@pytest.fixture(scope="module")
def damaged_live_stores_mapped(bundles: dict[str, Path],
                               tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The same damage, opened read-only with the index files memory-mapped (serving's way):
    the checks run before anything is mapped, so a bad file is rebuilt in private memory."""
    root = tmp_path_factory.mktemp("damaged-live-mapped")
    paths = {"undamaged": copy_store(bundles["a-live"], root / "undamaged")}
    for i, (case, damage) in enumerate(sorted(LIVE_DAMAGE.items())):
        paths[case] = copy_store(bundles["a-live"], root / f"case{i}")
        damage(paths[case], bundles["b-live"])
    return open_in_child(paths, "live", verify=True, mmap=True)


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("case", sorted(LIVE_DAMAGE))
def test_damaged_index_of_a_live_store_is_rebuilt_with_a_message(
    request: pytest.FixtureRequest, case: str, mapped: bool
) -> None:
    damaged_live_stores: dict[str, dict[str, Any]] = request.getfixturevalue(
        "damaged_live_stores_mapped" if mapped else "damaged_live_stores")
    result = damaged_live_stores[case]
    assert result["opened"] and result["consistent"], result
    assert result["hits"] == damaged_live_stores["undamaged"]["hits"]
    assert result["orphan_hits"] == 0
    if case != "manifest missing":  # no manifest: nothing claims a file, built like the first time
        assert any("rebuilt index for 'm'" in e for e in result["events"]), result


# =========================================================================== damage fuzzing


def fuzz_cases(source: Path, work: Path, n: int, seed: int, *, rehash: bool) -> Iterator[Path]:
    """``n`` copies of ``source`` with random damage to its index file (bit flips, byte
    overwrites, truncation, zeroed ranges), optionally with the manifest hashes recomputed."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        case = copy_store(source, work / f"case{i}")
        path = case / "index" / "m.faiss"
        data = bytearray(path.read_bytes())
        kind = i % 4
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, len(data)))
                data[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # headers and counts live in the first bytes
            pos = int(rng.integers(0, min(len(data), 256)))
            data[pos] = int(rng.integers(0, 256))
        elif kind == 2:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            pos = int(rng.integers(0, len(data)))
            data[pos : pos + 64] = bytes(len(data[pos : pos + 64]))
        path.write_bytes(bytes(data))
        if rehash:
            manifest = json.loads((case / "manifest.json").read_text())
            for entry in manifest["models"].values():
                entry["sha256"] = hashlib.sha256(data).hexdigest()
                entry["bytes"] = len(data)
                # the block hashes too, or every case fails the hash check and none reaches
                # the layout check and FAISS (the point of a hash-consistent case)
                entry["block_sha256"] = block_sha256s(data, block=HASH_BLOCK_BYTES)
                entry["block_bytes"] = HASH_BLOCK_BYTES
            (case / "manifest.json").write_text(json.dumps(manifest))
        yield case


def fuzz_index_damage(tmp_path: Path, n: int, *, seed: int, mmap: bool = False) -> dict[str, int]:
    """Damage index files of flat, HNSW and IVF stores; open each in a child that must neither
    crash nor return a hit without its row. With ``rehash`` the damage passes the sha256 check
    and reaches FAISS itself."""
    rng = np.random.default_rng(seed)
    paths: dict[str, Path] = {}
    for kind in ("flat", "hnsw", "ivf"):
        source = tmp_path / f"src-{kind}"
        with Store.open(source, create=True) as store:
            store.ensure_model("m", DIM, index_type=kind)
            store.write([make_record(f"d{i}", [f"text {i} a", f"text {i} b"],
                                     vectors=rng.normal(size=(2, DIM))) for i in range(300)])
        for rehash in (False, True):
            for i, case in enumerate(fuzz_cases(source, tmp_path / f"fuzz-{kind}-{rehash}", n,
                                                seed, rehash=rehash)):
                paths[f"{kind}-{rehash}-{i}"] = case
    totals = {"cases": 0, "rebuilt": 0, "loaded_as_is": 0, "verify_flags": 0}
    for case, result in open_in_child(paths, "live", verify=True, mmap=mmap).items():
        assert result["opened"] and result["orphan_hits"] == 0, (case, result)
        assert len(result["hits"]) == 5 and result["integrity"] == "ok", (case, result)
        if "-False-" in case:  # the sha256 check catches every change
            assert result["consistent"], (case, result)
        totals["cases"] += 1
        totals["rebuilt"] += bool(result["events"])
        if not result["events"]:  # hash recomputed over damage the load checks cannot see
            totals["loaded_as_is"] += 1
            totals["verify_flags"] += not result["consistent"]
    return totals


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mmap"])
def test_random_index_damage_never_crashes_and_is_rebuilt_or_harmless(
    tmp_path: Path, mapped: bool
) -> None:
    totals = fuzz_index_damage(tmp_path, 6, seed=1, mmap=mapped)
    assert totals["cases"] == 36 and totals["rebuilt"] >= 18
    print(f"damaged index files opened (quick, {'mapped' if mapped else 'read'}): {totals}")


@pytest.mark.slow
def test_random_index_damage_fuzzing(tmp_path: Path) -> None:
    n = int(os.environ.get("MLFLOW_RAG_FUZZ_CASES", "100"))
    totals = fuzz_index_damage(tmp_path, n, seed=2)
    print(f"damaged index files opened: {totals['cases']} (flat/hnsw/ivf, with and without "
          f"recomputed hashes): {totals['rebuilt']} rebuilt, {totals['loaded_as_is']} loaded "
          f"as they were (of which verify() flagged {totals['verify_flags']}); 0 crashes")
