"""``mlflow-rag forget``: a document erased from everywhere in the store, driven through the
CLI on the speakers (TF-IDF) with logged searches and a kept answer quoting the document. On
SQLite the bytes of every file of the store are read afterwards; on PostgreSQL every row of
every table and every file of the local cache folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.store.erasure import ERASED
from mlflow_rag.store.store import Store
from mlflow_rag.store.tables import TABLES
from tests import helpers_mlflow

tracking_template = helpers_mlflow.tracking_template
tracking_uri = helpers_mlflow.tracking_uri

DOC = "Jonathan Passé and Shodhan Sheth"
# Words of that document only (lower case: tfidf's vocabulary; stems: the BM25 index) and the
# question whose log retrieved it.
TRACES = (b"codeconcis", b"shodhan", b"thin slices", b"legacy moderni")


def run(*args: str, ok: bool = True) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result.exit_code, result.output


@pytest.fixture
def speakers(store_location: str, shared_data: Path, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no tracking store here: forget lists no runs
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    run("ingest", str(csv), "--store", store_location, "--embedder", "tfidf", "--no-track")
    for mode in ("dense", "bm25", "hybrid"):
        run("search", "legacy modernization", "--store", store_location, "--mode", mode,
            "--log-query", "-k", "3")
    run("search", "public speaking", "--store", store_location, "--mode", "bm25",
        "--log-query", "-k", "1")
    _, out = run("ask", "How are legacy systems modernized?", "--store", store_location,
                 "--no-track", "--keep-answer-text", "--json")
    run("feedback", json.loads(out)["output_id"], "--store", store_location, "--thumbs", "up",
        "--comment", "loved the thin slices", "--no-track")
    return store_location


def rows(location: str) -> dict[str, list[tuple]]:
    with Store.open(location, read_only=True) as store:
        return {table: list(store.backend.dump_rows(table)) for table in TABLES}


def has_trace(data: bytes) -> list[bytes]:
    lowered = data.lower()
    return [t for t in TRACES if t in lowered]


@pytest.mark.slow
def test_forget_erases_a_document_from_every_file_and_log(speakers: str, tmp_path: Path) -> None:
    before = rows(speakers)
    chunk_ids = {r[0] for r in before["chunks"] if r[1] == DOC}
    retrieving = {r[1] for r in before["retrievals"] if r[2] in chunk_ids}
    answered = {r[1] for r in before["generations"]}
    assert retrieving and answered and "Shodhan" in before["generations"][0][13]

    with Store.open(speakers, read_only=True) as store:
        old_version = store.model("tfidf").model_version
    _, out = run("forget", DOC, "--store", speakers, "--json")
    report = json.loads(out[out.index("{"):])
    assert report["documents"] == [DOC] and report["chunks"] == len(chunk_ids)
    assert report["vectors"] == len(chunk_ids) and report["answers_redacted"] == 1
    assert report["queries_redacted"] == len(retrieving | answered) and not report["incomplete"]
    assert report["mlflow_runs"] is None and not (tmp_path / "mlflow.db").exists()

    after = rows(speakers)
    assert len(after["documents"]) == len(before["documents"]) - 1
    for query_id, text, *_ in after["queries"]:
        kept = dict((r[0], r[1]) for r in before["queries"])[query_id]
        assert text == (ERASED if query_id in retrieving | answered else kept)
    assert not [r for r in after["citations"] if r[3] == DOC]
    assert not has_trace(repr(after).encode())
    with Store.open(speakers, read_only=True) as store:  # the vocabulary that held its terms
        assert store.model("tfidf").model_version != old_version
        assert old_version and not store.backend.model_files("tfidf", old_version)
    if speakers.startswith("postgresql://"):
        files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    else:
        files = [p for p in Path(speakers).rglob("*") if p.is_file()]
        assert any(p.name == "metadata.db" for p in files)
    for path in files:
        assert not has_trace(path.read_bytes()), path

    for mode in ("dense", "bm25", "hybrid"):
        _, out = run("search", "legacy modernization CodeConcise", "--store", speakers,
                     "--mode", mode, "--json")
        assert all(hit["document_id"] != DOC for hit in json.loads(out))
    code, out = run("show", DOC, "--store", speakers, ok=False)
    assert code == 1 and len(out.strip().splitlines()) == 1


def test_an_unknown_id_forgets_nothing(speakers: str) -> None:
    before = rows(speakers)
    code, out = run("forget", DOC, "no-such-doc", "--store", speakers, ok=False)
    assert code == 1 and len(out.strip().splitlines()) == 1
    assert "'no-such-doc'" in out and "nothing was erased" in out
    assert rows(speakers) == before


@pytest.mark.slow
def test_forget_lists_the_mlflow_runs_whose_bundles_hold_the_document(
    shared_data: Path, tmp_path: Path, tracking_uri: str
) -> None:
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    store = str(tmp_path / "store")
    run("ingest", str(csv), "--store", store, "--embedder", "tfidf", "--tracking-uri",
        tracking_uri)
    import mlflow

    ingest_runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(ingest_runs) == 1
    _, out = run("forget", DOC, "--store", store, "--tracking-uri", tracking_uri)
    assert "MLflow artifacts are immutable: 1 run(s)" in out
    assert ingest_runs[0].info.run_id in out


def test_forget_a_user_deletes_their_questions_answers_and_feedback_from_every_file(
    store_location: str, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    store = store_location
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    run("ingest", str(csv), "--store", store, "--embedder", "tfidf", "--no-track")
    answers = {}
    for user, word in (("u1", "xylophonequestion"), ("u2", "quokkaquestion")):
        _, out = run("ask", f"legacy {word}?", "--store", store, "--no-track", "--json",
                     "--keep-answer-text", "--user-id", user, "--session-id", f"s-{user}")
        answers[user] = json.loads(out)["output_id"]
    run("feedback", answers["u2"], "--store", store, "--thumbs", "up", "--user-id", "u1",
        "--comment", "zebracomment", "--no-track")

    _, out = run("forget", "--user-id", "u1", "--store", store, "--json")
    assert json.loads(out)["logs_deleted"] == {"queries": 1, "feedback": 1}
    left = repr(rows(store)).encode()
    assert b"xylophonequestion" not in left and b"zebracomment" not in left
    assert b"quokkaquestion" in left
    if not store.startswith("postgresql://"):
        for path in (p for p in Path(store).rglob("*") if p.is_file()):
            data = path.read_bytes()
            assert b"xylophonequestion" not in data and b"zebracomment" not in data, path

    run("forget", "--session-id", "s-u2", "--store", store)
    assert b"quokkaquestion" not in repr(rows(store)).encode()
    code, out = run("forget", "--store", store, ok=False)
    assert code == 1 and "--user-id" in out and len(out.strip().splitlines()) == 1


def test_forget_erases_the_documents_kept_versions_too(speakers: str, shared_data: Path) -> None:
    """An updated document keeps its versions (show --history); forget erases them with it,
    while another document's history stays."""
    with Store.open(speakers) as store:
        ids = sorted(row[0] for row in store.backend.dump_rows("documents"))
        forgotten, kept = ids[0], ids[1]
        store.delete(forgotten)  # a version closed by a delete (a document re-added below)
    run("ingest", str(shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"), "--store",
        speakers, "--embedder", "tfidf", "--no-track")
    with Store.open(speakers, read_only=True) as store:
        assert forgotten in {row[0] for row in store.backend.dump_rows("document_versions")}
    run("forget", forgotten, "--store", speakers)
    with Store.open(speakers, read_only=True) as store:
        versions = store.backend.dump_rows("document_versions")
        assert forgotten not in {row[0] for row in versions}
        assert store.governance.document_history(kept)
    code, out = run("show", forgotten, "--history", "--store", speakers, ok=False)
    assert code == 1 and "no document" in out
