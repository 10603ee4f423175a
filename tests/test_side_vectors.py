"""The float16 side file of a compressed index: the re-rank it serves gives exactly what the
database read gives, it follows writes, deletes and erasure, and a torn, stale or foreign
file is detected, never used to rank, and written again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.errors import BundleCorrupt
from mlflow_rag.index.compressed import rerank
from mlflow_rag.index.side_vectors import (
    SIDE_DTYPE,
    SideVectors,
    carried,
    float16_rows,
    rerank_bounded,
)
from mlflow_rag.store import layout
from mlflow_rag.store.files import block_sha256s
from mlflow_rag.store.manifest import read_manifest, write_manifest
from mlflow_rag.store.store import Store
from tests.conftest import make_record

DIM = 32


def _clustered(n: int, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, DIM))
    points = centers[rng.integers(20, size=n)] + rng.normal(size=(n, DIM)) * 0.3
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------ the format and the bound


def test_bounded_rerank_equals_the_full_rerank_and_reads_few() -> None:
    vectors = _clustered(3_000)
    # near-ties float16 cannot order: exact duplicates and copies moved by less than its ulp
    vectors[1::7] = vectors[::7][: len(vectors[1::7])]
    vectors[2::11] += np.float32(1e-5)
    ids = np.arange(101, 101 + len(vectors), dtype=np.int64)
    rows = vectors.astype(SIDE_DTYPE)
    rows[5::50] = np.nan  # rows the file does not hold: read from the database
    side = SideVectors(rows[:-100], base=101)  # the last 100 ids are newer than the file
    exact_of = dict(zip(ids.tolist(), vectors, strict=True))
    rng = np.random.default_rng(1)
    read = []
    for trial in range(150):
        query = vectors[rng.integers(len(vectors))] + rng.normal(size=DIM).astype(np.float32) * 0.05
        candidates = rng.choice(ids, size=300, replace=False)
        k = (1, 10, 50)[trial % 3]
        want = rerank(candidates, np.stack([exact_of[i] for i in candidates.tolist()]), query, k)
        got_ids, got_scores, count = rerank_bounded(
            candidates, side, query, k,
            lambda keep: np.stack([exact_of[i] for i in keep.tolist()]).reshape(-1, DIM))
        assert np.array_equal(got_ids, want[0]) and np.array_equal(got_scores, want[1])
        read.append(count / len(candidates))
    assert np.mean(read) < 0.35  # float16 settles most candidates without the database


def test_the_file_is_addressed_by_vector_id_with_nan_rows_for_ids_it_does_not_hold() -> None:
    vectors = _clustered(6)
    blocks = [(np.array([3, 4, 5]), vectors[:3]), (np.array([9, 10]), vectors[3:5]),
              (np.array([13]), vectors[5:])]
    out = bytearray()
    base, rows = float16_rows(lambda: iter(blocks), DIM, out.extend)
    assert (base, rows) == (3, 11) and len(out) == 11 * DIM * 2
    side = SideVectors(np.frombuffer(bytes(out), SIDE_DTYPE).reshape(rows, DIM), base)
    assert side.max_vector_id == 13
    assert np.array_equal(side.rows[[0, 6, 10]], vectors[[0, 3, 5]].astype(SIDE_DTYPE))
    assert np.isnan(side.rows[[3, 4, 5, 8, 9]]).all()
    lower, upper = side.bounds(np.array([3, 6, 14, 2]), vectors[0])
    assert lower[0] <= float(vectors[0] @ vectors[0]) <= upper[0]
    assert np.isinf(lower[1:]).all() and np.isinf(upper[1:]).all()  # NaN row, beyond, before


def test_the_next_file_carries_the_old_rows_erases_the_deleted_and_appends_the_new() -> None:
    vectors = _clustered(12)
    old = SideVectors(vectors[:8].astype(SIDE_DTYPE), base=5, generation=3)  # ids 5..12
    newer = [(np.array([14, 15]), vectors[8:10]), (np.array([17]), vectors[10:11])]
    out = bytearray()
    base, rows = float16_rows(carried(old, np.array([6, 11, 15]), lambda: iter(newer), rows=3),
                              DIM, out.extend)
    got = np.frombuffer(bytes(out), SIDE_DTYPE).reshape(rows, DIM)
    assert (base, rows) == (5, 13)
    assert np.isnan(got[[1, 6, 8, 11]]).all()  # deleted 6 and 11; 13 and 16 never held
    keep = [0, 2, 3, 4, 5, 7]
    assert np.array_equal(got[keep], vectors[keep].astype(SIDE_DTYPE))
    assert np.array_equal(got[[9, 12]], vectors[[8, 10]].astype(SIDE_DTYPE))


# ------------------------------------------------------------------ through the store


def _two_models(location: str, n: int) -> tuple[Store, np.ndarray]:
    """A store whose models' writes alternate, so each model's vector ids have gaps."""
    store = Store.open(location, create=True)
    for name in ("m", "other"):
        store.ensure_model(name, DIM, embedder=None, index_type="ivfpq",
                           index_params={"rerank": 100})
    vectors = _clustered(n)
    for start in range(0, n, 500):
        for name in ("m", "other"):
            store.write([make_record(f"{name}{d}", [f"{name} {d} chunk {j}" for j in range(10)],
                                     vectors=vectors[d * 10:(d + 1) * 10], model=name)
                         for d in range(start // 10, (start + 500) // 10)])
    store.flush()
    return store, vectors


def _hits(store: Store, queries: np.ndarray, *, k: int = 10, **kwargs: Any) -> list:
    return [[(h.chunk_id, h.score) for h in store.dense_search(q, model="m", k=k, **kwargs)]
            for q in queries]


def _database_read(store: Store, queries: np.ndarray, **kwargs: Any) -> list:
    """The same searches re-ranked by reading every candidate from the database."""
    cache = store._core.index_cache
    side = cache.sides["m"]
    cache.sides["m"] = cache.indexes["m"].side = None  # as after a failed check
    try:
        return _hits(store, queries, **kwargs)
    finally:
        cache.sides["m"] = cache.indexes["m"].side = side


def _side_path(store: Store) -> Path:
    return layout.vectors_path(store.root, store._core.registry.get("m"))


def test_the_side_file_reranks_as_the_database_does_through_writes_deletes_and_erasure(
    store_location: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, vectors = _two_models(store_location, 3_000)
    queries = vectors[::157] + np.float32(0.01)
    entry = read_manifest(store.root).models["m"]
    assert entry.vectors_file == "index/" + store._core.registry.get("m").slug + ".f16"
    assert _side_path(store).stat().st_size == entry.vectors_bytes == entry.vectors_rows * DIM * 2
    assert entry.vectors_rows > 3_000  # vector-id addressed: the other model's ids are gaps
    reads: list[int] = []
    real = store.backend.vectors_by_ids
    monkeypatch.setattr(store.backend, "vectors_by_ids",
                        lambda ids, d: reads.append(len(ids)) or real(ids, d))
    with_side = _hits(store, queries)
    side_reads, reads[:] = sum(reads), []
    assert with_side == _database_read(store, queries)
    assert side_reads < sum(reads) / 4  # 100 candidates a query from the database, else ~k
    for kwargs in ({"k": 1}, {"k": 30}, {"filters": {"document_id": "m7"}}):
        assert _hits(store, queries, **kwargs) == _database_read(store, queries, **kwargs)
    # written, not flushed: ids beyond the file are read from the database
    more = _clustered(200, seed=5)
    store.write([make_record(f"new{d}", [f"new {d} chunk {j}" for j in range(10)],
                             vectors=more[d * 10:(d + 1) * 10]) for d in range(20)])
    assert _hits(store, more[::10])[0][0][0] == "new0#0"
    assert _hits(store, more[::10]) == _database_read(store, more[::10])
    doomed = store.backend.vectors_after("m", 0, DIM)[0][10:20]  # document m1's vector ids
    store.delete("m1", erase=True)  # erasure flushes: the file is written again
    entry = read_manifest(store.root).models["m"]
    rows = np.fromfile(_side_path(store), dtype=SIDE_DTYPE).reshape(-1, DIM)
    assert np.isnan(rows[doomed - entry.vectors_base]).all()  # its vectors are gone
    assert entry.vectors_base + entry.vectors_rows - 1 == entry.max_vector_id
    assert _hits(store, queries) == _database_read(store, queries)
    assert "m1#0" not in {c for hits in _hits(store, queries, k=50) for c, _ in hits}
    report = store.verify(sample=20)["models"]["m"]
    assert report["side_file"] == "used" and report["side_rows_differing"] == 0
    store.close()
    again = Store.open(store_location, read_only=True, mmap=True)  # serving's way to open
    try:
        assert _hits(again, queries) == _database_read(again, queries)
        assert again._core.index_cache.indexes["m"].side is not None
        assert not [e for e in again._core.index_cache.events if "side file" in e]
    finally:
        again.close()


def _damage_cases(store: Store, tmp_path: Path) -> dict[str, Any]:
    path = _side_path(store)
    old_bytes = path.read_bytes()

    def truncate() -> None:
        path.write_bytes(old_bytes[: len(old_bytes) // 2])

    def flip() -> None:
        data = bytearray(old_bytes)
        data[len(data) // 3] ^= 0x40
        path.write_bytes(bytes(data))

    def foreign() -> None:  # other vectors, the manifest's hashes recomputed
        data = np.frombuffer(old_bytes, SIDE_DTYPE).copy()
        data[np.isfinite(data)] *= np.float16(-1)
        path.write_bytes(data.tobytes())
        manifest = read_manifest(store.root)
        manifest.models["m"].vectors_block_sha256 = block_sha256s(data.tobytes())
        write_manifest(store.root, manifest)

    def missing() -> None:
        path.unlink()

    return {"truncated": truncate, "bit flip": flip, "foreign": foreign, "missing": missing}


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "foreign", "missing", "stale",
                                    "killed before the manifest"])
def test_a_torn_stale_or_foreign_side_file_is_never_used_and_is_written_again(
    tmp_path: Path, damage: str,
) -> None:
    location = str(tmp_path / "store")
    store, vectors = _two_models(location, 1_500)
    queries = vectors[::97] + np.float32(0.01)
    want = _hits(store, queries)
    side_file = _side_path(store)
    if damage in ("stale", "killed before the manifest"):
        shutil.copy(side_file, tmp_path / "old.f16")
        shutil.copy(store.root / "manifest.json", tmp_path / "old.json")
        store.delete("m3")  # the next file differs: m3's rows are NaN in it
        want = _hits(store, queries)
        store.close()
        if damage == "stale":  # an older file under the newer manifest
            shutil.copy(tmp_path / "old.f16", side_file)
        else:  # the new file replaced the old one, then the process died: the old manifest
            shutil.copy(tmp_path / "old.json", store.root / "manifest.json")
    else:
        _damage_cases(store, tmp_path)[damage]()
        store.close()
    store = Store.open(location)
    try:
        assert _hits(store, queries) == want
        assert store._core.index_cache.indexes["m"].side is None
        assert [e for e in store._core.index_cache.events if "side file of 'm' not used" in e]
        assert store.verify(sample=10)["models"]["m"]["side_file"] == "not used"
    finally:
        store.close()  # a writable store's flush writes the file again
    again = Store.open(location, read_only=True)
    try:
        assert _hits(again, queries) == want
        assert again._core.index_cache.indexes["m"].side is not None
        assert not [e for e in again._core.index_cache.events if "side file" in e]
        assert again.verify(sample=10)["models"]["m"]["side_rows_differing"] == 0
    finally:
        again.close()


def test_cli_a_store_from_before_the_side_file_gets_one_and_searches_the_same(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(60):
        (folder / f"d{i}.txt").write_text(f"document {i} about topic{i % 7} and search {i % 4}")
    runner = CliRunner()
    store = str(tmp_path / "s")

    def cli(*args: str) -> Any:
        done = runner.invoke(main, [*args, "--store", store])
        assert done.exit_code == 0, done.output
        return done.output

    cli("ingest", str(folder), "--no-track", "--embedder", "tfidf", "--index-type", "ivfpq",
        "--index-param", "rerank=40")
    # as a store written before side files existed: no file, nothing in the manifest
    manifest = read_manifest(Path(store))
    name = next(iter(manifest.models))
    Path(store, manifest.models[name].vectors_file).unlink()
    manifest.models[name].vectors_file = ""
    write_manifest(Path(store), manifest)
    search = ("search", "topic3 search", "--mode", "dense", "--json", "-k", "5")
    before = json.loads(cli(*search))
    report = json.loads(cli("check", "--no-embed-check"))  # opens writable: the flush writes it
    assert report["models"][name]["side_file"] == "not used"
    assert Path(store, read_manifest(Path(store)).models[name].vectors_file).is_file()
    assert json.loads(cli(*search)) == before
    (folder / "d7.txt").write_text("a changed document about topic3 and search")
    cli("ingest", str(folder), "--no-track", "--embedder", "tfidf")
    doomed = before[-1]["document_id"]
    cli("delete", doomed)  # erases, and refits the tfidf model: every vector is new
    report = json.loads(cli("check", "--no-embed-check"))["models"][name]
    assert (report["side_file"], report["side_rows_differing"]) == ("used", 0)
    after = json.loads(cli(*search))
    assert after and doomed not in {h["document_id"] for h in after}
    with Store.open(store, read_only=True) as opened:
        assert not [e for e in opened._core.index_cache.events if "side file" in e]
        assert opened.verify(sample=10)["models"][name]["side_file"] == "used"


def test_a_bundle_carries_its_side_file_hashed_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    store, vectors = _two_models(str(tmp_path / "store"), 1_000)
    queries = vectors[::97] + np.float32(0.01)
    want = _hits(store, queries)
    bundle = store.snapshot(tmp_path / "bundle")
    store.close()
    name = layout.vectors_relative(store._core.registry.get("m"))
    assert name in read_manifest(bundle).files  # hashed with every other file
    opened = Store.open(bundle, immutable=True, verify_files=True, mmap=True)
    try:
        assert _hits(opened, queries) == want
        assert opened._core.index_cache.indexes["m"].side is not None
        assert not opened._core.index_cache.events
    finally:
        opened.close()
    with open(bundle / name, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x7c")  # float16 inf
    with pytest.raises(BundleCorrupt, match=f"bundle file {name} does not match"):
        Store.open(bundle, immutable=True, verify_files=True)
