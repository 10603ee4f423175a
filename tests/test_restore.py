"""`mlflow-rag restore` on a real tracking store, through the CLI (issue 15): a writable store
from a registered model's bundle and from an ingest run's, verified against the manifest first."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mlflow_rag.cli import main
from tests import helpers_mlflow
from tests.helpers_mlflow import log_champion, write_corpus_files

tracking_template = helpers_mlflow.tracking_template  # shared fixtures
tracking_uri = helpers_mlflow.tracking_uri



def run(*args: str, ok: bool = True) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if ok:
        assert result.exit_code == 0, result.output
        return result.exit_code, result.stdout
    return result.exit_code, result.output


def hits(store: str | Path, query: str, *extra: str) -> list[tuple[str, float]]:
    _, out = run("search", query, "--store", str(store), "--json", "-k", "4", *extra)
    return [(h["chunk_id"], round(h["score"], 5)) for h in json.loads(out)]


def test_restore_from_a_model_uri_gives_the_original_hits_and_is_writable(
        tracking_template: Path, tmp_path: Path) -> None:
    uri, info, original = log_champion(tmp_path, tracking_template)
    sources = ("models:/rag@champion", "models:/rag/1", f"runs:/{info.run_id}/retriever")
    for i, source in enumerate(sources):
        dest = tmp_path / f"restored-{i}"
        _, out = run("restore", source, str(dest), "--tracking-uri", uri, "--json")
        report = json.loads(out)
        assert report["documents"] == 6 and report["files_verified"] >= 3
        for query in ("green tea bitterness", "mainframe migration", "hive queen"):
            assert hits(dest, query) == hits(original, query)
            assert hits(dest, query, "--mode", "bm25") == hits(original, query, "--mode", "bm25")
    docs = write_corpus_files(tmp_path / "more")
    (docs / "extra.md").write_text("# Kites\n\nKites fly on windy beaches.\n", encoding="utf-8")
    run("ingest", str(docs / "extra.md"), "--store", str(dest), "--no-track")
    _, out = run("show", "extra.md", "--store", str(dest), "--json")
    assert "Kites" in json.loads(out)["chunks"][0]["text"]


def test_restore_from_an_ingest_run_and_a_tampered_bundle_is_refused(
        tracking_uri: str, tmp_path: Path) -> None:
    docs = write_corpus_files(tmp_path / "docs")
    store = tmp_path / "store"
    _, out = run("ingest", str(docs), "--store", str(store), "--embedder", "tfidf", "--json",
                 "--experiment", "restore")
    run_id = json.loads(out)["run_id"]
    dest = tmp_path / "restored"
    run("restore", f"runs:/{run_id}/store", str(dest))
    assert hits(dest, "volcano ash eruptions") == hits(store, "volcano ash eruptions")
    run("ingest", str(docs), "--store", str(dest), "--embedder", "tfidf", "--no-track")

    # tamper with the logged artifact itself: the bundle's database
    import mlflow

    artifacts = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    db = artifacts / "store" / "metadata.db"
    data = bytearray(db.read_bytes())
    data[-100] ^= 0xFF
    db.write_bytes(bytes(data))
    refused = tmp_path / "refused"
    code, out = run("restore", f"runs:/{run_id}/store", str(refused), ok=False)
    assert code == 1 and out.count("\n") == 1
    assert "metadata.db" in out and "sha256" in out
    assert not refused.exists()
    assert not list(tmp_path.glob(".mlflow-rag-restore-*"))


def test_restore_refuses_bad_sources_and_a_full_destination(tracking_uri: str,
                                                            tmp_path: Path) -> None:
    code, out = run("restore", "s3://bucket/store", str(tmp_path / "d"), ok=False)
    assert code == 1 and "s3://bucket/store" in out and "models:/NAME@ALIAS" in out
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine", encoding="utf-8")
    code, out = run("restore", "models:/rag@champion", str(full), ok=False)
    assert code == 1 and "not an empty folder" in out
    assert (full / "keep.txt").read_text(encoding="utf-8") == "mine"
    code, out = run("restore", "models:/missing@champion", str(tmp_path / "d"), ok=False)
    assert code == 1 and "models:/missing@champion" in out and out.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_restore_a_model_into_either_backend(tracking_template: Path, tmp_path: Path,
                                             store_location: str) -> None:
    (tmp_path / "logged").mkdir()
    uri, _, original = log_champion(tmp_path / "logged", tracking_template)
    run("restore", "models:/rag@champion", store_location, "--tracking-uri", uri)
    for query in ("green tea bitterness", "derailleur gears"):
        assert hits(store_location, query) == hits(original, query)
    extra = tmp_path / "extra.md"
    extra.write_text("# Kites\n\nKites fly on windy beaches.\n", encoding="utf-8")
    run("ingest", str(extra), "--store", store_location, "--no-track")
    _, out = run("stats", "--store", store_location, "--json")
    assert json.loads(out)["documents"] == 7
