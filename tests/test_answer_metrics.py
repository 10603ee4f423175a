"""The answer scorers as pure functions, on hand-computed cases, and the Q/A set's loader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.answer_metrics import (
    citation_precision,
    citation_recall,
    exact_match,
    normalize_answer,
    retrieval_scores,
    token_f1,
    usage_summary,
)
from mlflow_rag.evaluation.answer_set import load_qa_set

REPO = Path(__file__).resolve().parent.parent


def test_normalisation_drops_citations_articles_and_punctuation() -> None:
    assert normalize_answer("The talk [Matteo Vaccari#0] is “Port & Mend”!") == "talk is port mend"


def test_exact_match() -> None:
    assert exact_match("Sarah Schmid.", "sarah schmid") == 1.0
    assert exact_match("Sarah Schmid [Sarah Schmid#0]", "Sarah Schmid") == 1.0
    assert exact_match("Sarah", "Sarah Schmid") == 0.0


def test_token_f1_by_hand() -> None:
    # answer tokens: matteo vaccari speaks (3); reference: matteo vaccari (2); common 2.
    # precision 2/3, recall 1: F1 = 2 * (2/3) / (5/3) = 0.8
    assert token_f1("Matteo Vaccari speaks", "Matteo Vaccari") == pytest.approx(0.8)
    # counted with multiplicity: "legacy legacy" vs "legacy code": common 1, P 1/2, R 1/2
    assert token_f1("legacy legacy", "legacy code") == pytest.approx(0.5)
    assert token_f1("nothing alike", "Matteo Vaccari") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("[only a citation]", "Matteo") == 0.0


def test_citation_precision_and_recall_by_hand() -> None:
    cited = ["A", "B", "A"]  # unique: A, B
    assert citation_precision(cited, ["A", "C"]) == 0.5
    assert citation_recall(cited, ["A", "C"]) == 0.5
    assert citation_precision([], ["A"]) == 0.0
    assert citation_recall([], ["A"]) == 0.0
    assert citation_recall(["A"], []) == 1.0


def test_retrieval_scores_use_the_ranking_engine() -> None:
    # relevant A, C; retrieved B, A, C: recall@2 = 1/2; nDCG@2 = (1/log2 3) / (1 + 1/log2 3)
    scores = retrieval_scores(["B", "A", "C"], ["A", "C"], k=2)
    assert scores["recall_at_2"] == 0.5
    idcg = 1 + 1 / math.log2(3)
    assert scores["ndcg_at_2"] == pytest.approx((1 / math.log2(3)) / idcg)
    with pytest.raises(InvalidInput):
        retrieval_scores(["A"], [], k=2)


def test_the_shipped_speakers_set_loads() -> None:
    items = load_qa_set(REPO / "evaluations" / "speakers_qa.jsonl")
    assert 15 <= len(items) <= 25
    assert items[0].question == "who speaks about legacy modernization?"
    assert all(item.relevant_ids and item.reference_answer for item in items)


@pytest.mark.parametrize(("line", "message"), [
    ('{"id": "a", "question": "q?"}', "missing fields ['reference_answer', 'relevant_ids']"),
    ('{"id": "a", "question": "q", "reference_answer": "r", "relevant_ids": []}',
     "relevant_ids must be a non-empty list"),
    ("not json", "not JSON"),
])
def test_a_bad_line_is_one_error_naming_it(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InvalidInput, match=r"qa\.jsonl:1") as caught:
        load_qa_set(path)
    assert message in str(caught.value)


def test_variants_are_generator_x_prompt_without_the_axis_that_does_not_apply(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_rag.errors import UnknownChoice
    from mlflow_rag.evaluation.answer_variants import AnswerVariant, answer_variants

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    variants = answer_variants(["extractive", "openai:m", "extractive"], ["p/1", "p@prod"])
    assert variants == (AnswerVariant("extractive"), AnswerVariant("openai:m", "p/1"),
                        AnswerVariant("openai:m", "p@prod"))
    assert [v.name for v in variants] == ["extractive", "openai:m p/1", "openai:m p@prod"]
    assert answer_variants(["openai:m"]) == (AnswerVariant("openai:m"),)
    modes = answer_variants(["extractive"], modes=["hybrid", "bm25", "hybrid"])
    assert [(v.mode, v.name) for v in modes] == [("hybrid", "extractive hybrid"),
                                                 ("bm25", "extractive bm25")]
    with pytest.raises(UnknownChoice, match="'bogus'; choose from"):
        answer_variants(["bogus"])
    with pytest.raises(InvalidInput, match="no generator"):
        answer_variants([])


def test_usage_summary_sums_and_means_tokens_and_cost_and_times_each_stage() -> None:
    usages = [
        {"input_tokens": 10, "output_tokens": 4, "cost_usd": 0.5,
         "latency_ms": {"embed": 1.0, "retrieve": 2.0, "generate": 3.0}},
        {"input_tokens": 30, "output_tokens": 6, "cost_usd": 1.5,
         "latency_ms": {"embed": 3.0, "retrieve": 2.0, "generate": 5.0}},
    ]
    out = usage_summary(usages)
    assert out["input_tokens/sum"] == 40 and out["input_tokens/mean"] == 20
    assert out["output_tokens/sum"] == 10 and out["cost_usd/mean"] == 1.0
    assert out["embed_ms/mean"] == 2.0 and out["embed_ms/p95"] == pytest.approx(2.9)
    assert out["answer_ms/mean"] == 8.0  # 6 and 10
    assert usage_summary([]) == {}
