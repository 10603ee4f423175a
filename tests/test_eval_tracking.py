"""Evaluations as MLflow runs on a real local tracking store (SQLite in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.eval_tracking import (
    COMPARISON_TABLE,
    PER_QUERY_TABLE,
    SIGNIFICANCE_FILE,
    TAG_BEST_RUN_ID,
    TAG_BEST_VARIANT,
    evaluate,
)
from mlflow_rag.evaluation.variants import parse_grid
from tests import helpers_mlflow
from tests.test_harness import QUERIES, write_beir

tracking_template = helpers_mlflow.tracking_template  # shared fixtures
tracking_uri = helpers_mlflow.tracking_uri

GRID: dict[str, Any] = {"name": "tiny", "ks": [1, 3, 5], "metric": "ndcg_at_5",
        "grid": {"embedder": "tfidf", "chunk_size": 64, "mode": ["bm25", "dense", "hybrid"], "k": 5}}


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tiny")


def _children(client: mlflow.MlflowClient, parent_id: str) -> list[mlflow.entities.Run]:
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_one_parent_run_with_a_child_per_variant_and_metrics_side_by_side(
    beir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    outcome = evaluate(beir, variants=parse_grid(GRID), experiment="eval", tracking_uri=tracking_uri,
                       work_dir=tmp_path / "work", progress=False)
    client = mlflow.MlflowClient(tracking_uri)
    assert outcome.parent_run_id is not None
    children = _children(client, outcome.parent_run_id)
    assert sorted(c.info.run_name for c in children) == ["bm25", "dense-tfidf", "hybrid-tfidf"]
    for child in children:
        params = child.data.params
        assert params["mode"] in ("bm25", "dense", "hybrid")
        assert {"chunker", "chunk_size", "chunk_overlap", "embedder", "index_type", "k"} <= set(params)
        for name in ("ndcg_at_5", "recall_at_5", "mrr_at_5", "map_at_5", "precision_at_5",
                     "hit_rate_at_1", "latency_p50_ms", "latency_p95_ms", "ingest_seconds",
                     "index_bytes"):
            assert name in child.data.metrics, (child.info.run_name, name)
        artifacts = [a.path for a in client.list_artifacts(child.info.run_id)]
        assert PER_QUERY_TABLE in artifacts
        table = json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=child.info.run_id, artifact_path=PER_QUERY_TABLE, dst_path=str(tmp_path / "dl"),
        )).read_text())
        assert set(table["columns"]) >= {"query", "retrieved_ids", "relevant_ids", "ndcg_at_10"}
        assert len(table["data"]) == len(QUERIES)
        assert child.inputs is not None
        assert child.inputs.dataset_inputs[0].dataset.digest == outcome.result.dataset.digest[:36]
        curve = client.get_metric_history(child.info.run_id, "recall_curve")
        assert [m.step for m in curve] == [1, 3, 5]

    frame = mlflow.search_runs(experiment_names=["eval"],
                               filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert frame["metrics.ndcg_at_5"].notna().all() and len(frame) == 3

    parent = client.get_run(outcome.parent_run_id)
    best = outcome.best
    assert parent.data.tags[TAG_BEST_VARIANT] == best.variant.label
    assert parent.data.tags[TAG_BEST_RUN_ID] == outcome.child_run_ids[best.variant.label]
    assert parent.data.metrics["best_ndcg_at_5"] == max(c.data.metrics["ndcg_at_5"] for c in children)
    assert parent.data.params["queries"] == str(len(QUERIES))
    assert parent.inputs is not None
    assert parent.inputs.dataset_inputs[0].dataset.digest == outcome.result.dataset.digest[:36]
    paths = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert COMPARISON_TABLE in paths and SIGNIFICANCE_FILE in paths
    comparison = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=outcome.parent_run_id, artifact_path=COMPARISON_TABLE, dst_path=str(tmp_path / "p"),
    )).read_text())
    assert {"p_value_vs_best", "significant_vs_best"} <= set(comparison["columns"])
    plots = {a.path for a in client.list_artifacts(outcome.parent_run_id, "plots")}
    assert {"plots/metrics_by_variant.png", "plots/recall_at_k.png"} <= plots


def test_register_best_variant_as_champion(beir: Path, tracking_uri: str, tmp_path: Path) -> None:
    grid = parse_grid({**GRID, "grid": {**GRID["grid"], "mode": ["bm25", "dense"]}})
    outcome = evaluate(beir, variants=grid, experiment="eval", tracking_uri=tracking_uri,
                       work_dir=tmp_path / "work", register="tiny-retriever", progress=False)
    client = mlflow.MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("tiny-retriever", "champion")
    assert str(version.version) == outcome.registered_version
    assert version.tags[TAG_BEST_VARIANT] == outcome.best.variant.label
    assert version.tags["mlflow_rag.mode"] == outcome.best.variant.mode
    model = mlflow.pyfunc.load_model("models:/tiny-retriever@champion")
    answer = model.predict({"query": ["how to brew green tea"]},
                           params={"k": 1, "mode": outcome.best.variant.mode})
    assert answer["document_id"].iloc[0].startswith("tea-")


def test_cli_evaluate_prints_the_comparison_and_logs_runs(
    beir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps(GRID), encoding="utf-8")
    result = CliRunner().invoke(main, [
        "evaluate", "--dataset", str(beir), "--variants", str(grid_file), "--experiment", "cli-eval",
        "--tracking-uri", tracking_uri, "--work-dir", str(tmp_path / "w"), "--max-queries", "4",
    ])
    assert result.exit_code == 0, result.output
    assert "best by ndcg_at_5" in result.output
    for label in ("bm25", "dense-tfidf", "hybrid-tfidf"):
        assert label in result.output
    runs = mlflow.search_runs(experiment_names=["cli-eval"])
    assert len(runs) == 4  # parent + 3 children
    assert set(runs["params.queries"].dropna()) == {"4"}


def test_cli_evaluate_errors_are_one_clear_line(beir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  mode: vector\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["evaluate", "--dataset", str(beir), "--variants", str(bad),
                                       "--no-track"])
    assert result.exit_code == 1
    assert "Unknown search mode 'vector'" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--no-track"])
    assert result.exit_code == 2 and "--dataset" in result.output


def test_under_mlflow_run_the_project_run_is_the_parent(
    beir: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = mlflow.MlflowClient(tracking_uri)
    project = client.create_run(client.create_experiment("project"))
    # `mlflow run` logged the -P values as params of its run before the command started.
    client.log_param(project.info.run_id, "dataset", str(beir))
    client.log_param(project.info.run_id, "split", "test")
    monkeypatch.setenv("MLFLOW_RUN_ID", project.info.run_id)
    outcome = evaluate(beir, variants=parse_grid(GRID), experiment="ignored", tracking_uri=tracking_uri,
                       work_dir=tmp_path / "work", progress=False)
    assert outcome.parent_run_id == project.info.run_id
    assert len(_children(client, project.info.run_id)) == 3
    params = client.get_run(project.info.run_id).data.params
    assert params["dataset"] == str(beir) and params["mlflow_rag.dataset"] == "tiny"
    assert params["split"] == "test" and "mlflow_rag.split" not in params


def test_dataset_source_is_the_download_url_or_the_absolute_path(beir: Path) -> None:
    from dataclasses import replace

    from mlflow_rag.eval_tracking import dataset_source_uri
    from mlflow_rag.evaluation.datasets import load_beir_folder

    dataset = load_beir_folder(beir)
    assert dataset_source_uri(dataset) == str(beir.resolve())
    downloaded = replace(dataset, source="beir:scifact (https://example.org/beir/scifact.zip)")
    assert dataset_source_uri(downloaded) == "https://example.org/beir/scifact.zip"
    assert dataset_source_uri(replace(dataset, source="gone/elsewhere")) is None
