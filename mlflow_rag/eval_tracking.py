"""Evaluations as MLflow runs: one parent run per grid, one nested child run per variant.

The harness (:mod:`mlflow_rag.evaluation.harness`) does the work without MLflow; this adapter
records it:

- parent: params (dataset, split, queries, grid file, metric, ks), the dataset as an input
  with its digest, a comparison table (``comparison.json``, with each variant's paired test
  against the best: ``p_value_vs_best``, ``significant_vs_best``; the test and alpha in
  ``significance.json``), plots (``plots/*.png``), the
  best variant as tags (:data:`TAG_BEST_VARIANT`, :data:`TAG_BEST_RUN_ID`) and metrics
  (``best_<metric>``), and optionally the best variant's store as a registered model with an
  alias (``champion``).
- child (one per variant, logged as soon as the variant is scored): its axes as params
  (``mode``, ``chunker``, ``chunk_size``, ``chunk_overlap``, ``embedder``, ``index_type``,
  ``k``, ``fusion``), the ranking metrics, latency, ingest seconds, index bytes, a per-query
  table (``per_query.json``) and a recall-at-k curve (metric ``recall_curve``, step = k).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_rag.embed.registry import DEFAULT_EMBEDDER
from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.beir_download import cache_root
from mlflow_rag.evaluation.cross_validation import cross_validate_result, summary_line
from mlflow_rag.evaluation.datasets import resolve_dataset
from mlflow_rag.evaluation.eval_dataset import EvalDataset
from mlflow_rag.evaluation.harness import run_grid
from mlflow_rag.evaluation.harness_types import EvaluationResult, HarnessOptions, VariantResult
from mlflow_rag.evaluation.significance import against_baseline, against_best
from mlflow_rag.evaluation.variants import DEFAULT_METRIC, Grid, check_metric, load_grid, parse_grid
from mlflow_rag.tracking_session import (
    DEFAULT_EXPERIMENT,
    TAG_DESCRIPTION,
    TAG_RUN_TYPE,
    TAG_STORE_PATH,
    log_params_once,
    mlflow_session,
)

log = logging.getLogger("mlflow_rag.eval_tracking")

DEFAULT_EVAL_EXPERIMENT = DEFAULT_EXPERIMENT  # one experiment for every command by default
TAG_BEST_VARIANT = "mlflow_rag.best_variant"
TAG_BEST_RUN_ID = "mlflow_rag.best_run_id"
TAG_BEST_METRIC = "mlflow_rag.best_metric"
TAG_VARIANT_KEY = "mlflow_rag.variant"
TAG_DATASET_DIGEST = "mlflow_rag.dataset_digest"
TAG_EVALUATION_RUN_ID = "mlflow_rag.evaluation_run_id"
TAG_CHAMPION_URI = "mlflow_rag.champion_model_uri"
PER_QUERY_TABLE = "per_query.json"
COMPARISON_TABLE = "comparison.json"
SIGNIFICANCE_FILE = "significance.json"  # each variant against the best: test, p-value
CROSS_VALIDATION_FILE = "cross_validation.json"  # with the grid's cv_folds: fold by fold
MAX_DATASET_DIGEST = 36  # MLflow's limit on a dataset digest

# The default grid when no variants file is given: BM25, MiniLM dense and their hybrid.
DEFAULT_GRID: dict[str, Any] = {
    "name": "default",
    "grid": {"chunker": "recursive", "chunk_size": 256, "embedder": DEFAULT_EMBEDDER,
             "mode": ["bm25", "dense", "hybrid"], "k": 100},
}
# Columns of the printed comparison and the comparison table, besides the ranking metrics.
SUMMARY_METRICS = ("ndcg_at_10", "recall_at_10", "mrr_at_10", "recall_at_100",
                   "latency_p50_ms", "latency_p95_ms", "ingest_seconds", "index_bytes")


@dataclass(frozen=True)
class EvaluationRun:
    """What :func:`evaluate` logged: the results, and the MLflow runs that hold them."""

    result: EvaluationResult
    metric: str
    parent_run_id: str | None
    child_run_ids: dict[str, str]  # variant label -> run id
    best: VariantResult
    model_uri: str | None = None
    registered_version: str | None = None


# --------------------------------------------------------------------------- tables


def comparison_rows(result: EvaluationResult, *, metric: str) -> list[dict[str, Any]]:
    """One row per variant: its axes, every metric and its paired test against the best by
    ``metric`` (``p_value_vs_best``, ``significant_vs_best``; None for the best) and, when the
    grid names a baseline, against it (``..._vs_baseline``), best first."""
    tests = against_best(result, metric)
    baseline = against_baseline(result, metric)
    rows = []
    for r in result.results:
        row: dict[str, Any] = {"variant": r.variant.label}
        row.update({k: v for k, v in r.variant.params().items()})
        row.update(r.metrics)
        test = tests.get(r.variant.label)
        row["p_value_vs_best"] = test.p_value if test else None
        row["significant_vs_best"] = test.significant if test else None
        if result.grid.baseline is not None:
            test = baseline.get(r.variant.label)
            row["p_value_vs_baseline"] = test.p_value if test else None
            row["significant_vs_baseline"] = test.significant if test else None
        rows.append(row)
    rows.sort(key=lambda row: -float(row.get(metric, float("-inf"))))
    return rows


def per_query_rows(result: VariantResult) -> list[dict[str, Any]]:
    return [
        {
            "query_id": q.query_id, "query": q.query,
            "retrieved_ids": list(q.retrieved_ids), "relevant_ids": list(q.relevant_ids),
            "ndcg_at_10": None if math.isnan(q.ndcg_at_10) else q.ndcg_at_10,
            "first_relevant_rank": q.first_relevant_rank, "latency_ms": q.latency_ms,
        }
        for q in result.per_query
    ]


def corpus_problem_lines(result: EvaluationResult, *, shown: int = 5) -> list[str]:
    """Warnings about the corpus that cap every variant's scores, one line each (empty when
    the corpus holds every judged document and everything loaded)."""
    lines = []
    failures = result.corpus_failures
    if failures:
        names = "; ".join(f"{f.source_path}: {f.reason}" for f in failures[:shown])
        more = f"; and {len(failures) - shown} more" if len(failures) > shown else ""
        lines.append(f"{len(failures)} corpus item{'s' if len(failures) != 1 else ''} failed "
                     f"to load (not searchable): {names}{more}")
    missing = result.relevant_missing
    if missing:
        names = ", ".join(missing[:shown]) + (f" and {len(missing) - shown} more"
                                              if len(missing) > shown else "")
        verb = "ids are" if len(missing) != 1 else "id is"
        lines.append(f"{len(missing)} relevant {verb} not in the corpus: {names} (check the "
                     "corpus and its ids: --corpus, --id-column)")
    hopeless = result.queries_without_relevant
    if hopeless:
        total = len(result.dataset.queries)
        lines.append(f"{len(hopeless)} of {total} quer{'ies' if total != 1 else 'y'} "
                     f"{'have' if len(hopeless) != 1 else 'has'} no relevant document in the "
                     "corpus: every variant scores 0 on "
                     f"{'them' if len(hopeless) != 1 else 'it'}")
    return lines


def significance_json(result: EvaluationResult, *, metric: str) -> dict[str, Any]:
    """The parent run's ``significance.json``: the test, alpha and each variant against the
    best (``comparisons``) and the grid's baseline (``baseline_comparisons``, when named)."""
    grid = result.grid

    def rows(tests: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"variant": c.variant, "difference": c.difference, "p_value": c.p_value,
                 "significant": c.significant, "queries": c.queries} for c in tests.values()]

    return {
        "metric": metric, "test": grid.significance_test, "alpha": grid.alpha,
        "reference": result.best(metric).variant.label,
        "comparisons": rows(against_best(result, metric)),
        "baseline": grid.baseline,
        "baseline_comparisons": rows(against_baseline(result, metric)),
    }


def corpus_problems_json(result: EvaluationResult) -> dict[str, Any]:
    return {
        "failures": [{"source_path": f.source_path, "reason": f.reason}
                     for f in result.corpus_failures],
        "relevant_ids_missing": list(result.relevant_missing),
        "queries_without_relevant_documents": list(result.queries_without_relevant),
    }


def format_comparison(result: EvaluationResult, *, metric: str) -> str:
    """The table the CLI prints: one line per variant, best first, the best marked ``*``."""
    columns = [c for c in dict.fromkeys((metric, *SUMMARY_METRICS))
               if any(c in r.metrics for r in result.results)]  # e.g. no recall_at_100 at k=10
    rows = comparison_rows(result, metric=metric)
    tested = ["best"] + (["baseline"] if result.grid.baseline is not None else [])
    header = ["variant", *columns, *(f"p vs {name}" for name in tested)]
    body = []
    for i, row in enumerate(rows):
        cells = [("* " if i == 0 else "  ") + str(row["variant"])]
        for column in columns:
            value = row.get(column)
            if value is None:
                cells.append("-")
            elif column == "index_bytes":
                cells.append(f"{value / 1e6:.2f}MB")
            elif column.endswith(("_ms", "_seconds")):
                cells.append(f"{value:.1f}")
            else:
                cells.append(f"{value:.4f}")
        cells.extend(_p_cell(row, name) for name in tested)
        body.append(cells)
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True)))
             for line in [header, *body]]
    lines.insert(1, "-" * len(lines[0]))
    grid = result.grid
    against = "the best variant" + (f" / the baseline {grid.baseline}" if grid.baseline else "")
    lines.append(f"p vs {'/'.join(tested)}: {metric} per query against {against}, paired "
                 f"{grid.significance_test} test; + marks p < {grid.alpha:g} (significant)")
    cv = cross_validate_result(result, metric)
    if cv is not None:
        lines.append(summary_line(cv))
    return "\n".join(lines)


def _p_cell(row: Mapping[str, Any], reference: str) -> str:
    p = row.get(f"p_value_vs_{reference}")
    if p is None:
        return "-"
    return f"{p:.4f}{'+' if row.get(f'significant_vs_{reference}') else ' '}"


# --------------------------------------------------------------------------- MLflow


@contextmanager
def _session(tracking_uri: str | None, experiment: str | None) -> Iterator[Any]:
    """MLflow pointed at the tracking URI and experiment, chosen as for every other command
    (``--experiment``, then ``MLFLOW_EXPERIMENT_NAME``/``_ID``, then ``mlflow-rag``); under
    ``mlflow run`` the project's run is the parent, so the experiment is that run's."""
    with mlflow_session(tracking_uri, experiment) as mlflow:
        yield mlflow


def _dataset_input(mlflow: Any, dataset: EvalDataset) -> Any:
    """The evaluation queries and judgements as an MLflow dataset, with the dataset digest."""
    import pandas as pd

    frame = pd.DataFrame(
        [{"query_id": qid, "query": text,
          "relevant": json.dumps(dataset.qrels.get(qid, {}), sort_keys=True)}
         for qid, text in dataset.queries.items()],
        columns=["query_id", "query", "relevant"],
    )
    return mlflow.data.from_pandas(frame, source=dataset_source_uri(dataset), name=dataset.name,
                                   digest=dataset.digest[:MAX_DATASET_DIGEST])


def dataset_source_uri(dataset: EvalDataset) -> str | None:
    """Where the dataset came from, as MLflow can record it: the download URL of a
    ``beir:<name>`` dataset, else the absolute path of the folder or questions file."""
    match = re.search(r"\((https?://[^)\s]+)\)", dataset.source)
    if match:
        return match.group(1)
    path = Path(dataset.source)
    return str(path.resolve()) if path.exists() else None


def _log_child(mlflow: Any, result: VariantResult, dataset_input: Any, parent_id: str) -> str:
    import pandas as pd

    variant = result.variant
    with mlflow.start_run(run_name=variant.label, nested=True,
                          parent_run_id=parent_id) as child:
        mlflow.set_tags({TAG_RUN_TYPE: "evaluation_variant", TAG_VARIANT_KEY: variant.key,
                         TAG_STORE_PATH: str(Path(result.store_path).resolve())})
        mlflow.log_params({**variant.params(), **result.info})
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items() if math.isfinite(v)})
        for k in result.ks:  # a curve in the run's chart view: recall against cut-off
            name = f"recall_at_{k}"
            if name in result.metrics:
                mlflow.log_metric("recall_curve", result.metrics[name], step=k)
        mlflow.log_input(dataset_input, context="evaluation")
        mlflow.log_table(pd.DataFrame(per_query_rows(result)), artifact_file=PER_QUERY_TABLE)
        return str(child.info.run_id)


def _log_summary(mlflow: Any, result: EvaluationResult, *, metric: str,
                 child_ids: dict[str, str]) -> VariantResult:
    import pandas as pd

    from mlflow_rag.evaluation import plots

    rows = comparison_rows(result, metric=metric)
    for row in rows:
        row["run_id"] = child_ids.get(str(row["variant"]), "")
    mlflow.log_table(pd.DataFrame(rows), artifact_file=COMPARISON_TABLE)
    mlflow.log_text(format_comparison(result, metric=metric), "comparison.txt")
    metric_names = list(dict.fromkeys(
        [metric, *(m for m in ("ndcg_at_10", "recall_at_10", "mrr_at_10", "map_at_10",
                               "precision_at_10", "hit_rate_at_10", "recall_at_100")
                   if any(m in r.metrics for r in result.results))]
    ))
    figure = plots.metrics_by_variant(result.results, metric_names)
    mlflow.log_figure(figure, "plots/metrics_by_variant.png")
    figure = plots.recall_curves(result.results)
    mlflow.log_figure(figure, "plots/recall_at_k.png")
    figure = plots.metrics_by_variant(result.results, ["latency_p50_ms", "latency_p95_ms"],
                                      title="Latency per query (ms)")
    mlflow.log_figure(figure, "plots/latency.png")
    best = result.best(metric)
    mlflow.set_tags({TAG_BEST_VARIANT: best.variant.label,
                     TAG_BEST_RUN_ID: child_ids.get(best.variant.label, ""),
                     TAG_BEST_METRIC: metric})
    mlflow.log_metric(f"best_{metric}", best.metrics[metric])
    mlflow.log_dict(significance_json(result, metric=metric), SIGNIFICANCE_FILE)
    cv = cross_validate_result(result, metric)
    if cv is not None:  # the held-out estimate of choosing among the variants
        mlflow.log_dict(cv.to_dict(), CROSS_VALIDATION_FILE)
        mlflow.log_metric(f"cv_{metric}", cv.mean)
    mlflow.log_metric("seconds_total", result.seconds)
    mlflow.log_metrics({"corpus_failures": float(len(result.corpus_failures)),
                        "relevant_ids_missing": float(len(result.relevant_missing)),
                        "queries_without_relevant": float(len(result.queries_without_relevant))})
    problems = corpus_problem_lines(result)
    if problems:
        mlflow.log_dict(corpus_problems_json(result), "corpus_problems.json")
        mlflow.set_tag(TAG_DESCRIPTION, "Corpus problems (scores are capped):\n\n"
                       + "\n".join(f"- {line}" for line in problems))
    return best


def evaluate(
    dataset: str | os.PathLike[str] | EvalDataset, *, variants: str | Path | Grid | None = None,
    experiment: str | None = None, split: str | None = None, max_queries: int | None = None,
    tracking_uri: str | None = None, work_dir: str | Path | None = None,
    register: str | None = None, alias: str = "champion", metric: str | None = None,
    corpus: Sequence[str] = (), track: bool = True, progress: bool = True,
    batch_size: int = 64, run_name: str | None = None,
    loader_options: Mapping[str, Any] | None = None, engine: str = "local",
) -> EvaluationRun:
    """Run a variant grid on a dataset and log it: a parent run with one child per variant.

    ``dataset``: a BEIR folder, a questions file (then ``corpus`` names the documents) or
    ``beir:<name>``. ``variants``: a grid file (see :mod:`mlflow_rag.evaluation.variants`);
    None is :data:`DEFAULT_GRID`. ``split`` and ``metric`` default to the grid file's, then
    ``test`` and ``ndcg_at_10``. ``work_dir`` keeps the stores (a re-run reuses them); None
    is ``<cache>/eval`` when tracking (the child runs name their stores, so they must outlive
    the call; ``<cache>`` is ``$MLFLOW_RAG_CACHE_DIR``, else ``~/.cache/mlflow-rag``), else a
    temporary directory. ``register`` logs the best variant's store as a model,
    registered under that name with ``alias``. ``track=False`` runs without MLflow.
    ``loader_options`` go to the corpus loaders as ingest's (``text_columns``,
    ``id_column``...). ``engine="spark"`` searches the queries on the active Spark session
    (the same metrics; latency is the executors'). Corpus items that fail to load and judged
    ids that are no document of the corpus are in the result (:func:`corpus_problem_lines`)
    and on the parent run.
    """
    grid = _grid(variants)
    metric = check_metric(metric or grid.metric or DEFAULT_METRIC, ks=grid.ks,
                          variants=grid.variants)
    if register and not track:
        raise InvalidInput("--register needs tracking (it logs a model); drop --no-track")
    if isinstance(dataset, EvalDataset):
        data = dataset
    else:
        data = resolve_dataset(dataset, split=split or grid.split or "test",
                               max_queries=max_queries, progress=progress)
    # Child runs name their stores (tag mlflow_rag.store_path) for a later log_model, so a
    # tracked evaluation keeps them: under the cache when no work_dir is given.
    if work_dir is None and track:
        work_dir = cache_root() / "eval"
    with _work_dir(work_dir) as directory:
        options = HarnessOptions(work_dir=directory, sources=tuple(corpus),
                                 loader_options=dict(loader_options or {}),
                                 batch_size=batch_size, progress=progress, engine=engine)
        if not track:
            result = run_grid(grid, data, options=options)
            return EvaluationRun(result=result, metric=metric, parent_run_id=None,
                                 child_run_ids={}, best=result.best(metric))
        with _session(tracking_uri, experiment) as mlflow:
            child_ids: dict[str, str] = {}
            dataset_input = _dataset_input(mlflow, data)
            with mlflow.start_run(run_name=run_name or f"{grid.name}:{data.name}") as parent:
                parent_id = str(parent.info.run_id)
                mlflow.set_tags({TAG_RUN_TYPE: "evaluation", TAG_DATASET_DIGEST: data.digest})
                log_params_once(mlflow, {
                    "dataset": data.name, "dataset_source": data.source,
                    "split": data.split or "", "queries": str(len(data.queries)),
                    "max_queries": "" if max_queries is None else str(max_queries),
                    "variants_file": grid.source or "", "grid": grid.name,
                    "variants": str(len(grid.variants)), "metric": metric,
                    "ks": json.dumps(list(grid.ks)), "candidate_factor": str(grid.candidate_factor),
                    "engine": engine,
                })
                mlflow.log_input(dataset_input, context="evaluation")

                def on_result(variant_result: VariantResult) -> None:
                    child_ids[variant_result.variant.label] = _log_child(
                        mlflow, variant_result, dataset_input, parent_id)

                result = run_grid(grid, data, options=options, on_result=on_result)
                best = _log_summary(mlflow, result, metric=metric, child_ids=child_ids)
            model_uri = version = None
            if register:
                model_uri, version = _register_best(
                    best, register=register, alias=alias, experiment=experiment,
                    tracking_uri=tracking_uri, parent_id=parent_id,
                )
        return EvaluationRun(result=result, metric=metric, parent_run_id=parent_id,
                             child_run_ids=child_ids, best=best, model_uri=model_uri,
                             registered_version=version)


def _register_best(
    best: VariantResult, *, register: str, alias: str, experiment: str | None,
    tracking_uri: str | None, parent_id: str,
) -> tuple[str, str]:
    """Log the best variant's store as a model (its own run), registered with ``alias``.

    A store of several embedders serves the variant's one (``model_config["embedder"]``).
    The search mode is a request parameter of the served model; the variant's is recorded
    in a tag so a client can send it.
    """
    import mlflow

    from mlflow_rag.tracking_model import log_model

    variant = best.variant
    config = {"embedder": variant.embedder} if variant.embedder else None
    info = log_model(best.store_path, name="retriever", register=register, alias=alias,
                     experiment=experiment, tracking_uri=tracking_uri,
                     model_config=config, run_name=f"champion:{variant.label}")
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    if info.run_id:
        client.set_tag(info.run_id, TAG_EVALUATION_RUN_ID, parent_id)
        client.set_tag(info.run_id, TAG_BEST_VARIANT, variant.label)
        client.set_tag(info.run_id, "mlflow_rag.mode", variant.mode)
    client.set_tag(parent_id, TAG_CHAMPION_URI, f"models:/{register}@{alias}")
    client.set_model_version_tag(register, version, TAG_BEST_VARIANT, variant.label)
    client.set_model_version_tag(register, version, "mlflow_rag.mode", variant.mode)
    client.set_model_version_tag(register, version, TAG_EVALUATION_RUN_ID, parent_id)
    return str(info.model_uri), version


def outcome_json(outcome: EvaluationRun, *, register: str | None = None,
                 alias: str | None = None) -> dict[str, Any]:
    """What ``mlflow-rag evaluate --json`` prints: the dataset, the variants best first (axes,
    metrics, run id), the best one, the runs and the champion model (NaN metrics -> null)."""
    result = outcome.result

    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    rows = [{k: clean(v) for k, v in row.items()}
            for row in comparison_rows(result, metric=outcome.metric)]
    for row in rows:
        row["run_id"] = outcome.child_run_ids.get(str(row["variant"]))
    best = outcome.best.variant.label
    return {
        "dataset": {"name": result.dataset.name, "source": result.dataset.source,
                    "split": result.dataset.split, "queries": len(result.dataset.queries)},
        "grid": {"name": result.grid.name, "source": result.grid.source},
        "metric": outcome.metric,
        "seconds": result.seconds,
        "corpus": corpus_problems_json(result),
        "variants": rows,
        "best": {"variant": best, "value": clean(outcome.best.metrics.get(outcome.metric)),
                 "run_id": outcome.child_run_ids.get(best),
                 "store_path": str(outcome.best.store_path)},
        "parent_run_id": outcome.parent_run_id,
        "child_run_ids": dict(outcome.child_run_ids),
        "champion": None if not outcome.model_uri else {
            "model_uri": outcome.model_uri, "registered_model": register, "alias": alias,
            "version": outcome.registered_version},
    }


def _grid(variants: str | Path | Grid | None) -> Grid:
    if isinstance(variants, Grid):
        return variants
    if variants is None or str(variants) == "":
        return parse_grid(DEFAULT_GRID, name="default")
    return load_grid(variants)


@contextmanager
def _work_dir(work_dir: str | Path | None) -> Iterator[Path]:
    if work_dir is not None:
        path = Path(work_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mlflow-rag-eval-") as tmp:
        yield Path(tmp)


__all__ = [
    "DEFAULT_EVAL_EXPERIMENT",
    "DEFAULT_GRID",
    "TAG_BEST_RUN_ID",
    "TAG_BEST_VARIANT",
    "EvaluationRun",
    "comparison_rows",
    "corpus_problem_lines",
    "evaluate",
    "format_comparison",
    "outcome_json",
    "per_query_rows",
]
