"""The MLflow adapter of answer evaluation: one parent run, one child run per answer variant
(generator x prompt x retrieval), each an ``mlflow.genai.evaluate`` over the question/answer
set, so the scores and the traces appear in MLflow's GenAI evaluation UI; each child run also
logs what its answers cost (tokens and cost, sum and mean per question; latency per stage).

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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_rag.answer import answer
from mlflow_rag.evaluation import answer_metrics
from mlflow_rag.evaluation.answer_set import QAItem, as_eval_dataset
from mlflow_rag.evaluation.answer_variants import AnswerVariant, answer_retrievals
from mlflow_rag.evaluation.harness import HarnessOptions, grid_store, set_index
from mlflow_rag.evaluation.harness_plan import corpus_dir_name
from mlflow_rag.evaluation.variants import Grid
from mlflow_rag.genai_tracking import MlflowTracer, resolve_prompt
from mlflow_rag.generate.prompting import PromptTemplate
from mlflow_rag.generate.registry import get_generator
from mlflow_rag.search import DEFAULT_FUSION, Searcher
from mlflow_rag.store.store import Store
from mlflow_rag.tracking_session import log_params_once, mlflow_session, quiet_mlflow, start_run

# The scores every variant gets, in the order tables show them (MLflow logs their means as
# ``<name>/mean``); the retrieval scores are ``recall_at_K`` and ``ndcg_at_K``.
SCORES = ("exact_match", "token_f1", "citation_precision", "citation_recall")
# MLflow's LLM judges run with --judge, by the names ``mlflow.genai.scorers`` gives them.
JUDGES = ("RetrievalGroundedness", "RelevanceToQuery", "RetrievalSufficiency", "Correctness")


@dataclass(frozen=True)
class VariantScores:
    """A child run's scores (``<score>/mean``...) and what its answers cost
    (``answer_metrics.usage_summary``: tokens, cost, latency per stage)."""

    variant: AnswerVariant
    run_id: str
    metrics: dict[str, float]
    usage: dict[str, float] = field(default_factory=dict)


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
    with evaluation_run(items, variants, k=k, judge=judge, dataset=dataset,
                        generator_options=generator_options, store=store.location,
                        tracking_uri=tracking_uri, experiment=experiment,
                        run_name=run_name) as evaluation:
        for variant in variants:
            evaluation.run_variant(store, variant)
    return evaluation.result()


class EvaluationRun:
    """The parent run of an answer evaluation, open: :meth:`run_variant` adds a child run."""

    def __init__(self, mlflow: Any, parent: Any, items: Sequence[QAItem], *, k: int,
                 dataset: str, generators: Mapping[AnswerVariant, Any],
                 templates: Mapping[AnswerVariant, PromptTemplate | None],
                 scorers: list[Any], tracking_uri: str | None,
                 experiment: str | None) -> None:
        self.mlflow, self.parent, self.k, self.dataset = mlflow, parent, k, dataset
        self.generators, self.templates, self.scorers = generators, templates, scorers
        self.rows = evaluation_rows(items)
        self.tracer_args = {"tracking_uri": tracking_uri, "experiment": experiment}
        self.results: list[VariantScores] = []

    def run_variant(self, store: Store, variant: AnswerVariant, *,
                    searcher: Searcher | None = None,
                    params: Mapping[str, str] | None = None) -> VariantScores:
        """One child run: ``mlflow.genai.evaluate`` of the variant's answers, then what they
        cost (tokens, cost, latency per stage) as metrics of the same run."""
        mlflow = self.mlflow
        gen, template = self.generators[variant], self.templates[variant]
        # MLflow calls predict_fn from worker threads; answers go one at a time, since the
        # store's connection is not for concurrent use and the latencies in the traces should
        # not be each other's. Usage is kept per question: MLflow's first, checking call of
        # predict_fn repeats a question and is not counted twice.
        lock = threading.Lock()
        usage: dict[str, dict[str, Any]] = {}

        def predict(question: str) -> dict[str, Any]:
            with lock:
                result = answer(store, question, generator=gen, prompt=template, k=self.k,
                                mode=variant.mode, record=False, searcher=searcher,
                                tracer=_TraceTracer(**self.tracer_args))
                usage[question] = {"input_tokens": result.input_tokens,
                                   "output_tokens": result.output_tokens,
                                   "cost_usd": result.cost_usd,
                                   "latency_ms": dict(result.latency_ms)}
            return {"answer": result.text,
                    "cited_ids": list(dict.fromkeys(c.document_id for c in result.citations)),
                    "output_id": result.output_id}

        with mlflow.start_run(run_name=variant.name, nested=True) as child:
            mlflow.log_params({"generator": variant.generator,
                               "prompt": template.uri if template else "",
                               "k": str(self.k), "mode": variant.mode, "dataset": self.dataset,
                               **(params or {})})
            # MLflow prints its progress and a summary on stdout: they go to stderr, so that
            # stdout is the command's own (--json) output.
            with contextlib.redirect_stdout(sys.stderr):
                outcome = mlflow.genai.evaluate(data=self.rows, predict_fn=predict,
                                                scorers=self.scorers)
            costs = answer_metrics.usage_summary(list(usage.values()))
            mlflow.log_metrics(costs)
        scores = VariantScores(
            variant=variant, run_id=child.info.run_id,
            metrics={name: float(value) for name, value in outcome.metrics.items()
                     if isinstance(value, (int, float))}, usage=costs)
        self.results.append(scores)
        return scores

    def result(self) -> AnswerEvaluation:
        return AnswerEvaluation(run_id=self.parent.info.run_id,
                                experiment_id=self.parent.info.experiment_id,
                                variants=tuple(self.results))


@contextmanager
def evaluation_run(
    items: Sequence[QAItem], variants: Sequence[AnswerVariant], *, k: int,
    judge: str | None, dataset: str, generator_options: Mapping[str, Any] | None,
    store: str, tracking_uri: str | None, experiment: str | None, run_name: str | None,
    params: Mapping[str, str] | None = None,
) -> Iterator[EvaluationRun]:
    """The parent run, its params and, when it ends, ``comparison.json`` of every child."""
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
        with start_run(mlflow, run_name or "answer-evaluation") as parent:
            log_params_once(mlflow, {"dataset": dataset, "n_questions": str(len(items)),
                                     "k": str(k), "store": store, "judge": judge or "",
                                     "variants": ", ".join(v.name for v in variants),
                                     **(params or {})})
            mlflow.set_tag("mlflow_rag.kind", "answer-evaluation")
            run = EvaluationRun(mlflow, parent, items, k=k, dataset=dataset,
                                generators=generators, templates=templates, scorers=scorers,
                                tracking_uri=tracking_uri, experiment=experiment)
            yield run
            mlflow.log_dict([{"variant": r.variant.name, "run_id": r.run_id, **r.metrics,
                              **r.usage} for r in run.results], "comparison.json")


def evaluate_answer_grid(
    grid: Grid, items: Sequence[QAItem], variants: Sequence[AnswerVariant], *,
    sources: Sequence[str], options: HarnessOptions, k: int = 5, judge: str | None = None,
    dataset: str = "", generator_options: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None, experiment: str | None = None,
    run_name: str | None = None,
) -> AnswerEvaluation:
    """Every retrieval variant of ``grid`` (``variants`` made by
    ``answer_variants.grid_answer_variants``) x generator x prompt: one child run each,
    answered from the chunking's store, which the retrieval harness builds (and reuses) under
    ``options.work_dir``. A variant answers from ``k`` chunks: the grid's ``k`` is for
    ranking documents, not for prompts."""
    qa = as_eval_dataset(items, name=Path(dataset).stem or "answers", source=dataset)
    root = Path(options.work_dir) / corpus_dir_name(qa, sources, options.loader_options)
    root.mkdir(parents=True, exist_ok=True)
    with evaluation_run(items, variants, k=k, judge=judge, dataset=dataset,
                        generator_options=generator_options, store=str(root),
                        tracking_uri=tracking_uri, experiment=experiment,
                        run_name=run_name, params={"variants_file": grid.source or ""}
                        ) as evaluation:
        for chunking in grid.chunkings:
            with grid_store(grid, chunking, sources, root=root, options=options) as built:
                for retrieval in (v for v in answer_retrievals(grid.variants)
                                  if v.chunking == chunking):
                    if retrieval.embedder is not None:
                        set_index(built.store, built.models[retrieval.embedder],
                                  retrieval.index_type)
                    searcher = Searcher(built.store, model=retrieval.embedder,
                                        fusion=retrieval.fusion or DEFAULT_FUSION)
                    params = {key: value for key, value in retrieval.params().items()
                              if key != "k"}
                    for variant in (v for v in variants if v.retrieval == retrieval):
                        evaluation.run_variant(built.store, variant, searcher=searcher,
                                               params={**params, "retrieval": retrieval.key})
    return evaluation.result()
