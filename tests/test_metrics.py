"""Ranking metrics and chunk-to-document rollup.

Expected values are written as the formulas (gain / log2(rank + 1), hits / R, ...), so a reader
can check them against the definitions in ``mlflow_rag.evaluation.metrics``. The library is
also cross-checked against ranx, on random graded runs and on a real TF-IDF run on SciFact.
"""

from __future__ import annotations

import json
import os
import time
from math import log2
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.evaluation.metrics import (
    DEFAULT_KS,
    METRICS,
    EvalResult,
    evaluate_run,
    metric_name,
)
from mlflow_rag.evaluation.rollup import rollup_to_documents

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MLFLOW_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))
SCIFACT = SHARED_DATA / "scifact-train"

# --------------------------------------------------------------------------- hand-computed

# One query, three relevant documents of grades 3, 2, 1, and an unjudged / a zero-grade doc.
QRELS = {"q": {"a": 3, "b": 2, "c": 0, "d": 1}}
RUN = {"q": ["x", "a", "c", "d", "b"]}  # relevant at ranks 2 (a=3), 4 (d=1), 5 (b=2)
R = 3


def score(run, qrels, metric: str, k: int) -> float:
    return evaluate_run(run, qrels, ks=(k,), metrics=(metric,)).aggregate[f"{metric}_at_{k}"]


def test_ndcg_uses_grade_as_gain_and_ideal_order_from_qrels():
    ideal = [3 / log2(2), 2 / log2(3), 1 / log2(4)]  # grades sorted descending
    assert score(RUN, QRELS, "ndcg", 1) == 0.0
    assert score(RUN, QRELS, "ndcg", 3) == pytest.approx((3 / log2(3)) / sum(ideal))
    dcg5 = 3 / log2(3) + 1 / log2(5) + 2 / log2(6)
    assert score(RUN, QRELS, "ndcg", 5) == pytest.approx(dcg5 / sum(ideal))
    # Beyond the run's length nothing is added, but the ideal list is already complete.
    assert score(RUN, QRELS, "ndcg", 10) == pytest.approx(dcg5 / sum(ideal))


def test_recall_divides_hits_by_number_of_relevant_documents():
    assert score(RUN, QRELS, "recall", 1) == 0.0
    assert score(RUN, QRELS, "recall", 3) == pytest.approx(1 / R)
    assert score(RUN, QRELS, "recall", 4) == pytest.approx(2 / R)
    assert score(RUN, QRELS, "recall", 5) == pytest.approx(3 / R)


def test_precision_divides_by_k_even_past_the_end_of_the_run():
    assert score(RUN, QRELS, "precision", 1) == 0.0
    assert score(RUN, QRELS, "precision", 3) == pytest.approx(1 / 3)
    assert score(RUN, QRELS, "precision", 5) == pytest.approx(3 / 5)
    assert score(RUN, QRELS, "precision", 10) == pytest.approx(3 / 10)


def test_mrr_is_reciprocal_rank_of_first_relevant_within_k():
    assert score(RUN, QRELS, "mrr", 1) == 0.0
    assert score(RUN, QRELS, "mrr", 2) == pytest.approx(1 / 2)
    assert score(RUN, QRELS, "mrr", 10) == pytest.approx(1 / 2)


def test_map_sums_precision_at_relevant_ranks_and_divides_by_all_relevant():
    p2, p4, p5 = 1 / 2, 2 / 4, 3 / 5  # precision at the ranks of a, d, b
    assert score(RUN, QRELS, "map", 1) == 0.0
    assert score(RUN, QRELS, "map", 3) == pytest.approx(p2 / R)  # / R, not / min(R, k)
    assert score(RUN, QRELS, "map", 4) == pytest.approx((p2 + p4) / R)
    assert score(RUN, QRELS, "map", 5) == pytest.approx((p2 + p4 + p5) / R)


def test_hit_rate_is_one_when_any_relevant_document_is_in_top_k():
    assert score(RUN, QRELS, "hit_rate", 1) == 0.0
    assert score(RUN, QRELS, "hit_rate", 2) == 1.0


def test_aggregate_is_mean_over_queries_and_per_query_keeps_each_score():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": ["a"], "q2": ["x", "b"]}
    result = evaluate_run(run, qrels, ks=(1, 2), metrics=("mrr",))
    assert result.per_query == {
        "q1": {"mrr_at_1": 1.0, "mrr_at_2": 1.0},
        "q2": {"mrr_at_1": 0.0, "mrr_at_2": 0.5},
    }
    assert result.aggregate == {"mrr_at_1": (1.0 + 0.0) / 2, "mrr_at_2": (1.0 + 0.5) / 2}
    assert result.n_queries == 2


def test_aggregate_names_follow_mlflow_convention():
    result = evaluate_run(RUN, QRELS)
    assert set(result.aggregate) == {f"{m}_at_{k}" for m in METRICS for k in DEFAULT_KS}
    expected = ["ndcg_at_10", "recall_at_100", "precision_at_5", "mrr_at_10", "map_at_10"]
    assert {*expected, "hit_rate_at_10"} <= set(result.aggregate)
    assert metric_name("ndcg", 10) == "ndcg_at_10"
    assert metric_name("hit_rate", 3) == "hit_rate_at_3"


# --------------------------------------------------------------------------- duplicates


def test_duplicate_retrieved_ids_are_dropped_keeping_the_first_occurrence():
    qrels = {"q": {"a": 1, "b": 1, "c": 1}}
    with_duplicates = evaluate_run({"q": ["a", "a", "x", "b", "a"]}, qrels, ks=(2, 3))
    deduplicated = evaluate_run({"q": ["a", "x", "b"]}, qrels, ks=(2, 3))
    assert with_duplicates.per_query == deduplicated.per_query
    # Counted twice, "a" would give precision@2 = 1 and recall@2 = 2/3.
    assert with_duplicates.aggregate["precision_at_2"] == pytest.approx(1 / 2)
    assert with_duplicates.aggregate["recall_at_2"] == pytest.approx(1 / 3)
    assert with_duplicates.aggregate["ndcg_at_2"] == pytest.approx(1 / (1 + 1 / log2(3)))


def test_repeating_the_only_relevant_document_cannot_push_recall_above_one():
    result = evaluate_run({"q": ["a", "a", "a"]}, {"q": {"a": 1}}, ks=(3,))
    assert result.aggregate["recall_at_3"] == 1.0
    assert result.aggregate["precision_at_3"] == pytest.approx(1 / 3)
    assert result.aggregate["map_at_3"] == 1.0


def test_duplicates_are_removed_before_the_cutoff_so_later_documents_move_up():
    result = evaluate_run({"q": ["a", "a", "b"]}, {"q": {"a": 1, "b": 1}}, ks=(2,))
    assert result.aggregate["recall_at_2"] == 1.0


# --------------------------------------------------------------------------- run shapes


def test_scored_mapping_is_ranked_by_descending_score():
    qrels = {"q": {"b": 1}}
    run = {"q": {"a": 0.1, "b": 0.9, "c": 0.5}}
    assert score(run, qrels, "mrr", 3) == 1.0


def test_scored_pairs_are_taken_in_the_given_order():
    qrels = {"q": {"b": 1}}
    run = {"q": [("a", 0.1), ("b", 0.9)]}  # a ranked list; the scores do not re-rank it
    assert score(run, qrels, "mrr", 3) == pytest.approx(1 / 2)


def test_queries_without_relevant_documents_are_skipped_and_reported():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {}}
    result = evaluate_run({"q1": ["a"], "q2": ["b"]}, qrels, ks=(1,))
    assert result.n_queries == 1
    assert set(result.per_query) == {"q1"}
    assert result.skipped_queries == ("q2", "q3")
    assert result.aggregate["ndcg_at_1"] == 1.0


def test_queries_missing_from_run_score_zero_and_count_in_the_mean():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    result = evaluate_run({"q1": ["a"], "other": ["b"]}, qrels, ks=(1,))
    assert result.missing_queries == ("q2",)
    assert all(v == 0.0 for v in result.per_query["q2"].values())
    assert result.aggregate["hit_rate_at_1"] == 0.5


def test_negative_grades_are_not_relevant():
    assert score({"q": ["a", "b"]}, {"q": {"a": -1, "b": 2}}, "mrr", 2) == pytest.approx(1 / 2)


# --------------------------------------------------------------------------- validation


def test_unknown_metric_names_the_choices():
    with pytest.raises(UnknownChoice) as info:
        evaluate_run(RUN, QRELS, metrics=("ndcg", "ndgc"))
    assert "ndgc" in str(info.value) and "hit_rate" in str(info.value)
    with pytest.raises(UnknownChoice):
        metric_name("f1", 10)


@pytest.mark.parametrize("bad_k", [0, -1, True, 2.5, "10"])
def test_k_must_be_a_positive_integer(bad_k):
    with pytest.raises(InvalidInput, match="k must be an integer >= 1"):
        evaluate_run(RUN, QRELS, ks=(bad_k,))
    with pytest.raises(InvalidInput):
        metric_name("ndcg", bad_k)


def test_empty_ks_or_metrics_are_refused():
    with pytest.raises(InvalidInput):
        evaluate_run(RUN, QRELS, ks=())
    with pytest.raises(InvalidInput):
        evaluate_run(RUN, QRELS, metrics=())


def test_a_single_metric_name_is_not_iterated_as_characters():
    result = evaluate_run(RUN, QRELS, ks=(5,), metrics="ndcg")
    assert list(result.aggregate) == ["ndcg_at_5"]


def test_string_run_entry_is_refused():
    with pytest.raises(InvalidInput, match="string"):
        evaluate_run({"q": "abc"}, {"q": {"a": 1}})


def test_qrels_without_any_relevant_document_are_refused():
    with pytest.raises(InvalidInput, match="no query with a relevant document"):
        evaluate_run({"q": ["a"]}, {"q": {"a": 0}})


# --------------------------------------------------------------------------- properties

DOCS = [f"d{i}" for i in range(12)]


@st.composite
def run_and_qrels(draw):
    n_queries = draw(st.integers(1, 4))
    qrels, run = {}, {}
    for q in range(n_queries):
        judged = draw(st.dictionaries(st.sampled_from(DOCS), st.integers(-1, 3), max_size=8))
        judged[draw(st.sampled_from(DOCS))] = draw(st.integers(1, 3))  # >= 1 relevant
        qrels[f"q{q}"] = judged
        run[f"q{q}"] = draw(st.lists(st.sampled_from([*DOCS, "x", "y"]), max_size=20))
    ks = tuple(draw(st.lists(st.integers(1, 15), min_size=1, max_size=4)))
    return run, qrels, ks


@settings(max_examples=150, deadline=None)
@given(run_and_qrels())
def test_every_metric_lies_in_unit_interval(case):
    run, qrels, ks = case
    result = evaluate_run(run, qrels, ks=ks)
    values = [v for row in result.per_query.values() for v in row.values()]
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values)


@settings(max_examples=100, deadline=None)
@given(run_and_qrels())
def test_perfect_ranking_scores_one(case):
    _, qrels, ks = case
    perfect = {q: sorted(j, key=lambda d: -j[d]) for q, j in qrels.items()}
    result = evaluate_run(perfect, qrels, ks=ks)
    for q, row in result.per_query.items():
        n_rel = sum(g > 0 for g in qrels[q].values())
        for k in ks:
            for m in ("ndcg", "mrr", "hit_rate"):
                assert row[f"{m}_at_{k}"] == pytest.approx(1.0)
            # map@k and recall@k divide by R, so only a cutoff that fits every relevant doc
            # can reach 1 (trec_eval's map_cut and ranx do the same).
            expected = min(n_rel, k) / n_rel
            assert row[f"map_at_{k}"] == pytest.approx(expected)
            assert row[f"recall_at_{k}"] == pytest.approx(expected)


@settings(max_examples=100, deadline=None)
@given(run_and_qrels(), st.data())
def test_inserting_repeats_of_already_ranked_ids_changes_nothing(case, data):
    run, qrels, ks = case
    noisy = {}
    for q, ids in run.items():
        noisy_ids = list(ids)
        for _ in range(data.draw(st.integers(0, 5))):
            if noisy_ids:
                pos = data.draw(st.integers(1, len(noisy_ids)))
                noisy_ids.insert(pos, data.draw(st.sampled_from(noisy_ids[:pos])))
        noisy[q] = noisy_ids
    assert evaluate_run(noisy, qrels, ks=ks).per_query == evaluate_run(run, qrels, ks=ks).per_query


@settings(max_examples=100, deadline=None)
@given(run_and_qrels())
def test_recall_and_hit_rate_never_decrease_with_k(case):
    run, qrels, _ = case
    ks = tuple(range(1, 16))
    result = evaluate_run(run, qrels, ks=ks, metrics=("recall", "hit_rate"))
    for row in result.per_query.values():
        for m in ("recall", "hit_rate"):
            series = [row[f"{m}_at_{k}"] for k in ks]
            assert series == sorted(series)


def test_scores_800_queries_of_100_hits_well_under_a_second():
    rng = np.random.default_rng(0)
    qrels = {
        f"q{i}": {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(5000, 3, replace=False)}
        for i in range(800)
    }
    run = {q: [f"d{j}" for j in rng.choice(5000, 100, replace=False)] for q in qrels}
    start = time.perf_counter()
    evaluate_run(run, qrels)
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------- ranx cross-check


def ranx_scores(run: dict[str, list[str]], qrels, ks) -> dict[str, float]:
    """ranx's means, named like ours. The run gets strictly decreasing scores so that ranx
    ranks exactly as the list does (ranx re-sorts by score and would reorder ties)."""
    ranx = pytest.importorskip("ranx")
    ranx_run = ranx.Run(
        {
            q: {d: float(len(ids) - i) for i, d in enumerate(dict.fromkeys(ids))}
            for q, ids in run.items()
            if ids
        }
    )
    ranx_qrels = ranx.Qrels({q: dict(j) for q, j in qrels.items()})
    # ranx names the six metrics as we do: "ndcg@10" is our "ndcg_at_10".
    names = [f"{m}@{k}" for m in METRICS for k in ks]
    means = ranx.evaluate(ranx_qrels, ranx_run, names, make_comparable=True)
    return {f"{m}_at_{k}": float(means[f"{m}@{k}"]) for m in METRICS for k in ks}


@pytest.mark.filterwarnings("ignore:unsafe cast")
@pytest.mark.parametrize("seed", range(5))
def test_matches_ranx_on_random_runs_with_graded_qrels(seed):
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(80)]
    qrels, run = {}, {}
    for q in range(40):
        judged = {docs[j]: int(rng.integers(0, 4)) for j in rng.choice(80, 10, replace=False)}
        judged[docs[int(rng.integers(80))]] = int(rng.integers(1, 4))  # every query judged
        qrels[f"q{q}"] = judged
        if rng.random() < 0.9:  # some queries missing from the run: both score 0
            run[f"q{q}"] = [docs[j] for j in rng.permutation(80)[: int(rng.integers(1, 60))]]
    ks = (1, 3, 5, 10, 50)
    ours = evaluate_run(run, qrels, ks=ks).aggregate
    theirs = ranx_scores(run, qrels, ks)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-9), name


def tfidf_run_on_scifact(top: int = 100) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    """A real run: TF-IDF cosine over SciFact abstracts, every training query, top ``top``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from mlflow_rag.evaluation.datasets import load_beir_folder

    dataset = load_beir_folder(SCIFACT, split="train")
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f if line.strip()]
    doc_ids = [d["_id"] for d in corpus]
    vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english")
    doc_matrix = vectorizer.fit_transform(f"{d['title']} {d['text']}" for d in corpus)
    qids = list(dataset.queries)
    sims = (vectorizer.transform(dataset.queries[q] for q in qids) @ doc_matrix.T).toarray()
    # Rank by score, ties by corpus position: deterministic.
    order = np.lexsort((np.broadcast_to(np.arange(len(doc_ids)), sims.shape), -sims), axis=1)
    run = {q: [doc_ids[j] for j in order[i, :top]] for i, q in enumerate(qids)}
    return run, dataset.qrels


@pytest.mark.filterwarnings("ignore:unsafe cast")
def test_matches_ranx_on_a_real_tfidf_run_on_scifact():
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT} (set MLFLOW_RAG_SHARED_DATA)")
    run, qrels = tfidf_run_on_scifact()
    ks = (1, 5, 10, 100)
    ours = evaluate_run(run, qrels, ks=ks)
    theirs = ranx_scores(run, qrels, ks)
    assert ours.n_queries == 809
    for name, value in ours.aggregate.items():
        assert value == pytest.approx(theirs[name], abs=1e-6), name
    # A sanity band, not a benchmark: published BM25 nDCG@10 on SciFact is about 0.67.
    assert 0.45 < ours.aggregate["ndcg_at_10"] < 0.75


def test_eval_result_is_frozen():
    result = evaluate_run(RUN, QRELS, ks=(1,))
    assert isinstance(result, EvalResult)
    with pytest.raises(AttributeError):
        result.n_queries = 2  # type: ignore[misc]


# --------------------------------------------------------------------------- rollup


def test_rollup_keeps_each_documents_best_chunk_in_rank_order():
    hits = [("a", 0.9), ("b", 0.8), ("a", 0.7), ("c", 0.6), ("b", 0.5)]
    assert rollup_to_documents(hits) == [("a", 0.9), ("b", 0.8), ("c", 0.6)]


def test_rollup_trusts_rank_order_not_score_direction():
    # Distances: lower is better, and the input is already ranked best first.
    hits = [("a", 0.1), ("b", 0.2), ("a", 0.3)]
    assert rollup_to_documents(hits) == [("a", 0.1), ("b", 0.2)]


def test_rollup_stops_after_limit_documents():
    hits = [("a", 3.0), ("a", 2.9), ("b", 2.0), ("c", 1.0)]
    assert rollup_to_documents(hits, limit=2) == [("a", 3.0), ("b", 2.0)]
    assert rollup_to_documents([]) == []
    with pytest.raises(InvalidInput):
        rollup_to_documents(hits, limit=0)


def test_rolled_up_run_scores_like_a_document_run():
    chunk_hits = [("a", 0.9), ("a", 0.8), ("b", 0.7)]
    documents = [doc for doc, _ in rollup_to_documents(chunk_hits)]
    qrels = {"q": {"a": 1, "b": 1}}
    assert evaluate_run({"q": documents}, qrels, ks=(2,)).aggregate["recall_at_2"] == 1.0
