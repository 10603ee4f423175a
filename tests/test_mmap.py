"""Memory-mapped index files (``Store.open(..., mmap=True)``): the same answers as a private
copy, pages shared between processes, never written, and a private copy when rows arrive.

Damaged files opened mapped are covered with the other damage in tests/test_faults.py
(``[mmap]`` cases): the size and sha256 checks run before anything is mapped."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.errors import InvalidInput
from mlflow_rag.index.vector_index import scores
from mlflow_rag.store.store import Store
from mlflow_rag.types import ChunkRecord, DocumentRecord, VectorBatch

REPO = Path(__file__).resolve().parent.parent
DIM = 32


def _record(i: int, vector: np.ndarray) -> DocumentRecord:
    text = f"document {i} about topic {i % 7}"
    digest = hashlib.sha256(text.encode()).hexdigest()
    return DocumentRecord(
        id=f"d{i}", source_path=f"/data/d{i}.txt", source_type="text", content_hash=digest,
        raw_text=None,
        chunks=(ChunkRecord(id=f"c{i}", chunk_index=0, chunk_type="text", text=text,
                            start_char=0, end_char=len(text), token_count=5, text_hash=digest),),
        vectors=(VectorBatch("m", vector.reshape(1, -1)),),
        metadata={"bucket": i % 10},
    )


def _build(path: Path, kind: str, n: int, *, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    with Store.open(path, create=True) as store:
        store.ensure_model("m", dim, index_type=kind)
        store.write([_record(i, vectors[i]) for i in range(n)])
    return vectors


def _answers(store: Store, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    out = []
    for q in queries:
        for filters in (None, {"bucket": {"$lt": 3}}):
            hits = store.dense_search(q, k=10, filters=filters)
            out.append([(h.chunk_id, round(h.score, 5)) for h in hits])
    return out


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_a_mapped_index_answers_exactly_like_a_private_copy(tmp_path: Path, kind: str) -> None:
    _build(tmp_path / "s", kind, 600)
    queries = np.random.default_rng(1).normal(size=(8, DIM)).astype(np.float32)
    with Store.open(tmp_path / "s", read_only=True) as private, \
            Store.open(tmp_path / "s", read_only=True, mmap=True) as mapped:
        assert _answers(mapped, queries) == _answers(private, queries)
        index = mapped._core.index_cache.indexes["m"]
        assert index.mapped and not private._core.index_cache.indexes["m"].mapped
        assert mapped.verify(sample=20)["models"]["m"]["ids_equal"]
        if kind != "ivf":  # flat storage: the matrix is a view of the mapped file
            assert np.array_equal(index.matrix(), private._core.index_cache.indexes["m"].matrix())
        maps = Path("/proc/self/maps").read_text()
        assert str((tmp_path / "s" / "index" / "m.faiss").resolve()) in maps
        # The database's pages are read through a map too (issue 19), the private open's not.
        assert str((tmp_path / "s" / "metadata.db").resolve()) in maps
        assert _mmap_size(mapped) > 0 and _mmap_size(private) == 0


def _mmap_size(store: Store) -> int:
    return int(store.backend.conn.execute("PRAGMA mmap_size").fetchone()[0])  # type: ignore[attr-defined]


def test_scores_of_an_unaligned_matrix_equal_blas_on_an_aligned_copy() -> None:
    rng = np.random.default_rng(3)
    raw = np.zeros(4 * 2500 * 48 + 2, dtype=np.uint8)
    matrix = raw[2:].view(np.float32).reshape(2500, 48)  # 2 bytes off, as FAISS maps it
    matrix[...] = rng.normal(size=(2500, 48))
    query = rng.normal(size=48).astype(np.float32)
    assert not matrix.flags.aligned
    np.testing.assert_allclose(scores(matrix, query), np.ascontiguousarray(matrix) @ query,
                               rtol=1e-5, atol=1e-5)


def test_mmap_is_refused_on_a_writable_store(tmp_path: Path) -> None:
    _build(tmp_path / "s", "flat", 10)
    with pytest.raises(InvalidInput, match="mmap=True needs read_only=True or immutable=True"):
        Store.open(tmp_path / "s", mmap=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_mapped_index_takes_a_private_copy_for_newer_rows_and_never_writes_the_file(
    tmp_path: Path, kind: str
) -> None:
    vectors = _build(tmp_path / "s", kind, 300)
    index_file = tmp_path / "s" / "index" / "m.faiss"
    before = _file_sha(index_file)
    with Store.open(tmp_path / "s", read_only=True, mmap=True) as reader:
        assert reader.dense_search(vectors[5], k=1)[0].chunk_id == "c5"
        assert _mmap_size(reader) > 0  # the writer's commits below are read through the map
        assert reader._core.index_cache.indexes["m"].mapped
        extra = np.random.default_rng(9).normal(size=(2, DIM)).astype(np.float32)
        with Store.open(tmp_path / "s") as writer:  # a writer commits while the reader maps
            writer.write([_record(1000, extra[0]), _record(1001, extra[1])])
            writer.delete("d5")
        assert _file_sha(index_file) != before  # the writer replaced the file (new inode)
        hits = reader.dense_search(extra[1], k=1)
        assert hits[0].chunk_id == "c1001"
        assert "c5" not in [h.chunk_id for h in reader.dense_search(vectors[5], k=5)]
        assert not reader._core.index_cache.indexes["m"].mapped  # replayed into a private copy
        assert reader.orphan_hits == 0


def test_the_mapped_file_is_untouched_by_searches(tmp_path: Path) -> None:
    _build(tmp_path / "s", "flat", 300)
    index_file = tmp_path / "s" / "index" / "m.faiss"
    before = (_file_sha(index_file), index_file.stat().st_mtime_ns)
    with Store.open(tmp_path / "s", read_only=True, mmap=True) as store:
        _answers(store, np.random.default_rng(2).normal(size=(4, DIM)).astype(np.float32))
    assert (_file_sha(index_file), index_file.stat().st_mtime_ns) == before


SMAPS_CHILD = """
import json, sys
import numpy as np
from mlflow_rag.store.store import Store
store = Store.open(sys.argv[1], read_only=True, mmap=sys.argv[2] == "1")
hits = store.dense_search(np.ones(int(sys.argv[3]), dtype=np.float32), k=3)
print(json.dumps([h.chunk_id for h in hits]), flush=True)
sys.stdin.readline()  # the parent reads our smaps now
fields, inside = {}, False
for line in open("/proc/self/smaps"):
    parts = line.split()
    if parts and not parts[0].endswith(":"):  # a mapping's header line: address range ... path
        inside = line.rstrip().endswith("/m.faiss")
        continue
    if inside and len(parts) == 3 and parts[2] == "kB":
        fields[parts[0][:-1]] = fields.get(parts[0][:-1], 0) + int(parts[1])
print(json.dumps(fields), flush=True)
sys.stdin.readline()
"""


def _children_smaps(
    store: Path, *, mmap: bool, dim: int, count: int = 2
) -> list[tuple[list[str], dict[str, int]]]:
    procs = [subprocess.Popen([sys.executable, "-c", SMAPS_CHILD, str(store), "1" if mmap else "0",
                               str(dim)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(count)]
    try:
        hits = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        for p in procs:  # every child has searched (touched every page) and is still alive
            p.stdin.write("\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        smaps = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        for p in procs:
            p.stdin.write("\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
            assert p.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return list(zip(hits, smaps, strict=True))


def test_two_processes_mapping_one_store_share_the_index_pages(tmp_path: Path) -> None:
    dim = 128
    _build(tmp_path / "s", "flat", 4000, dim=dim)  # 2 MB of vectors
    vector_kb = 4000 * dim * 4 // 1024
    mapped = _children_smaps(tmp_path / "s", mmap=True, dim=dim)
    private = _children_smaps(tmp_path / "s", mmap=False, dim=dim)
    assert mapped[0][0] == mapped[1][0] == private[0][0]  # identical answers
    for _, fields in mapped:
        # every page of the vectors is resident and counted as shared by both processes
        assert fields["Rss"] >= 0.95 * vector_kb, fields
        assert fields["Shared_Clean"] >= 0.95 * vector_kb, fields
        assert fields.get("Private_Dirty", 0) == 0 and fields.get("Anonymous", 0) == 0, fields
    for _, fields in private:
        assert fields.get("Rss", 0) == 0, fields  # read into private memory, file not mapped
