"""``batch-search``: a file of queries through a logged retriever model into a Parquet table
of hits, as an MLflow run. ``local`` runs the model in this process, request by request;
``spark`` applies it with ``mlflow.pyfunc.spark_udf`` (one typed row of hits per query), on
the Spark session the caller configured (``local[*]`` when there is none)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlflow_rag.batch_queries import batches, hits_table, nested_hits, read_queries
from mlflow_rag.engines import ENGINES, spark_session
from mlflow_rag.errors import InvalidInput
from mlflow_rag.serving import (
    MAX_QUERIES_PER_REQUEST,
    QUERY_COLUMN,
    ROW_PARAM_COLUMNS,
    SPARK_BATCH_CONF,
    SPARK_RESULT_TYPE,
)
from mlflow_rag.tracking_session import TAG_RUN_TYPE, log_params_once, mlflow_session, start_run


@dataclass(frozen=True)
class BatchReport:
    queries: int
    hits: int
    seconds: float
    output: Path
    run_id: str | None

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.seconds if self.seconds > 0 else 0.0


def batch_search(
    queries_path: Path, *, model_uri: str, output: Path, engine: str = "local",
    params: dict[str, Any] | None = None, experiment: str | None = None,
    tracking_uri: str | None = None, track: bool = True,
) -> BatchReport:
    """Search every query of ``queries_path`` with the model and write the hits to
    ``output`` (Parquet); ``params`` (k, mode, filters) apply where a row has no column."""
    if engine not in ENGINES:
        raise InvalidInput(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    if output.suffix.lower() != ".parquet":
        raise InvalidInput(f"the output {output} must be a .parquet file")
    if not output.parent.is_dir():
        raise InvalidInput(f"the directory of the output {output} does not exist")
    queries = read_queries(queries_path)
    asked = {**(params or {}), "output": "nested"}
    with mlflow_session(tracking_uri, experiment) as mlflow:
        started = time.perf_counter()
        if engine == "local":
            model = mlflow.pyfunc.load_model(model_uri)
            nested: list[list[dict]] = []
            for batch in batches(queries):
                request = batch[[c for c in (QUERY_COLUMN, *ROW_PARAM_COLUMNS) if c in batch]]
                nested.extend(nested_hits(model.predict(request.reset_index(drop=True),
                                                        params=asked)))
        else:
            nested = _spark_hits(mlflow, queries, model_uri=model_uri, params=asked)
        seconds = time.perf_counter() - started
        table = hits_table(queries, nested)
        table.to_parquet(output, index=False)
        run_id = None
        if track:
            run_id = _log_run(mlflow, queries_path=queries_path, model_uri=model_uri,
                              engine=engine, params=params or {}, output=output,
                              queries=len(queries), hits=len(table), seconds=seconds)
    return BatchReport(queries=len(queries), hits=len(table), seconds=seconds, output=output,
                       run_id=run_id)


def _spark_hits(mlflow: Any, queries: pd.DataFrame, *, model_uri: str,
                params: dict[str, Any]) -> list[list[dict]]:
    spark = spark_session("mlflow-rag batch-search")
    from pyspark.sql import functions as F
    spark.conf.set(SPARK_BATCH_CONF, str(MAX_QUERIES_PER_REQUEST))  # one request per batch
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=SPARK_RESULT_TYPE,
                                  env_manager="local", params=params)
    columns = [c for c in (QUERY_COLUMN, *ROW_PARAM_COLUMNS) if c in queries.columns]
    ordered = queries[columns].assign(_row=range(len(queries)))
    frame = spark.createDataFrame(ordered)
    scored = frame.select("_row", udf(F.struct(*columns)).alias("result"))
    rows: pd.DataFrame = scored.toPandas()
    rows = rows.sort_values("_row")
    return [[dict(hit) for hit in result["hits"]] for result in rows["result"]]


def _log_run(mlflow: Any, *, queries_path: Path, model_uri: str, engine: str,
             params: dict[str, Any], output: Path, queries: int, hits: int,
             seconds: float) -> str:
    with start_run(mlflow, f"batch-search {queries_path.name}") as run:
        mlflow.set_tag(TAG_RUN_TYPE, "batch-search")
        log_params_once(mlflow, {
            "model_uri": model_uri, "engine": engine, "queries_file": str(queries_path),
            **{key: str(value) for key, value in params.items() if value not in (None, "")},
        })
        mlflow.log_metrics({"queries": queries, "hits": hits, "seconds": seconds,
                            "queries_per_second": queries / seconds if seconds > 0 else 0.0,
                            "ms_per_query": 1000 * seconds / queries})
        mlflow.log_artifact(str(output), artifact_path="hits")
        return str(run.info.run_id)
