"""Pseudo-relevance feedback: RM3 expansion terms, the Rocchio move, the grid's vocabulary,
and feedback variants in the harness on the tiny BEIR corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.evaluation.cross_validation import assign_folds, cross_validate
from mlflow_rag.evaluation.datasets import load_beir_folder
from mlflow_rag.evaluation.harness import HarnessOptions, run_grid
from mlflow_rag.evaluation.variants import parse_grid
from mlflow_rag.relevance_feedback import check_feedback, expansion_terms, rocchio
from tests.test_harness import write_beir


def test_expansion_terms_favour_words_of_the_top_chunks_and_skip_stop_words() -> None:
    texts = ["the honey bees store honey in the comb", "bees swarm in spring", "tea leaves"]
    terms = expansion_terms(texts, [9.0, 5.0, 1.0], terms=3)
    assert terms[0] == "honey" and "bees" in terms
    assert not {"the", "in"} & set(terms)  # stop words and short words carry no topic
    assert expansion_terms([], [], terms=5) == []
    with pytest.raises(InvalidInput, match="2 feedback texts for 1 scores"):
        expansion_terms(["a", "b"], [1.0], terms=2)


def test_rocchio_moves_the_query_towards_the_feedback_and_stays_unit_length() -> None:
    query = np.array([1.0, 0.0], dtype=np.float32)
    moved = rocchio(query, np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32))
    assert moved.dtype == np.float32 and np.isclose(np.linalg.norm(moved), 1.0)
    assert moved[1] > 0.5
    assert rocchio(query, np.empty((0, 2), dtype=np.float32)) is query


def test_feedback_is_a_vocabulary_with_one_line_errors() -> None:
    with pytest.raises(UnknownChoice, match=r"Unknown feedback 'prf'; choose from \['none', "
                                            r"'rm3', 'rm3-rocchio', 'rocchio'\]"):
        check_feedback("prf")
    with pytest.raises(UnknownChoice, match="Unknown feedback 'prf'"):
        parse_grid({"grid": {"mode": "hybrid", "feedback": "prf"}})
    with pytest.raises(InvalidInput, match="feedback_docs must be a positive integer, got 0"):
        parse_grid({"grid": {"mode": "hybrid", "feedback": "rm3", "feedback_docs": 0}})
    with pytest.raises(InvalidInput, match=r"fusion_weight .* between 0 and 1, e.g. 0.5, got 1.5"):
        parse_grid({"grid": {"mode": "hybrid", "fusion_weight": 1.5}})
    with pytest.raises(InvalidInput, match=r"cv_folds must be 0 .* got 1"):
        parse_grid({"grid": {"mode": "bm25"}, "cv_folds": 1})


def test_feedback_axes_apply_only_where_a_list_takes_them() -> None:
    grid = parse_grid({"grid": {"embedder": "tfidf", "mode": ["bm25", "dense", "hybrid"],
                                "feedback": "rm3-rocchio", "feedback_terms": 5}})
    by_mode = {v.mode: v for v in grid.variants}
    assert by_mode["bm25"].feedback == "rm3" and by_mode["bm25"].feedback_terms == 5
    assert by_mode["dense"].feedback == "rocchio" and by_mode["dense"].feedback_terms is None
    assert by_mode["hybrid"].feedback == "rm3-rocchio" and by_mode["hybrid"].fusion_weight == 0.5
    plain = parse_grid({"grid": {"embedder": "tfidf", "mode": ["bm25", "dense"],
                                 "feedback": ["none", "rocchio"], "fusion_weight": [0.3, 0.5]}})
    # bm25 has no dense list to move: its rocchio is plain bm25, a duplicate dropped
    assert [v.label for v in plain.variants] == ["bm25/none", "dense-tfidf/none",
                                                 "dense-tfidf/rocchio"]
    assert all(v.fusion_weight is None for v in plain.variants)


def test_cross_validation_chooses_on_the_other_folds() -> None:
    ids = [f"q{i}" for i in range(10)]
    folds = assign_folds(ids, 5)
    assert sorted(folds.values()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert assign_folds(list(reversed(ids)), 5) == folds  # by id, not by order
    good = {q: 1.0 for q in ids}
    cv = cross_validate({"bad": {q: 0.0 for q in ids}, "good": good}, folds=5, metric="m")
    assert cv.mean == 1.0 and {f.chosen for f in cv.folds} == {"good"}
    # Chosen on the other folds, scored on the held-out one: where "lucky" fails (fold 0), it
    # is still chosen (it won elsewhere), and the estimate pays for it.
    lucky = {q: (1.0 if folds[q] != 0 else 0.0) for q in ids}
    cv = cross_validate({"steady": {q: 0.6 for q in ids}, "lucky": lucky}, folds=5, metric="m")
    assert cv.folds[0].chosen == "lucky" and cv.folds[0].test_mean == 0.0
    assert cv.mean == pytest.approx((0.0 * 2 + 1.0 * 8) / 10)
    with pytest.raises(InvalidInput, match="too few for 5 folds"):
        cross_validate({"a": {"q1": 1.0}}, folds=5, metric="m")


def test_feedback_variants_run_in_the_harness(tmp_path: Path) -> None:
    beir = write_beir(tmp_path / "tiny")
    grid = parse_grid({"ks": [1, 3, 5], "metric": "ndcg_at_5", "cv_folds": 2, "grid": {
        "embedder": "tfidf", "chunk_size": 64, "mode": ["bm25", "hybrid"], "k": 5,
        "feedback": ["none", "rm3-rocchio"], "feedback_docs": 2, "feedback_terms": 3}})
    result = run_grid(grid, load_beir_folder(beir), options=HarnessOptions(
        work_dir=tmp_path / "work", progress=False))
    by_label = {r.variant.label: r for r in result.results}
    assert set(by_label) == {"bm25/none", "bm25/rm3", "hybrid-tfidf/none",
                             "hybrid-tfidf/rm3-rocchio"}
    for r in result.results:
        assert 0.0 <= r.metrics["ndcg_at_5"] <= 1.0 and r.metrics["latency_p50_ms"] > 0
    # the second pass costs a search more than the plain variant's first pass
    assert (by_label["bm25/rm3"].metrics["latency_mean_ms"]
            > by_label["bm25/none"].metrics["latency_mean_ms"])
