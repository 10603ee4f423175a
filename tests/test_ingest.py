"""The ingestion pipeline end to end, on real files, with real embedders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.errors import InvalidInput, LoaderError
from mlflow_rag.ingest import IngestOptions, document_action, import_legacy, ingest
from mlflow_rag.load.legacy import read_legacy
from mlflow_rag.search import Searcher
from mlflow_rag.store.store import Store

SPEAKERS = "chatboti/2025-09-02-speaker-bio.csv"
CODECONCISE = "Jonathan Passé and Shodhan Sheth"


def write_docs(folder: Path, docs: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


TFIDF = IngestOptions(embedder="tfidf")
DOCS = {
    "alpha.md": "# Alpha\n\nVector search finds nearest neighbours in embedding space.\n\n"
                "## Details\n\nFAISS builds flat, HNSW and IVF indexes.",
    "beta.txt": "SQLite keeps metadata in tables with transactions and full-text search.",
    "gamma.txt": "Chunking splits long documents into passages that fit the model.",
}


def test_document_action_is_a_pure_decision() -> None:
    assert document_action(None, "h", {}) == "new"
    assert document_action(("h", {"a": 1}), "h", {"a": 1}) == "unchanged"
    assert document_action(("h", {"a": 1}), "h2", {"a": 1}) == "updated"
    assert document_action(("h", {"a": 1}), "h", {"a": 2}) == "updated"


def test_folder_ingest_then_reingest_embeds_nothing(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", DOCS)
    with Store.open(tmp_path / "s", create=True) as store:
        first = ingest([str(folder)], store, options=TFIDF, progress=False)
        assert (first.documents_new, first.documents_failed) == (3, 0)
        assert first.vectors_embedded == first.chunks > 0
        assert set(first.seconds) >= {"load", "chunk", "embed", "write", "index"}
        second = ingest([str(folder)], store, options=TFIDF, progress=False)
    assert (second.documents_new, second.documents_updated, second.documents_unchanged) == (0, 0, 3)
    assert second.vectors_embedded == 0 and second.chunks == 0
    assert (tmp_path / "s" / "models" / "tfidf").is_dir()  # the fitted model travels with the store


def test_changed_document_is_replaced_and_unchanged_chunks_come_from_the_cache(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", DOCS)
    small = IngestOptions(embedder="tfidf", chunk_size=12, chunk_overlap=0)
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=small, progress=False)
        more = "\n\n## More\n\nA new closing section on vector search and SQLite tables."
        (folder / "alpha.md").write_text(DOCS["alpha.md"] + more)
        report = ingest([str(folder)], store, options=small, progress=False)
        assert (report.documents_updated, report.documents_unchanged) == (1, 2)
        assert report.vectors_cached >= 1 and report.vectors_embedded >= 1
        doc = store.get_document("alpha.md")
        assert "closing section" in doc.raw_text
        assert doc.raw_text[doc.chunks[-1].start_char:doc.chunks[-1].end_char] == doc.chunks[-1].text
        assert store.verify()["models"]["tfidf"]["ids_equal"]


def test_only_new_and_changed_documents_are_chunked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow_rag.ingest as ingest_module

    chunked: list[str] = []
    real = ingest_module.chunk_records

    def counting(document, chunker):  # type: ignore[no-untyped-def]
        chunked.append(document.id)
        return real(document, chunker)

    monkeypatch.setattr(ingest_module, "chunk_records", counting)
    folder = write_docs(tmp_path / "docs", DOCS)
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
        assert sorted(chunked) == sorted(DOCS)
        chunked.clear()
        (folder / "alpha.md").write_text(DOCS["alpha.md"] + "\n\nOne more sentence.")
        report = ingest([str(folder)], store, options=TFIDF, progress=False)
        assert chunked == ["alpha.md"]
        assert (report.documents_updated, report.documents_unchanged) == (1, 2)
        assert "One more sentence" in store.get_document("alpha.md").chunks[-1].text
        chunked.clear()
        # A changed chunking setting changes every document: all are chunked again.
        options = IngestOptions(embedder="tfidf", chunk_size=40, chunk_overlap=0)
        report = ingest([str(folder)], store, options=options, progress=False)
        assert sorted(chunked) == sorted(DOCS) and report.documents_updated == 3


def test_a_bad_file_in_a_folder_is_reported_and_the_rest_land(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", DOCS)
    (folder / "broken.txt").write_bytes(b"\x00\x01binary\x00" * 50)
    (folder / "empty.txt").write_text("   ")
    with Store.open(tmp_path / "s", create=True) as store:
        report = ingest([str(folder)], store, options=TFIDF, progress=False)
        assert report.documents_new == 3
        assert report.documents_failed == 2
        reasons = " ".join(f.reason for f in report.failures)
        assert "broken.txt" in " ".join(f.source_path for f in report.failures)
        assert "no text" in reasons


def test_nothing_loadable_is_an_error_and_the_store_keeps_what_it_had(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", DOCS)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.txt").write_bytes(b"\x00" * 10)
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
        with pytest.raises(LoaderError, match="nothing to ingest"):
            ingest([str(bad)], store, options=TFIDF, progress=False)
        assert store.stats().documents == 3


def test_options_that_fit_no_source_are_refused(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", DOCS)
    with Store.open(tmp_path / "s", create=True) as store, pytest.raises(InvalidInput, match="id_column"):
        ingest([str(folder)], store, options=IngestOptions(embedder="tfidf",
                                                           loader_options={"id_column": "x"}),
               progress=False)


def test_markdown_chunker_records_section_titles(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", {"alpha.md": DOCS["alpha.md"]})
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=IngestOptions(embedder="tfidf", chunker="markdown"),
               progress=False)
        chunks = store.get_document("alpha.md").chunks
        assert [c.metadata.get("section_title") for c in chunks] == ["Alpha", "Details"]


def test_a_second_embedder_on_the_same_store_adds_only_vectors(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", DOCS)
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
        from tests.hash_embedder import HashEmbedder

        report = ingest([str(folder)], store, embedder=HashEmbedder(), progress=False)
        assert report.documents_unchanged == 3 and report.vectors_embedded == store.stats().chunks
        assert sorted(m.name for m in store.models()) == ["hash-test", "tfidf"]


# --------------------------------------------------------------------------- real data


def test_speakers_csv_hides_pii_and_chunks_by_field(shared_data: Path, tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", create=True) as store:
        report = ingest([str(shared_data / SPEAKERS)], store, options=TFIDF, progress=False)
        assert report.documents_new == 13 and report.chunks == 26
        doc = store.get_document(CODECONCISE)
        assert {c.chunk_type for c in doc.chunks} == {"Final abstract (Max. 150 words)",
                                                      "Bio (Max. 120 words)"}
        text = json.dumps([h.to_dict() for h in Searcher(store).search("speaker", k=26, mode="bm25")])
        assert "@" not in text  # no e-mail address reaches search output
        private = store.get_document(CODECONCISE, include_pii=True).metadata["_pii"]
        assert "@" in private["Mail adress"]


@pytest.mark.minilm
def test_cli_ingest_speakers_with_defaults_puts_codeconcise_first(shared_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    store = str(tmp_path / "S")
    result = runner.invoke(main, ["ingest", str(shared_data / SPEAKERS), "--store", store, "--no-track"])
    assert result.exit_code == 0, result.output
    assert "13 new" in result.output
    for mode in ("hybrid", "dense"):
        result = runner.invoke(main, ["search", "legacy modernization", "--store", store, "--json",
                                      "--mode", mode])
        assert result.exit_code == 0, result.output
        hits = json.loads(result.output)
        assert hits[0]["document_id"] == CODECONCISE
        assert "CodeConcise" in hits[0]["document_metadata"]["Final title"]
        assert set(hits[0]) == {"rank", "score", "chunk_id", "document_id", "chunk_type", "text",
                                "source_path", "document_metadata", "chunk_metadata"}
    again = runner.invoke(main, ["ingest", str(shared_data / SPEAKERS), "--store", store, "--no-track"])
    assert "0 embedded" in again.output and "13 unchanged" in again.output


def test_legacy_import_searches_by_stored_vector_without_reembedding(
    shared_data: Path, tmp_path: Path
) -> None:
    path = shared_data / "chatboti" / "embeddings-text-embedding-3-small.json"
    with Store.open(tmp_path / "s", create=True) as store:
        report = import_legacy(path, store, progress=False)
        assert report.documents_new == 13 and report.vectors_embedded == 0
        assert report.chunks == 26 and report.dimension == 1536
        legacy = read_legacy(path)
        for item in legacy.documents[:5]:
            hits = store.dense_search(item.vectors["bio"], k=1)
            assert hits[0].document_id == item.document.id
            assert hits[0].chunk_type == "bio"
        model = store.models()[0]
        assert (model.name, model.embedder) == ("text-embedding-3-small", "openai:text-embedding-3-small")
        again = import_legacy(path, store, progress=False)
        assert again.documents_unchanged == 13 and again.documents_new == 0


def test_cli_import_legacy_then_bm25_search(shared_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    path = shared_data / "chatboti" / "embeddings-amazon-titan-embed-text-v-2-0.json"
    result = runner.invoke(main, ["import-legacy", str(path), "--store", str(tmp_path / "s"),
                                  "--no-track"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["search", "legacy modernization", "--store", str(tmp_path / "s"),
                                  "--mode", "bm25", "--json"])
    assert json.loads(result.output)[0]["document_id"] == CODECONCISE
    result = runner.invoke(main, ["search", "legacy", "--store", str(tmp_path / "s"), "--mode", "dense"])
    assert result.exit_code == 1
    assert "no known embedder" in result.output and "Traceback" not in result.output


def test_scifact_corpus_slice_ingests_as_beir(shared_data: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "scifact"
    corpus.mkdir()
    lines = (shared_data / "scifact-train" / "corpus.jsonl").read_text().splitlines()[:200]
    (corpus / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with Store.open(tmp_path / "s", create=True) as store:
        report = ingest([str(corpus)], store, options=TFIDF, progress=False)
        assert report.documents_new == 200 and report.loader == "beir"
        first = json.loads(lines[0])
        doc = store.get_document(first["_id"])
        assert doc.chunks[0].text.startswith(first["title"][:20])  # title stays with its text
        assert np.isfinite(report.total_seconds)


def test_index_type_and_parameters_reach_the_store(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", DOCS)
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(folder), "--store", str(tmp_path / "s"), "--no-track",
                                  "--embedder", "tfidf", "--index-type", "hnsw",
                                  "--index-param", "ef_search=300", "--index-param", "M=16"])
    assert result.exit_code == 0, result.output
    with Store.open(tmp_path / "s", read_only=True) as store:
        model = store.models()[0]
    assert model.index_type == "hnsw" and model.index_params["ef_search"] == 300
    assert model.index_params["M"] == 16
    bad = runner.invoke(main, ["ingest", str(folder), "--store", str(tmp_path / "s"), "--no-track",
                               "--embedder", "tfidf", "--index-param", "M=16"])
    assert bad.exit_code == 1 and "need an index type" in bad.output


def test_chunk_tokenizer_sizes_chunks_whatever_the_embedder(tmp_path: Path) -> None:
    """The harness's tokenizer for all embedders of a store: chunks counted in it, and a bad
    value refused before anything is written."""
    import re

    def words(text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]

    words.name = "words-v1"  # type: ignore[attr-defined]
    folder = write_docs(tmp_path / "docs", DOCS)
    options = IngestOptions(embedder="tfidf", chunker="recursive", chunk_size=16, chunk_overlap=0)
    with Store.open(tmp_path / "s", create=True) as store:
        with pytest.raises(InvalidInput, match="chunk tokenizer 'words'"):
            ingest([str(folder)], store, options=options, chunk_tokenizer="words", progress=False)
        assert store.stats().documents == 0
        report = ingest([str(folder)], store, options=options, chunk_tokenizer=words,
                        progress=False)
        assert report.chunker["tokenizer"] == "words-v1"
        chunks = [c for d in DOCS for c in store.get_document(d).chunks]
        assert chunks and all(len(words(c.text)) <= 16 for c in chunks)
        assert {c.token_count for c in chunks} == {len(words(c.text)) for c in chunks}
