"""Paired significance tests between variants: the tests themselves (checked against ranx) and
the comparison table of a small grid where one variant is clearly better and one is a copy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.eval_tracking import comparison_rows, format_comparison, significance_json
from mlflow_rag.evaluation.harness_types import EvaluationResult, QueryResult, VariantResult
from mlflow_rag.evaluation.significance import compare_to, paired_p_value
from mlflow_rag.evaluation.variants import parse_grid

RNG = np.random.default_rng(7)
BASE = RNG.random(300)


def test_identical_scores_are_not_significant() -> None:
    for test in ("randomization", "t-test"):
        assert paired_p_value(BASE, BASE.copy(), test=test) == 1.0


def test_a_clear_improvement_is_significant_under_both_tests() -> None:
    better = np.clip(BASE + RNG.normal(0.1, 0.05, BASE.size), 0, 1)
    assert paired_p_value(better, BASE, test="randomization") < 0.001
    assert paired_p_value(better, BASE, test="t-test") < 0.001


def test_randomization_is_seeded() -> None:
    noisy = BASE + RNG.normal(0, 0.1, BASE.size)
    assert paired_p_value(noisy, BASE) == paired_p_value(noisy, BASE)


def test_t_test_equals_ranx() -> None:
    from ranx.statistical_tests import paired_student_t_test

    noisy = BASE + RNG.normal(0.01, 0.1, BASE.size)
    theirs, _ = paired_student_t_test(noisy, BASE)
    assert paired_p_value(noisy, BASE, test="t-test") == pytest.approx(theirs, rel=1e-9)


@pytest.mark.slow  # ranx's test is numba code: compiling it takes ~10 s
def test_randomization_agrees_with_ranx_fisher() -> None:
    from ranx.statistical_tests import fisher_randomization_test

    noisy = BASE + RNG.normal(0.01, 0.1, BASE.size)
    theirs, _ = fisher_randomization_test(noisy, BASE, 10_000, 0.05, 42)
    assert paired_p_value(noisy, BASE) == pytest.approx(theirs, abs=0.02)  # both Monte Carlo


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(UnknownChoice, match=r"significance test 'wilcoxon'; choose from "
                                            r"\['randomization', 't-test'\]"):
        paired_p_value(BASE, BASE, test="wilcoxon")
    with pytest.raises(InvalidInput, match="equal-length"):
        paired_p_value(BASE, BASE[:-1])
    with pytest.raises(UnknownChoice, match="reference variant 'nope'"):
        compare_to("nope", {"a": {"q": 1.0}})


def test_grid_names_its_test_and_alpha() -> None:
    grid = parse_grid({"grid": {"mode": "bm25"}, "significance_test": "t-test", "alpha": 0.01})
    assert (grid.significance_test, grid.alpha) == ("t-test", 0.01)
    default = parse_grid({"grid": {"mode": "bm25"}})
    assert (default.significance_test, default.alpha) == ("randomization", 0.05)
    with pytest.raises(UnknownChoice, match="significance test 'z'"):
        parse_grid({"grid": {"mode": "bm25"}, "significance_test": "z"})
    with pytest.raises(InvalidInput, match=r"alpha must be a number between 0 and 1.*got 5"):
        parse_grid({"grid": {"mode": "bm25"}, "alpha": 5})


def _result(scores: dict[str, np.ndarray]) -> EvaluationResult:
    """An evaluation whose variants scored ``scores`` (label -> nDCG@10 per query)."""
    grid = parse_grid({"ks": [10], "grid": {"embedder": "tfidf", "mode": ["bm25", "dense", "hybrid"],
                                            "k": 10}})
    results = []
    for variant, (label, values) in zip(grid.variants, scores.items(), strict=True):
        rows = tuple(QueryResult(query_id=f"q{i}", query="", retrieved_ids=(), relevant_ids=(),
                                 ndcg_at_10=float(v), first_relevant_rank=None, latency_ms=0.0,
                                 scores={"ndcg_at_10": float(v)})
                     for i, v in enumerate(values))
        results.append(VariantResult(variant=replace(variant, label=label),
                                     metrics={"ndcg_at_10": float(values.mean())},
                                     per_query=rows, store_path=Path("."), ks=(10,)))
    return EvaluationResult(grid=grid, dataset=None, results=tuple(results),  # type: ignore[arg-type]
                            ingests=(), queries_embedded={}, seconds=0.0)


def test_comparison_table_says_which_differences_are_significant() -> None:
    better = np.clip(BASE + 0.1 + RNG.normal(0, 0.05, BASE.size), 0, 1)
    result = _result({"baseline": BASE, "better": better, "copy-of-baseline": BASE.copy()})
    rows = {row["variant"]: row for row in comparison_rows(result, metric="ndcg_at_10")}
    assert rows["better"]["p_value_vs_best"] is None  # the best is the reference
    assert rows["baseline"]["significant_vs_best"] is True
    assert rows["baseline"]["p_value_vs_best"] < 0.001
    assert rows["copy-of-baseline"]["significant_vs_best"] is True  # the copy is the baseline

    # A copy of the best is not significantly different from it.
    result = _result({"baseline": BASE, "better": better, "copy-of-better": better.copy()})
    rows = {row["variant"]: row for row in comparison_rows(result, metric="ndcg_at_10")}
    copy = rows["copy-of-better"] if rows["better"]["p_value_vs_best"] is None else rows["better"]
    assert copy["p_value_vs_best"] == 1.0 and copy["significant_vs_best"] is False
    text = format_comparison(result, metric="ndcg_at_10")
    assert "p vs best" in text and "paired randomization test" in text
    lines = text.splitlines()
    assert lines[3].rstrip().endswith("1.0000") and lines[4].endswith("+")
    summary = significance_json(result, metric="ndcg_at_10")
    assert summary["test"] == "randomization" and summary["alpha"] == 0.05
    assert {c["variant"]: c["significant"] for c in summary["comparisons"]}["baseline"] is True


def test_a_grid_with_cv_folds_prints_and_logs_the_held_out_estimate() -> None:
    better = np.clip(BASE + 0.1 + RNG.normal(0, 0.05, BASE.size), 0, 1)
    result = _result({"baseline": BASE, "better": better, "copy": BASE.copy()})
    result = replace(result, grid=replace(result.grid, cv_folds=5))
    text = format_comparison(result, metric="ndcg_at_10")
    assert "cross-validation (5 folds, 300 queries, choosing among 3 variant(s)" in text
    assert "chosen: better" in text


def test_a_grid_baseline_is_tested_against_too() -> None:
    better = np.clip(BASE + 0.1 + RNG.normal(0, 0.05, BASE.size), 0, 1)
    result = _result({"baseline": BASE, "better": better, "copy": BASE.copy()})
    result = replace(result, grid=replace(result.grid, baseline="baseline"))
    rows = {row["variant"]: row for row in comparison_rows(result, metric="ndcg_at_10")}
    assert rows["copy"]["p_value_vs_baseline"] == 1.0
    assert rows["copy"]["significant_vs_baseline"] is False
    assert rows["better"]["significant_vs_baseline"] is True
    assert rows["baseline"]["p_value_vs_baseline"] is None
    text = format_comparison(result, metric="ndcg_at_10")
    assert "p vs baseline" in text and "the baseline baseline" in text
    summary = significance_json(result, metric="ndcg_at_10")
    assert summary["baseline"] == "baseline" and len(summary["baseline_comparisons"]) == 2


def test_a_baseline_that_names_no_variant_is_refused() -> None:
    with pytest.raises(UnknownChoice, match=r"Unknown baseline variant 'hybrid'; choose from "
                                            r"\['bm25', 'dense-tfidf'\]"):
        parse_grid({"grid": {"embedder": "tfidf", "mode": ["bm25", "dense"]},
                    "baseline": "hybrid"})
