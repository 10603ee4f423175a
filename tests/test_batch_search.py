"""``mlflow-rag batch-search``: a file of queries through the registered model into a Parquet
table of hits, as an MLflow run, with the served model's answers and errors (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from tests import helpers_mlflow
from tests.helpers_mlflow import log_champion

tracking_template = helpers_mlflow.tracking_template  # a shared fixture

QUERIES = pd.DataFrame({
    "id": ["q1", "q2", "q3"],
    "query": ["green tea brewing", "flat bicycle tyre", "honey bees"],
    "k": [1, 3, 2],
    "note": ["dropped", "dropped", "dropped"],
})


@pytest.fixture(scope="module")
def logged(tracking_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("batch")
    uri, _, _ = log_champion(root, tracking_template)
    return root, uri


def run(root: Path, uri: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["batch-search", *args, "--model", "models:/rag@champion",
                                     "--tracking-uri", uri, "--experiment", "batch"],
                              catch_exceptions=False)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_query_file_becomes_a_parquet_of_the_models_hits_and_a_run(
        logged: tuple[Path, str], tmp_path: Path, suffix: str) -> None:
    root, uri = logged
    path = tmp_path / f"queries{suffix}"
    if suffix == ".csv":
        QUERIES.to_csv(path, index=False)
    elif suffix == ".jsonl":
        QUERIES.to_json(path, orient="records", lines=True)
    else:
        QUERIES.to_parquet(path)
    out = tmp_path / "hits.parquet"
    result = run(root, uri, str(path), "--output", str(out), "--mode", "hybrid", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    hits = pd.read_parquet(out)
    assert report["queries"] == 3 and report["hits"] == len(hits) == 6  # k per row: 1 + 3 + 2
    assert list(hits.columns) == ["query_index", "id", "query", "rank", "score", "chunk_id",
                                  "document_id", "chunk_type", "text", "source_path", "metadata"]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/rag@champion")
    for index, row in QUERIES.iterrows():
        expected = model.predict(pd.DataFrame({"query": [row["query"]]}),
                                 params={"k": int(row["k"]), "mode": "hybrid"})
        got = hits[hits.query_index == index]
        assert got["chunk_id"].tolist() == expected["chunk_id"].tolist()
        assert set(got["id"]) == {row["id"]}
    run_data = mlflow.get_run(report["run_id"]).data
    assert run_data.params["engine"] == "local" and run_data.params["mode"] == "hybrid"
    assert run_data.metrics["queries"] == 3 and run_data.metrics["hits"] == 6
    assert run_data.metrics["queries_per_second"] > 0
    artifacts = mlflow.MlflowClient().list_artifacts(report["run_id"], "hits")
    assert [a.path for a in artifacts] == ["hits/hits.parquet"]


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("queries.txt", "green tea\n", "unknown query file type '.txt'; choose from"),
    ("queries.csv", "question\ngreen tea\n", "has no 'query' column"),
    ("queries.csv", "query,k\ngreen tea,\nbees,2\n", "the k column has empty cells"),
    ("queries.csv", "query,k\ngreen tea,0\n", "row 0: k must be"),
    ("queries.csv", "query,mode\ngreen tea,semantic\n", "row 0: Unknown search mode 'semantic'"),
])
def test_a_bad_query_file_is_one_line_and_writes_nothing(
        logged: tuple[Path, str], tmp_path: Path, name: str, content: str, fragment: str) -> None:
    _root, uri = logged
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "hits.parquet"
    result = CliRunner().invoke(main, ["batch-search", str(path), "--model",
                                       "models:/rag@champion", "--output", str(out),
                                       "--tracking-uri", uri, "--no-track"])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and fragment in result.output, result.output
    assert not out.exists()
