"""The float16 side file of a compressed index: the re-rank it serves gives exactly what the
database read gives, it follows writes, deletes and erasure, and a torn, stale or foreign
file is detected, never used to rank, and written again."""

from __future__ import annotations

import functools
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
from tests.conftest import clustered_unit_vectors, make_record

DIM = 32


_clustered = functools.partial(clustered_unit_vectors, dim=DIM, clusters=20, spread=0.3)


# ------------------------------------------------------------------ the format and the bound


def _side_of(blocks: list[tuple[np.ndarray, np.ndarray]]) -> SideVectors:
    """A side file written to memory from ``blocks``, read back as the store maps it."""
    out = bytearray()
    rows, runs = float16_rows(lambda: iter(blocks), DIM, out.extend)
    assert len(out) == rows * DIM * 2 + runs * 16
    return SideVectors(np.frombuffer(bytes(out[: rows * DIM * 2]), SIDE_DTYPE).reshape(-1, DIM),
                       np.frombuffer(bytes(out[rows * DIM * 2:]), "<i8").reshape(-1, 2))


def test_bounded_rerank_equals_the_full_rerank_and_reads_few() -> None:
    vectors = _clustered(3_000)
    # near-ties float16 cannot order: exact duplicates and copies moved by less than its ulp
    vectors[1::7] = vectors[::7][: len(vectors[1::7])]
    vectors[2::11] += np.float32(1e-5)
    vectors[3] = 7e4  # beyond float16: inf in the file, so read from the database
    ids = np.arange(101, 101 + len(vectors), dtype=np.int64)
    held = np.ones(len(ids), bool)
    held[5::50] = False  # deleted before the file was written (after this snapshot)
    held[-100:] = False  # newer than the file
    side = _side_of([(ids[held], vectors[held])])
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


def test_rows_are_found_by_vector_id_through_the_run_table() -> None:
    vectors = _clustered(6)
    side = _side_of([(np.array([3, 4, 5]), vectors[:3]), (np.array([9, 10]), vectors[3:5]),
                     (np.array([11]), vectors[5:])])  # 9..11 is one run across two blocks
    assert side.rows.shape == (6, DIM) and side.run_ids.tolist() == [3, 9]
    assert side.max_vector_id == 11 and not side.problem()
    assert side.positions(np.array([3, 5, 9, 11, 6, 2, 12, 0])).tolist() == [0, 2, 3, 5] + [-1] * 4
    assert np.array_equal(side.rows, vectors.astype(SIDE_DTYPE))
    lower, upper = side.bounds(np.array([3, 6, 14, 2]), vectors[0])
    assert lower[0] <= float(vectors[0] @ vectors[0]) <= upper[0]
    assert np.isinf(lower[1:]).all() and np.isinf(upper[1:]).all()  # not held: the database
    bad = SideVectors(side.rows, np.array([[3, 0], [4, 3]]))  # id 4 inside the first run
    assert "out of order" in bad.problem()


def test_the_next_file_carries_the_old_rows_erases_the_deleted_and_appends_the_new() -> None:
    vectors = _clustered(12)
    old = _side_of([(np.arange(5, 13), vectors[:8])])  # ids 5..12
    newer = [(np.array([14]), vectors[8:9]), (np.array([17]), vectors[10:11])]  # from the db
    side = _side_of(list(carried(old, np.array([6, 11, 15]), lambda: iter(newer))()))
    assert side.run_ids.tolist() == [5, 7, 12, 14, 17]
    want = {5: 0, 7: 2, 8: 3, 9: 4, 10: 5, 12: 7, 14: 8, 17: 10}
    assert side.positions(np.array(list(want))).tolist() == list(range(8))
    assert np.array_equal(side.rows, vectors[list(want.values())].astype(SIDE_DTYPE))
    assert (side.positions(np.array([6, 11, 13, 15, 16])) == -1).all()  # erased, never held


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
    assert _side_path(store).stat().st_size == entry.vectors_bytes \
        == entry.vectors_rows * DIM * 2 + entry.vectors_runs * 16
    assert entry.vectors_rows == 3_000 and entry.vectors_runs > 1  # ids interleave: runs
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
    erased = store.backend.vectors_by_ids(doomed.tolist(), DIM).astype(SIDE_DTYPE).tobytes()
    store.delete("m1", erase=True)  # erasure flushes: the file is written again
    entry = read_manifest(store.root).models["m"]
    side = store._core.index_cache.sides["m"]
    assert entry.vectors_rows == 3_190 and (side.positions(doomed) == -1).all()
    assert erased[:64] not in _side_path(store).read_bytes()  # its vectors are gone
    assert side.max_vector_id == entry.max_vector_id
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
        manifest = read_manifest(store.root)
        split = manifest.models["m"].vectors_rows * DIM * 2
        rows = -np.frombuffer(old_bytes[:split], SIDE_DTYPE)
        data = rows.tobytes() + old_bytes[split:]
        path.write_bytes(data)
        manifest.models["m"].vectors_block_sha256 = block_sha256s(data)
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
