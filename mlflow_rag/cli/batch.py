"""``batch-search``: a file of queries through a logged retriever model into a Parquet
table of hits, locally or on Spark, as an MLflow run."""

from __future__ import annotations

from pathlib import Path

import click

from mlflow_rag.cli.group import (
    EXPERIMENT_HELP,
    TRACKING_URI_HELP,
    Names,
    check_tracking,
    echo_json,
    main,
)


@main.command("batch-search")
@click.argument("queries", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_uri", required=True,
              help="The retriever model, e.g. models:/NAME@champion or runs:/ID/retriever.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The Parquet file of hits to write (one row per hit).")
@click.option("--engine", type=Names("mlflow_rag.engines.ENGINES"), default="local",
              show_default=True,
              help="local: this process; spark: mlflow.pyfunc.spark_udf on the active Spark "
                   "session (spark-submit's), else a local one.")
@click.option("-k", "k", type=click.IntRange(min=1), default=None,
              help="Hits per query where the file has no k column [default: the model's, 5].")
@click.option("--mode", type=Names("mlflow_rag.search.MODES"), default=None,
              help="Ranking where the file has no mode column [default: the model's].")
@click.option("--filter", "filter_json", default=None,
              help="A JSON metadata filter where the file has no filters column.")
@click.option("--experiment", default=None, help=EXPERIMENT_HELP)
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--no-track", is_flag=True, help="Do not log an MLflow run.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def batch_search_command(
    queries: Path, model_uri: str, output: Path, engine: str, k: int | None, mode: str | None,
    filter_json: str | None, experiment: str | None, tracking_uri: str | None,
    no_track: bool, as_json: bool,
) -> None:
    """Search every query of QUERIES (CSV, Parquet or JSONL with a `query` column; optional
    `id`, `k`, `mode` and `filters` columns) with a logged model; write the hits to --output.

    The model answers as it does when served (the same params, filters and errors); each row's
    k, mode and filters columns override the options for that query.
    """
    from mlflow_rag.tracking_batch import batch_search

    check_tracking(tracking_uri)
    params = {key: value for key, value in (("k", k), ("mode", mode), ("filters", filter_json))
              if value is not None}
    report = batch_search(queries, model_uri=model_uri, output=output, engine=engine,
                          params=params, experiment=experiment, tracking_uri=tracking_uri,
                          track=not no_track)
    if as_json:
        echo_json({"queries": report.queries, "hits": report.hits,
                   "seconds": round(report.seconds, 3), "output": str(report.output),
                   "run_id": report.run_id})
        return
    click.echo(f"{report.queries} queries -> {report.hits} hits in {report.output} "
               f"({report.seconds:.2f}s, {report.queries_per_second:.1f} queries/s)")
    if report.run_id:
        click.echo(f"run: {report.run_id}")
