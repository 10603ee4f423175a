"""The evaluation harness on a tiny BEIR corpus: one ingestion per chunking, metrics per variant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.datasets import load_beir_folder, load_questions_file
from mlflow_rag.evaluation.harness import (
    HarnessOptions,
    candidate_depth,
    chunk_tokenizer,
    run_grid,
    store_dir_name,
)
from mlflow_rag.evaluation.variants import Chunking, parse_grid
from mlflow_rag.store.store import Store

# Six topics, three documents each; every query is about one topic and judges its documents.
TOPICS = {
    "tea": ["green tea brewed below boiling water", "matcha sencha japanese green tea catechins",
            "oolong tea leaves oxidised partially"],
    "bikes": ["bicycle tyre puncture repair patch levers", "derailleur chain shifting gears bicycle",
              "bicycle brake pads cable adjustment"],
    "bees": ["honey bees wax comb winter stores", "beekeeper hive inspection queen brood",
             "bee swarm colony splits in spring"],
    "volcano": ["basaltic lava shield volcano hawaii", "explosive eruption ash cloud air traffic",
                "magma chamber pressure volcano eruption"],
    "chess": ["sicilian defence king pawn opening", "castling king safety rooks connected",
              "chess endgame king and pawn opposition"],
    "cobol": ["cobol mainframe migration java services", "legacy modernization business rules mainframe",
              "batch jobs jcl mainframe cobol programs"],
}
QUERIES = {
    "q-tea": "how to brew green tea",
    "q-bikes": "repair a bicycle tyre and chain",
    "q-bees": "beekeeper inspects the honey bee hive",
    "q-volcano": "volcano eruption lava and ash",
    "q-chess": "chess opening and king safety",
    "q-cobol": "migrate cobol mainframe programs",
}


def write_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as corpus:
        for topic, texts in TOPICS.items():
            for i, text in enumerate(texts):
                corpus.write(json.dumps({"_id": f"{topic}-{i}", "title": topic.title(),
                                         "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as queries:
        for qid, text in QUERIES.items():
            queries.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w", encoding="utf-8") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for qid in QUERIES:
            topic = qid[2:]
            for i in range(len(TOPICS[topic])):
                qrels.write(f"{qid}\t{topic}-{i}\t1\n")
    return folder


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tiny")


def small_grid(**grid: Any) -> Any:
    axes = {"embedder": "tfidf", "mode": ["bm25", "dense", "hybrid"], "k": 5, "chunk_size": 64}
    axes.update(grid)
    return parse_grid({"name": "t", "ks": [1, 3, 5], "metric": "ndcg_at_5", "grid": axes})


def test_every_variant_gets_ranking_latency_and_cost_metrics(beir: Path, tmp_path: Path) -> None:
    dataset = load_beir_folder(beir)
    result = run_grid(small_grid(), dataset,
                      options=HarnessOptions(work_dir=tmp_path / "work", progress=False))
    assert [r.variant.label for r in result.results] == ["bm25", "dense-tfidf", "hybrid-tfidf"]
    for r in result.results:
        for name in ("ndcg_at_5", "recall_at_5", "precision_at_5", "mrr_at_5", "map_at_5",
                     "hit_rate_at_1", "latency_p50_ms", "latency_p95_ms", "ingest_seconds",
                     "index_bytes"):
            assert name in r.metrics, (r.variant.label, name)
        assert r.metrics["queries_evaluated"] == len(QUERIES)
        assert r.metrics["index_bytes"] > 0
        assert len(r.per_query) == len(QUERIES)
    bm25 = result.results[0]
    assert bm25.metrics["hit_rate_at_1"] == 1.0  # each query names its topic's words
    row = next(q for q in bm25.per_query if q.query_id == "q-tea")
    assert set(row.relevant_ids) == {"tea-0", "tea-1", "tea-2"}
    assert row.retrieved_ids[0].startswith("tea-") and row.first_relevant_rank == 1


def test_variants_sharing_chunking_reuse_one_ingestion_and_embed_once(beir: Path, tmp_path: Path) -> None:
    dataset = load_beir_folder(beir)
    grid = small_grid(index_type=["flat", "hnsw"], k=[5, 10])  # bm25 x 2 k + 2 modes x 2 x 2
    result = run_grid(grid, dataset, options=HarnessOptions(work_dir=tmp_path / "w", progress=False))
    assert len(result.results) == 2 + 8
    assert len(result.ingests) == 1  # one chunking x one embedder
    (ingest,) = result.ingests
    assert ingest.report is not None
    chunks = ingest.report.chunks
    assert ingest.report.vectors_embedded == chunks == 18  # every document is one chunk here
    assert result.queries_embedded == {k: len(QUERIES) for k in result.queries_embedded}
    assert len(result.queries_embedded) == 1  # one embedding space: queries embedded once
    assert len({r.store_path for r in result.results}) == 1

    again = run_grid(grid, dataset, options=HarnessOptions(work_dir=tmp_path / "w", progress=False))
    (reused,) = again.ingests
    assert reused.report is not None
    assert reused.report.vectors_embedded == 0 and reused.report.documents_unchanged == 18
    assert [r.metrics["ndcg_at_5"] for r in again.results] == [
        r.metrics["ndcg_at_5"] for r in result.results
    ]


def test_a_subset_of_the_queries_reuses_the_corpus_stores(beir: Path, tmp_path: Path) -> None:
    # Stores depend on the corpus only: --max-queries (another dataset digest) embeds nothing.
    grid = small_grid(mode="dense")
    options = HarnessOptions(work_dir=tmp_path / "w", progress=False)
    full = run_grid(grid, load_beir_folder(beir), options=options)
    subset = load_beir_folder(beir, max_queries=1)
    assert subset.digest != full.dataset.digest
    again = run_grid(grid, subset, options=options)
    (reused,) = again.ingests
    assert reused.report is not None and reused.report.vectors_embedded == 0
    assert {r.store_path for r in again.results} == {r.store_path for r in full.results}
    # another corpus (one abstract changed) never shares them
    corpus = beir / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace("tea", "tee", 1))
    other = run_grid(grid, load_beir_folder(beir), options=options)
    assert {r.store_path for r in other.results}.isdisjoint(r.store_path for r in full.results)


def test_each_chunking_gets_its_own_store(beir: Path, tmp_path: Path) -> None:
    dataset = load_beir_folder(beir)
    grid = small_grid(chunk_size=[32, 64], mode=["bm25", "dense"])
    result = run_grid(grid, dataset, options=HarnessOptions(work_dir=tmp_path / "w", progress=False))
    # One store per chunking; bm25 and dense of one chunking read the same store.
    assert len({r.store_path for r in result.results}) == 2
    assert len(result.ingests) == 2
    for r in result.results:
        with Store.open(r.store_path, read_only=True) as store:
            assert [m.name for m in store.models()] == ["tfidf"]


@pytest.mark.minilm
def test_two_embedders_share_one_store_chunked_once(beir: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    dataset = load_beir_folder(beir)
    grid = small_grid(embedder=["minilm", "tfidf"], mode=["dense"])
    result = run_grid(grid, dataset, options=HarnessOptions(work_dir=tmp_path / "w", progress=False))
    assert len({r.store_path for r in result.results}) == 1
    assert result.results[0].store_path.name == "recursive-64-8-minilm"  # chunked in MiniLM tokens
    first, second = result.ingests
    assert (first.embedder, second.embedder) == ("minilm", "tfidf")
    assert first.report is not None and second.report is not None
    # The second embedder found the chunks written by the first unchanged and only added vectors.
    assert second.report.documents_unchanged == 18 and second.report.documents_new == 0
    assert first.report.vectors_embedded == second.report.vectors_embedded == 18
    with Store.open(result.results[0].store_path, read_only=True) as store:
        assert sorted((m.name, m.vector_count) for m in store.models()) == [
            ("minilm", 18), ("tfidf", 18)
        ]
    assert len(result.queries_embedded) == 2
    assert all(r.metrics["ndcg_at_5"] > 0.5 for r in result.results)


def test_bm25_only_grid_writes_chunks_without_any_embedder(beir: Path, tmp_path: Path) -> None:
    dataset = load_beir_folder(beir)
    result = run_grid(small_grid(mode="bm25"), dataset,
                      options=HarnessOptions(work_dir=tmp_path / "w", progress=False))
    (ingest,) = result.ingests
    assert ingest.embedder is None and ingest.report is None
    with Store.open(result.results[0].store_path, read_only=True) as store:
        stats = store.stats()
    assert stats.documents == 18 and stats.embeddings == 0
    assert result.results[0].metrics["ndcg_at_5"] > 0.5


def test_questions_file_evaluates_against_the_given_corpus(beir: Path, tmp_path: Path) -> None:
    questions = tmp_path / "questions.csv"
    questions.write_text("query,relevant_ids\nhow to brew green tea,tea-0|tea-1|tea-2\n",
                         encoding="utf-8")
    dataset = load_questions_file(questions)
    with pytest.raises(InvalidInput, match="--corpus"):
        run_grid(small_grid(mode="bm25"), dataset,
                 options=HarnessOptions(work_dir=tmp_path / "w", progress=False))
    result = run_grid(small_grid(mode="bm25"), dataset,
                      options=HarnessOptions(work_dir=tmp_path / "w", progress=False,
                                             sources=(str(beir),)))
    assert result.results[0].metrics["hit_rate_at_1"] == 1.0


def test_best_variant_is_the_highest_on_the_metric(beir: Path, tmp_path: Path) -> None:
    dataset = load_beir_folder(beir)
    result = run_grid(small_grid(), dataset,
                      options=HarnessOptions(work_dir=tmp_path / "w", progress=False))
    best = result.best("ndcg_at_5")
    assert best.metrics["ndcg_at_5"] == max(r.metrics["ndcg_at_5"] for r in result.results)
    with pytest.raises(InvalidInput):
        result.best("ndcg_at_1000")


@pytest.mark.parametrize(
    ("embedders", "tokenizer"),
    [((), None), (("tfidf",), None), (("minilm", "tfidf"), "minilm"), (("openai:x",), None),
     # every MiniLM backend reads the same word pieces: its stores are cut by them too
     (("minilm:onnx-int8", "tfidf"), "minilm"), (("minilm:onnx",), "minilm")],
)
def test_chunks_are_sized_by_minilm_tokens_when_minilm_shares_the_store(
    embedders: tuple[str, ...], tokenizer: str | None
) -> None:
    assert chunk_tokenizer(embedders) == tokenizer


def test_store_directories_name_chunking_and_tokenizer() -> None:
    assert store_dir_name(Chunking("recursive", 256, 32), "minilm") == "recursive-256-32-minilm"
    assert store_dir_name(Chunking("fields", None, None), None) == "fields-approx"


@pytest.mark.parametrize(("k", "factor", "depth"), [(10, 3, 30), (100, 3, 300), (5000, 3, 10_000)])
def test_candidate_depth_retrieves_more_chunks_than_documents_needed(k: int, factor: int, depth: int) -> None:
    assert candidate_depth(k, factor) == depth


@pytest.mark.parametrize("fusion", ["rrf", "convex-zscore"])
def test_hybrid_variants_rank_as_hybrid_search_does(beir: Path, tmp_path: Path, fusion: str) -> None:
    from mlflow_rag.evaluation.rollup import rollup_to_documents
    from mlflow_rag.search import Searcher

    dataset = load_beir_folder(beir)
    grid = small_grid(mode="hybrid", fusion=fusion)
    (result,) = run_grid(grid, dataset,
                         options=HarnessOptions(work_dir=tmp_path / "w", progress=False)).results
    depth = candidate_depth(5, grid.candidate_factor)
    with Store.open(result.store_path, read_only=True) as store:
        searcher = Searcher(store, model="tfidf")
        for row in result.per_query:
            vector = searcher.embed_query(row.query)
            hits = searcher.hybrid(row.query, vector, k=depth, candidates=depth, fusion=fusion)
            expected = rollup_to_documents([(h.document_id, h.score) for h in hits], limit=5)
            assert list(row.retrieved_ids) == [doc for doc, _ in expected][: len(row.retrieved_ids)]


def test_bm25_only_store_is_written_as_ingest_writes_it(tmp_path: Path) -> None:
    """write_chunks_only goes through ingest's write stage: a later ingest with an embedder
    finds every document unchanged and only adds vectors; a re-run writes nothing."""
    from mlflow_rag.evaluation.harness import write_chunks_only
    from mlflow_rag.ingest import IngestOptions, ingest

    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in {"a.txt": "tea grows on hills in Assam", "b.txt": "coffee is roasted"}.items():
        (folder / name).write_text(text)
    chunking = Chunking("recursive", 64, 8)
    with Store.open(tmp_path / "s", create=True) as store:
        written, failures = write_chunks_only(store, chunking, [str(folder)], progress=False)
        assert (written, failures) == (2, [])
        assert write_chunks_only(store, chunking, [str(folder)], progress=False)[0] == 0
        report = ingest([str(folder)], store, progress=False, options=IngestOptions(
            embedder="tfidf", chunker="recursive", chunk_size=64, chunk_overlap=8))
        stored = sum(len(store.get_document(d).chunks) for d in ("a.txt", "b.txt"))
        assert (report.documents_unchanged, report.chunks, report.vectors_embedded) == (2, 0, stored)
