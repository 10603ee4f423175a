"""``log-model`` and ``evaluate``: the retriever as an MLflow model, and a grid of variants
compared on a dataset."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mlflow_rag.cli.answers import generators_help
from mlflow_rag.cli.group import (
    EXPERIMENT_HELP,
    TRACKING_URI_HELP,
    HelpFrom,
    Names,
    check_tracking,
    echo_json,
    main,
    split_commas,
    store_option,
)


@main.command("log-model")
@store_option
@click.option("--name", default="retriever", show_default=True,
              help="Name of the model in the run (MLflow 3 logged model name).")
@click.option("--register", default=None, help="Add a version to this registered model.")
@click.option("--alias", default=None, help="Point this alias (e.g. champion) at the new version.")
@click.option("--experiment", default=None, help=EXPERIMENT_HELP)
@click.option("--tracking-uri", default=None,
              help=TRACKING_URI_HELP)
@click.option("--include-pii", is_flag=True,
              help="Serve PII-tagged metadata fields (model_config include_pii).")
@click.option("--live", is_flag=True,
              help="A store in PostgreSQL: log a model that searches the live store (named "
                   "without its password; servers take credentials from PGPASSWORD or "
                   "~/.pgpass) instead of a bundle, so new documents are served without a new "
                   "version.")
@click.option("--kind", type=Names("mlflow_rag.tracking_model.MODEL_KINDS"),
              default="retriever", show_default=True,
              help="retriever: answers search requests with hits; rag: answers questions "
                   "(retrieve, then generate) with citations, as an MLflow ResponsesAgent.")
@click.option("--generator", default=None, cls=HelpFrom, help_from=generators_help,
              metavar="NAME")
@click.option("--generator-option", "generator_options", multiple=True, metavar="KEY=VALUE",
              help="--kind rag: a generator option, VALUE as JSON (repeatable), as in ask.")
@click.option("--prompt", default=None,
              help="--kind rag with a generator that reads a prompt: prompts:/NAME@ALIAS or "
                   "prompts:/NAME/VERSION, recorded as NAME/VERSION [default: the shipped one, "
                   "registered on first use].")
def log_model_command(
    store_path: Path | str, name: str, register: str | None, alias: str | None,
    experiment: str | None, tracking_uri: str | None, include_pii: bool, live: bool,
    kind: str, generator: str | None, generator_options: tuple[str, ...], prompt: str | None,
) -> None:
    """Log the store as a pyfunc model (a consistent bundle + models-from-code): a retriever,
    or with --kind rag a question answerer.

    Serve it with `mlflow models serve -m models:/NAME@ALIAS --env-manager local`.
    """
    from mlflow_rag.cli.answers import parse_options
    from mlflow_rag.tracking_model import log_model

    options = parse_options(generator_options)
    if options:
        from mlflow_rag.generate.registry import check_option_names, generator_kind

        check_option_names(generator_kind(generator or "extractive"), list(options))
    check_tracking(tracking_uri)
    info = log_model(
        store_path, name=name, register=register, alias=alias, experiment=experiment,
        tracking_uri=tracking_uri, model_config={"include_pii": True} if include_pii else None,
        live=live, kind=kind, generator=generator, generator_options=options or None,
        prompt=prompt,
    )
    click.echo(info.model_uri)
    if register:
        click.echo(f"models:/{register}/{info.registered_model_version}")
        if alias:
            click.echo(f"models:/{register}@{alias}")


@main.command()
@click.argument("dataset_arg", metavar="[DATASET]", required=False)
@click.option("--dataset", "dataset_opt", default=None,
              help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/), a .csv/.jsonl questions "
                   "file (with --corpus) or beir:NAME.")
@click.option("--variants", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Variant grid (YAML/JSON), e.g. evaluations/scifact.yaml "
                   "[default: bm25, dense and hybrid with minilm].")
@click.option("--experiment", default=None, help=EXPERIMENT_HELP)
@click.option("--split", default=None, help="qrels split [default: the grid's, else test].")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="Evaluate the first N judged queries only.")
@click.option("--tracking-uri", default=None,
              help=TRACKING_URI_HELP)
@click.option("--work-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Keep the stores here; a re-run reuses them [default: MLFLOW_RAG_CACHE_DIR/"
                   "eval (~/.cache/mlflow-rag/eval), which the child runs name; with "
                   "--no-track a temporary directory].")
@click.option("--register", default=None,
              help="Log the best variant's store as a model registered under this name.")
@click.option("--alias", default="champion", show_default=True, help="Alias for --register.")
@click.option("--metric", default=None, help="Metric that picks the best variant [default: the "
                                             "grid's, else ndcg_at_10].")
@click.option("--corpus", multiple=True,
              help="Documents of a questions-file dataset (files, folders); repeatable.")
@click.option("--id-column", default=None,
              help="CSV/JSONL corpus: the column holding the ids the questions file names.")
@click.option("--text-columns", default=None,
              help="CSV/JSONL corpus: comma-separated text columns (as ingest takes them).")
@click.option("--engine", type=Names("mlflow_rag.engines.ENGINES"), default="local",
              show_default=True,
              help="spark: search the queries on the active Spark session (the store shipped "
                   "as a bundle); the same metrics, latency measured on the executors.")
@click.option("--no-track", is_flag=True, help="Print the comparison only; log no MLflow runs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the outcome as a JSON object (variants best first, runs, champion).")
def evaluate(
    dataset_arg: str | None, dataset_opt: str | None, variants: Path | None,
    experiment: str | None, split: str | None, max_queries: int | None,
    tracking_uri: str | None, work_dir: Path | None, register: str | None, alias: str,
    metric: str | None, corpus: tuple[str, ...], id_column: str | None,
    text_columns: str | None, engine: str, no_track: bool, as_json: bool,
) -> None:
    """Evaluate a grid of retrieval variants on a dataset: one MLflow child run per variant.

    Prints a comparison table (best first) and, with --register, the champion model's URI.
    """
    from mlflow_rag.eval_tracking import evaluate as run_evaluation
    from mlflow_rag.eval_tracking import format_comparison

    if dataset_arg and dataset_opt and dataset_arg != dataset_opt:
        raise click.UsageError("give the dataset once: as an argument or with --dataset")
    dataset = dataset_opt or dataset_arg
    if not dataset:
        raise click.UsageError("name a dataset: --dataset PATH (a BEIR folder, a questions file "
                               "or beir:NAME)")
    if not no_track:
        check_tracking(tracking_uri)
    outcome = run_evaluation(
        dataset, variants=variants, experiment=experiment, split=split, max_queries=max_queries,
        tracking_uri=tracking_uri, work_dir=work_dir, register=register, alias=alias,
        metric=metric, corpus=corpus, track=not no_track, engine=engine,
        progress=sys.stderr.isatty() or bool(os.environ.get("MLFLOW_RAG_PROGRESS")),
        loader_options={**({"id_column": id_column} if id_column else {}),
                        **({"text_columns": split_commas(text_columns)} if text_columns else {})},
    )
    if not as_json:  # every variant's scores are capped by these: say so first
        from mlflow_rag.eval_tracking import corpus_problem_lines

        for line in corpus_problem_lines(outcome.result):
            click.echo(f"warning: {line}", err=True)
    if as_json:
        from mlflow_rag.eval_tracking import outcome_json

        echo_json(outcome_json(outcome, register=register, alias=alias))
        return
    result = outcome.result
    click.echo(f"dataset {result.dataset.name} ({len(result.dataset.queries)} queries, "
               f"split {result.dataset.split or '-'}), grid {result.grid.name}: "
               f"{len(result.results)} variants in {result.seconds:.1f}s")
    click.echo(format_comparison(result, metric=outcome.metric))
    click.echo(f"best by {outcome.metric}: {outcome.best.variant.label} "
               f"({outcome.best.metrics[outcome.metric]:.4f})")
    if outcome.parent_run_id:
        click.echo(f"evaluation run {outcome.parent_run_id}")
    if outcome.model_uri:
        click.echo(f"champion: models:/{register}@{alias} (version {outcome.registered_version})")
