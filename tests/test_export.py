"""``mlflow-rag export`` and ``import``, driven through the CLI on a store that holds the
speakers (ingested with TF-IDF), logged searches and an answer: the round trip keeps every
row and id, the vectors bit for bit and the search results (dense, BM25, hybrid: hits and
scores), on SQLite and on PostgreSQL, from Parquet and from JSON Lines. A damaged export, a
non-empty target, a bad format are refused in one line, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.store.exports import LOG_TABLES
from mlflow_rag.store.store import Store
from mlflow_rag.store.tables import TABLES

QUESTION = "legacy modernization"
MODES = ("dense", "bm25", "hybrid")


def run(*args: str, ok: bool = True) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result.exit_code, result.output


def other_location(request: pytest.FixtureRequest, store_location: str, tmp_path: Path,
                   name: str) -> str:
    """A second empty store on the same backend as ``store_location``."""
    if store_location.startswith("postgresql://"):
        cluster = request.getfixturevalue("pg_cluster")
        return str(cluster.dsn(cluster.new_database()))
    return str(tmp_path / name)


@pytest.fixture
def speakers(store_location: str, shared_data: Path, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> str:
    """The speakers in a store, with two logged searches and a recorded answer."""
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    run("ingest", str(csv), "--store", store_location, "--embedder", "tfidf", "--no-track")
    for mode in ("dense", "bm25"):
        run("search", QUESTION, "--store", store_location, "--mode", mode, "--log-query")
    run("ask", "What is CodeConcise?", "--store", store_location, "--no-track",
        "--user-id", "u1")
    return store_location


def all_rows(location: str) -> dict[str, list[tuple[Any, ...]]]:
    with Store.open(location, read_only=True) as store:
        return {table: sorted(store.backend.dump_rows(table), key=repr) for table in TABLES}


def searches(location: str) -> dict[str, list[tuple[str, float]]]:
    found = {}
    for mode in MODES:
        _, out = run("search", QUESTION, "--store", location, "--mode", mode, "-k", "8", "--json")
        found[mode] = [(hit["chunk_id"], hit["score"]) for hit in json.loads(out)]
    return found


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_round_trip_keeps_ids_vectors_and_search_results(
    speakers: str, fmt: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    before = all_rows(speakers)
    assert before["queries"] and before["generations"] and before["embeddings"]
    folder = tmp_path / "export"
    _, out = run("export", str(folder), "--store", speakers, "--format", fmt, "--include-logs")
    assert out.startswith("exported 13 documents, 26 chunks and 26 vectors")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["tables"]) == set(TABLES)
    assert manifest["vectors"]["tfidf"]["dimension"] > 0
    assert manifest["vectors"]["tfidf"]["index_type"] == "flat"
    assert set(manifest["files"]) == {p.relative_to(folder).as_posix()
                                      for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}

    target = other_location(request, speakers, tmp_path, "imported")
    _, out = run("import", str(folder), "--store", target)
    assert out.startswith("imported 13 documents, 26 chunks and 26 vectors")
    after = all_rows(target)
    assert after == before  # every row and id; vectors as the same bytes
    assert searches(target) == searches(speakers)
    with Store.open(target, read_only=True) as store:
        assert store.store_id == manifest["store_id"]

    code, out = run("import", str(folder), "--store", target, ok=False)
    assert code == 1 and len(out.strip().splitlines()) == 1 and "is not empty" in out
    assert all_rows(target) == after


@pytest.mark.slow
def test_without_include_logs_the_logs_stay_behind(
    speakers: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    run("export", str(folder), "--store", speakers, "--format", "parquet")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["tables"]) == set(TABLES) - LOG_TABLES
    assert not any(name.startswith(f"tables/{t}.") for t in LOG_TABLES for name in manifest["files"])
    target = other_location(request, speakers, tmp_path, "imported")
    run("import", str(folder), "--store", target)
    rows = all_rows(target)
    assert not rows["queries"] and not rows["generations"]
    assert rows["embeddings"] == all_rows(speakers)["embeddings"]
    assert searches(target) == searches(speakers)


@pytest.fixture
def exported(shared_data: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    run("ingest", str(csv), "--store", str(store), "--embedder", "tfidf", "--no-track")
    folder = tmp_path / "export"
    run("export", str(folder), "--store", str(store), "--format", "jsonl")
    return folder


@pytest.mark.parametrize("damage", ["flipped", "missing", "truncated"])
def test_a_damaged_export_is_refused_naming_the_file_and_nothing_is_written(
    exported: Path, tmp_path: Path, damage: str
) -> None:
    victim = exported / "vectors" / "tfidf.jsonl"
    data = victim.read_bytes()
    if damage == "flipped":
        victim.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(data[: len(data) // 2])
    target = tmp_path / "imported"
    code, out = run("import", str(exported), "--store", str(target), ok=False)
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert "vectors/tfidf.jsonl" in out
    assert not target.exists()


def test_an_unfinished_export_and_bad_options_are_refused(exported: Path, tmp_path: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    del manifest["files"]
    (exported / "manifest.json").write_text(json.dumps(manifest))
    code, out = run("import", str(exported), "--store", str(tmp_path / "t"), ok=False)
    assert code == 1 and "no 'files' object" in out and not (tmp_path / "t").exists()
    (exported / "manifest.json").unlink()
    code, out = run("import", str(exported), "--store", str(tmp_path / "t"), ok=False)
    assert code == 1 and "has no manifest.json" in out and not (tmp_path / "t").exists()

    store = str(tmp_path / "store")
    code, out = run("export", str(tmp_path / "x"), "--store", store, "--format", "csv", ok=False)
    assert code == 1 and "'csv'" in out and "parquet" in out and "jsonl" in out
    assert not (tmp_path / "x").exists()
    code, out = run("export", str(exported), "--store", store, "--format", "jsonl", ok=False)
    assert code == 1 and "not an empty folder" in out


@pytest.mark.slow
@pytest.mark.postgres
def test_an_export_moves_a_store_between_backends(
    speakers: str, pg_cluster: Any, tmp_path: Path
) -> None:
    """SQLite -> export -> PostgreSQL, and PostgreSQL -> export -> SQLite."""
    before = all_rows(speakers)
    expected = searches(speakers)
    if speakers.startswith("postgresql://"):
        target = str(tmp_path / "folder")
    else:
        target = str(pg_cluster.dsn(pg_cluster.new_database()))
    folder = tmp_path / "export"
    run("export", str(folder), "--store", speakers, "--format", "parquet", "--include-logs")
    run("import", str(folder), "--store", target)
    after = all_rows(target)
    for rows in (before, after):  # bookkeeping of SQLite's own (secure_delete is on)
        rows["store_meta"] = [r for r in rows["store_meta"] if r[0] != "free_pages_zeroed"]
    assert after == before
    found = searches(target)
    for mode in MODES:  # the same hits; BM25 is summed in another order by each database
        assert [c for c, _ in found[mode]] == [c for c, _ in expected[mode]], mode
        assert [s for _, s in found[mode]] == pytest.approx([s for _, s in expected[mode]],
                                                            rel=1e-12, abs=0), mode


@pytest.mark.parametrize("name", ["../outside.jsonl", "/etc/hostname", "tables/../../x.jsonl"])
def test_a_manifest_naming_a_file_outside_the_export_is_refused(
    exported: Path, tmp_path: Path, name: str
) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    digest = manifest["files"].pop("tables/documents.jsonl")
    manifest["files"][name] = digest
    manifest["tables"]["documents"]["files"] = [name]
    (exported / "manifest.json").write_text(json.dumps(manifest))
    target = tmp_path / "imported"
    code, out = run("import", str(exported), "--store", str(target), ok=False)
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert not target.exists()


def test_rows_the_database_refuses_roll_the_import_back(exported: Path, tmp_path: Path) -> None:
    """An export edited with its hashes recomputed (chunks of a document it no longer has)."""
    from mlflow_rag.store.files import sha256_file

    path = exported / "tables" / "documents.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["files"]["tables/documents.jsonl"] = sha256_file(path)
    manifest["tables"]["documents"]["rows"] -= 1
    (exported / "manifest.json").write_text(json.dumps(manifest))
    target = tmp_path / "imported"
    code, out = run("import", str(exported), "--store", str(target), ok=False)
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert "do not load" in out and "nothing was imported" in out
    assert not target.exists()
