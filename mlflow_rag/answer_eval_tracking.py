"""The MLflow adapter of answer evaluation: one parent run, one child run per answer variant
(generator x prompt), each an ``mlflow.genai.evaluate`` over the question/answer set, so the
scores and the traces appear in MLflow's GenAI evaluation UI.

Each question is answered by ``answer(...)`` inside evaluate's ``predict_fn``: its CHAIN,
RETRIEVER and LLM spans are the row's trace. Answers are not recorded in the store (an
evaluation is not traffic). The scorers wrap the pure functions of
``evaluation/answer_metrics.py``; the retrieval scorer reads the RETRIEVER span of the trace.
MLflow's LLM judges run only when a judge model is given.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlflow_rag.answer import answer
from mlflow_rag.evaluation import answer_metrics
from mlflow_rag.evaluation.answer_set import QAItem
from mlflow_rag.evaluation.answer_variants import AnswerVariant
from mlflow_rag.genai_tracking import MlflowTracer, resolve_prompt
from mlflow_rag.generate.prompting import PromptTemplate
from mlflow_rag.generate.registry import get_generator
from mlflow_rag.store.store import Store
from mlflow_rag.tracking_session import log_params_once, mlflow_session, quiet_mlflow, start_run

# The scores every variant gets, in the order tables show them (MLflow logs their means as
# ``<name>/mean``); the retrieval scores are ``recall_at_K`` and ``ndcg_at_K``.
SCORES = ("exact_match", "token_f1", "citation_precision", "citation_recall")
# MLflow's LLM judges run with --judge, by the names ``mlflow.genai.scorers`` gives them.
JUDGES = ("RetrievalGroundedness", "RelevanceToQuery", "RetrievalSufficiency", "Correctness")


@dataclass(frozen=True)
class VariantScores:
    variant: AnswerVariant
    run_id: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class AnswerEvaluation:
    run_id: str
    experiment_id: str
    variants: tuple[VariantScores, ...]


class _TraceTracer(MlflowTracer):
    """Answering's tracer inside ``mlflow.genai.evaluate``: MLflow is already pointed at the
    evaluation's destination, and pointing it again would reset the trace exporter."""

    @contextmanager
    def session(self) -> Any:
        yield


def build_scorers(*, k: int, judge: str | None = None) -> list[Any]:
    """The offline scorers (answer, citations, retrieval at ``k``), and MLflow's judges on
    the model ``judge`` (``openai:/gpt-4o-mini``...) when one is given."""
    from mlflow.entities import Feedback
    from mlflow.entities.span import SpanType
    from mlflow.genai.scorers import scorer

    @scorer(name="exact_match")
    def exact_match(outputs: Mapping[str, Any], expectations: Mapping[str, Any]) -> float:
        return answer_metrics.exact_match(outputs["answer"], expectations["expected_response"])

    @scorer(name="token_f1")
    def token_f1(outputs: Mapping[str, Any], expectations: Mapping[str, Any]) -> float:
        return answer_metrics.token_f1(outputs["answer"], expectations["expected_response"])

    @scorer(name="citation_precision")
    def citation_precision(outputs: Mapping[str, Any],
                           expectations: Mapping[str, Any]) -> float:
        return answer_metrics.citation_precision(outputs["cited_ids"],
                                                 expectations["relevant_ids"])

    @scorer(name="citation_recall")
    def citation_recall(outputs: Mapping[str, Any], expectations: Mapping[str, Any]) -> float:
        return answer_metrics.citation_recall(outputs["cited_ids"],
                                              expectations["relevant_ids"])

    @scorer(name="retrieval")
    def retrieval(trace: Any, expectations: Mapping[str, Any]) -> list[Feedback]:
        # The documents of the RETRIEVER span, in rank order, one id per document.
        retrieved: list[str] = []
        for span in trace.search_spans(span_type=SpanType.RETRIEVER):
            for doc in span.outputs or []:
                doc_id = (doc.get("metadata") or {}).get("document_id")
                if doc_id and doc_id not in retrieved:
                    retrieved.append(doc_id)
        scores = answer_metrics.retrieval_scores(retrieved, expectations["relevant_ids"], k=k)
        return [Feedback(name=name, value=value) for name, value in scores.items()]

    scorers: list[Any] = [exact_match, token_f1, citation_precision, citation_recall, retrieval]
    if judge:
        from mlflow.genai import scorers as builtin

        scorers += [getattr(builtin, name)(model=judge) for name in JUDGES]
    return scorers


def evaluation_rows(items: Sequence[QAItem]) -> list[dict[str, Any]]:
    """The Q/A set as ``mlflow.genai.evaluate`` data: inputs and expectations."""
    return [{"inputs": {"question": item.question},
             "expectations": {"expected_response": item.reference_answer,
                              "relevant_ids": list(item.relevant_ids)},
             "tags": {"mlflow_rag.question_id": item.id}} for item in items]


def evaluate_answers(
    store: Store, items: Sequence[QAItem], variants: Sequence[AnswerVariant], *,
    k: int = 5, judge: str | None = None, dataset: str = "",
    generator_options: Mapping[str, Any] | None = None, tracking_uri: str | None = None,
    experiment: str | None = None, run_name: str | None = None,
) -> AnswerEvaluation:
    """Answer every question with every variant; one child run of scores per variant."""
    quiet_mlflow()
    with mlflow_session(tracking_uri, experiment) as mlflow:
        # Templates are resolved (and the shipped one registered) before any run starts, so
        # a missing prompt is one error and leaves no half-made runs.
        generators = {v: get_generator(v.generator, **dict(generator_options or {}))
                      for v in variants}
        templates = {v: resolve_prompt(v.prompt, tracking_uri=tracking_uri,
                                       experiment=experiment)
                     if generators[v].uses_prompt else None for v in variants}
        scorers = build_scorers(k=k, judge=judge)
        rows = evaluation_rows(items)
        results: list[VariantScores] = []
        with start_run(mlflow, run_name or "answer-evaluation") as parent:
            log_params_once(mlflow, {"dataset": dataset, "n_questions": str(len(items)),
                                     "k": str(k), "store": store.location,
                                     "judge": judge or "",
                                     "variants": ", ".join(v.name for v in variants)})
            mlflow.set_tag("mlflow_rag.kind", "answer-evaluation")
            for variant in variants:
                # MLflow calls predict_fn from worker threads; answers go one at a time,
                # since the store's connection is not for concurrent use and the latencies
                # in the traces should not be each other's.
                lock = threading.Lock()
                gen, template = generators[variant], templates[variant]

                def predict(question: str, gen: Any = gen,
                            template: PromptTemplate | None = template,
                            mode: str = variant.mode,
                            lock: threading.Lock = lock) -> dict[str, Any]:
                    with lock:
                        result = answer(store, question, generator=gen, prompt=template, k=k,
                                        mode=mode, record=False, tracer=_TraceTracer(
                                            tracking_uri=tracking_uri, experiment=experiment))
                    return {"answer": result.text,
                            "cited_ids": list(dict.fromkeys(c.document_id
                                                            for c in result.citations)),
                            "output_id": result.output_id}

                with mlflow.start_run(run_name=variant.name, nested=True) as child:
                    mlflow.log_params({"generator": variant.generator,
                                       "prompt": template.uri if template else "",
                                       "k": str(k), "mode": variant.mode,
                                       "dataset": dataset})
                    # MLflow prints its progress and a summary on stdout: they go to
                    # stderr, so that stdout is the command's own (--json) output.
                    with contextlib.redirect_stdout(sys.stderr):
                        outcome = mlflow.genai.evaluate(data=rows, predict_fn=predict,
                                                        scorers=scorers)
                    results.append(VariantScores(
                        variant=variant, run_id=child.info.run_id,
                        metrics={name: float(value) for name, value in outcome.metrics.items()
                                 if isinstance(value, (int, float))}))
            mlflow.log_dict([{"variant": r.variant.name, "run_id": r.run_id, **r.metrics}
                             for r in results], "comparison.json")
        return AnswerEvaluation(run_id=parent.info.run_id,
                                experiment_id=parent.info.experiment_id,
                                variants=tuple(results))

