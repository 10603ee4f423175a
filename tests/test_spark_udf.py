"""Batch retrieval with the registered model on Spark: ``mlflow.pyfunc.spark_udf`` over a
DataFrame of queries gives each query its ranked hits as a typed array of structs (the
``output: nested`` param, ``SPARK_RESULT_TYPE``), the same hits in-process ``predict`` gives,
with per-row ``k``, ``mode`` and ``filters`` columns (issue 14)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

from mlflow_rag.serving import SPARK_RESULT_TYPE
from tests import helpers_mlflow
from tests.helpers_mlflow import log_champion
from tests.spark_session import local_spark

tracking_template = helpers_mlflow.tracking_template  # a shared fixture
pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from local_spark(tmp_path_factory.mktemp("spark"))


@pytest.fixture(scope="module")
def champion_uri(tracking_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("spark-model")
    uri, _, _ = log_champion(root, tracking_template)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield "models:/rag@champion"
    mlflow.set_tracking_uri(previous)


def test_spark_udf_gives_each_query_its_hits_as_in_process_predict_does(
        spark: Any, champion_uri: str) -> None:
    from pyspark.sql import functions as F

    texts = ["green tea brewing", "flat bicycle tyre", "honey bees", "castling the king"]
    udf = mlflow.pyfunc.spark_udf(spark, champion_uri, result_type=SPARK_RESULT_TYPE,
                                  env_manager="local", params={"k": 3, "output": "nested"})
    frame = spark.createDataFrame(pd.DataFrame({"id": range(len(texts)), "query": texts}))
    scored = frame.withColumn("result", udf(F.struct("query")))
    # typed: Spark SQL can explode the hits and select their fields
    exploded = (scored.select("id", F.explode("result.hits").alias("hit"))
                .select("id", "hit.rank", "hit.chunk_id", "hit.document_id", "hit.score"))
    assert dict(exploded.dtypes) == {"id": "bigint", "rank": "bigint", "chunk_id": "string",
                                     "document_id": "string", "score": "double"}
    got = exploded.toPandas().sort_values(["id", "rank"])
    model = mlflow.pyfunc.load_model(champion_uri)
    expected = model.predict(pd.DataFrame({"query": texts}), params={"k": 3})
    assert got["chunk_id"].tolist() == expected["chunk_id"].tolist()
    assert got["id"].tolist() == expected["query_index"].tolist()
    assert got["score"].tolist() == pytest.approx(expected["score"].tolist())
    assert got.groupby("id")["document_id"].first().tolist() == ["tea", "bikes", "bees", "chess"]


def test_per_row_columns_set_k_mode_and_filters_for_their_query(spark: Any,
                                                                champion_uri: str) -> None:
    from pyspark.sql import functions as F

    udf = mlflow.pyfunc.spark_udf(spark, champion_uri, result_type=SPARK_RESULT_TYPE,
                                  env_manager="local", params={"output": "nested"})
    rows = pd.DataFrame({
        "query": ["green tea brewing", "green tea brewing", "honey bees"],
        "k": [1, 4, 2],
        "mode": ["bm25", None, "dense"],
        "filters": [None, json.dumps({"country": "Germany"}), None],
    })
    scored = spark.createDataFrame(rows).withColumn(
        "result", udf(F.struct("query", "k", "mode", "filters"))).toPandas()
    hits = [list(result["hits"]) for result in scored["result"]]
    assert [len(h) for h in hits] == [1, 4, 2]
    assert hits[0][0]["document_id"] == "tea"
    assert {h["document_id"] for h in hits[1]} <= {"bikes", "bees"}
    assert hits[2][0]["document_id"] == "bees"


def test_batch_search_on_spark_writes_what_the_local_engine_writes(
        spark: Any, champion_uri: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mlflow_rag.cli import main

    queries = tmp_path / "queries.csv"
    pd.DataFrame({"id": [f"q{i}" for i in range(6)],
                  "query": ["green tea brewing", "flat bicycle tyre", "honey bees",
                            "castling the king", "volcano lava", "mainframe COBOL"],
                  "k": [1, 2, 3, 1, 2, 3]}).to_csv(queries, index=False)
    tables = {}
    for engine in ("local", "spark"):  # the spark engine takes the active session (the fixture's)
        out = tmp_path / f"{engine}.parquet"
        result = CliRunner().invoke(main, [
            "batch-search", str(queries), "--model", champion_uri, "--output", str(out),
            "--engine", engine, "--tracking-uri", mlflow.get_tracking_uri(), "--json"],
            catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["run_id"]
        tables[engine] = pd.read_parquet(out)
    assert len(tables["local"]) == 12
    pd.testing.assert_frame_equal(tables["spark"], tables["local"])


def test_an_evaluation_on_spark_scores_what_the_local_one_scores(
        spark: Any, shared_data: Path, tmp_path: Path) -> None:
    """The query side on Spark: the same candidate lists, so every metric but latency is the
    same number (a flat index: exact, so no build order can change a list)."""
    from mlflow_rag.eval_tracking import evaluate

    dataset = shared_data / "scifact-train"
    grid = Path(__file__).resolve().parent.parent / "evaluations" / "small.yaml"
    metrics = {}
    for engine in ("local", "spark"):
        outcome = evaluate(dataset, variants=grid, split="train", max_queries=40, track=False,
                           progress=False, work_dir=tmp_path / engine, engine=engine)
        metrics[engine] = {
            result.variant.label: {name: value for name, value in result.metrics.items()
                                   if not any(t in name for t in ("latency", "seconds", "_ms"))}
            for result in outcome.result.results}
    assert set(metrics["spark"]) == set(metrics["local"]) and len(metrics["local"]) == 3
    assert metrics["spark"] == metrics["local"]
    assert all(m["ndcg_at_10"] > 0.1 for m in metrics["local"].values())
