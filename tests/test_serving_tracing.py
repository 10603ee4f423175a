"""Tracing of the served retriever: the switch (MLFLOW_RAG_TRACE, the model config ``trace``)
and MLflow's sampling (MLFLOW_TRACE_SAMPLING_RATIO). Off or sampled out, a request records no
trace and answers exactly what a traced one answers."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

from mlflow_rag.errors import InvalidInput
from mlflow_rag.serving import QUERY_LOG_ENV, TRACE_ENV
from tests import helpers_mlflow
from tests.helpers_mlflow import free_port, log_champion, post_json, server_process, subprocess_env

tracking_template = helpers_mlflow.tracking_template  # a shared fixture

SAMPLING_ENV = "MLFLOW_TRACE_SAMPLING_RATIO"  # MLflow's, read when its tracer is set up
PARAMS = {"k": 2, "mode": "hybrid"}


@pytest.fixture(scope="module")
def logged(tracking_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("tracing")
    uri, _, _ = log_champion(root, tracking_template)
    return root, uri


@pytest.fixture(autouse=True)
def _tracking(logged: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root, uri = logged
    monkeypatch.chdir(root)
    for name in (QUERY_LOG_ENV, TRACE_ENV, SAMPLING_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.tracing.enable()
    yield
    mlflow.tracing.reset()  # the sampler is read at set-up: the next tracer reads it again
    mlflow.set_tracking_uri(previous)


def queries(*texts: str) -> pd.DataFrame:
    return pd.DataFrame({"query": list(texts)})


def _answer(model: Any) -> pd.DataFrame:
    return model.predict(queries("green tea brewing", "flat bicycle tyre"), params=PARAMS)


def test_mlflow_rag_trace_off_records_no_trace_and_answers_the_same_hits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    traced = mlflow.pyfunc.load_model("models:/rag@champion")
    before = mlflow.get_last_active_trace_id()
    want = _answer(traced)
    traced_id = mlflow.get_last_active_trace_id()
    assert traced_id is not None and traced_id != before  # the control: on by default

    monkeypatch.setenv(TRACE_ENV, "off")  # wins over the config, as MLFLOW_RAG_QUERY_LOG does
    quiet = mlflow.pyfunc.load_model("models:/rag@champion", model_config={"trace": "text"})
    got = _answer(quiet)
    assert mlflow.get_last_active_trace_id() == traced_id
    pd.testing.assert_frame_equal(got, want)


def test_a_bad_mlflow_rag_trace_names_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TRACE_ENV, "everything")
    with pytest.raises(InvalidInput, match=r"Unknown MLFLOW_RAG_TRACE 'everything'; choose from "
                                           r"\['off', 'ids', 'text'\]"):
        mlflow.pyfunc.load_model("models:/rag@champion")


def test_mlflow_trace_sampling_ratio_is_honoured_and_sampled_out_requests_answer_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = mlflow.pyfunc.load_model("models:/rag@champion")
    want = _answer(model)
    traced_id = mlflow.get_last_active_trace_id()
    assert traced_id is not None

    monkeypatch.setenv(SAMPLING_ENV, "0")
    mlflow.tracing.reset()
    for _ in range(3):
        pd.testing.assert_frame_equal(_answer(model), want)
    assert mlflow.get_last_active_trace_id() == traced_id  # every request sampled out

    monkeypatch.setenv(SAMPLING_ENV, "1")
    mlflow.tracing.reset()
    pd.testing.assert_frame_equal(_answer(model), want)
    last = mlflow.get_last_active_trace_id()
    assert last != traced_id
    trace = mlflow.get_trace(last, flush=True)
    assert trace is not None
    # two queries: a CHAIN span of the request around one RETRIEVER span per query
    assert sorted((s.name, s.span_type) for s in trace.data.spans) == [
        ("predict", "CHAIN"), ("retrieve", "RETRIEVER"), ("retrieve", "RETRIEVER")]
    (root,) = [s for s in trace.data.spans if s.parent_id is None]
    assert root.inputs == {"queries": 2, "k": 2, "mode": "hybrid", "filtered": False,
                           "output": "rows"}
    assert root.attributes["mlflow_rag.trace"] == "ids"


def test_an_otlp_exporter_mlflow_cannot_build_is_an_error_in_the_log_at_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """MLflow, unable to build the exporter, traces nothing and says so at debug level only."""
    from mlflow_rag.pyfunc_model import check_otlp_exporter

    assert check_otlp_exporter()  # no OTLP endpoint: nothing to build
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "carrier-pigeon")
    with caplog.at_level("ERROR", logger="mlflow_rag.pyfunc_model"):
        assert not check_otlp_exporter()
    (record,) = caplog.records
    assert "will record no trace" in record.getMessage()
    assert "carrier-pigeon" in record.getMessage()


@pytest.mark.slow
def test_a_server_with_tracing_off_exports_no_trace_and_answers_what_predict_does(
    logged: tuple[Path, str], tmp_path: Path,
) -> None:
    root, uri = logged
    experiment = mlflow.MlflowClient(uri).create_experiment("served-traces")
    body = {"dataframe_split": {"columns": ["query"], "data": [["green tea brewing"]]},
            "params": PARAMS}
    want = mlflow.pyfunc.load_model("models:/rag@champion").predict(
        queries("green tea brewing"), params=PARAMS).to_dict(orient="records")
    answers = []
    for name, env in (("off", {TRACE_ENV: "off"}), ("on", {})):
        port = free_port()
        args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/rag@champion",
                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
        with server_process(args, health_url=f"http://127.0.0.1:{port}/ping",
                            log_path=tmp_path / f"serve-{name}.log", cwd=root,
                            env=subprocess_env(MLFLOW_TRACKING_URI=uri,
                                               MLFLOW_EXPERIMENT_ID=experiment, **env)):
            status, answer = post_json(f"http://127.0.0.1:{port}/invocations", body)
            assert status == 200, answer
            answers.append(answer["predictions"])
            if name == "on":  # the control: this experiment does receive served traces
                _wait_for_traces(uri, experiment, count=1)
    assert answers == [want, want]
    # the server with tracing off stopped (its queue flushed) before the other started
    assert len(_traces(uri, experiment)) == 1


def _traces(uri: str, experiment: str) -> list[Any]:
    return list(mlflow.MlflowClient(uri).search_traces(locations=[experiment]))


def _wait_for_stop(serve_log: Path) -> None:
    """Until uvicorn has run the app's shutdown hooks and ended."""
    deadline = time.monotonic() + 60
    while "Finished server process" not in serve_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, serve_log.read_text(errors="replace")[-2000:]
        time.sleep(0.2)


def _wait_for_traces(uri: str, experiment: str, *, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_traces(uri, experiment)) < count:
        assert time.monotonic() < deadline, f"no served trace in {timeout:.0f} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_traces_still_queued_when_the_server_stops_are_exported_at_its_shutdown(
    logged: tuple[Path, str], tmp_path: Path,
) -> None:
    """uvicorn ends the process on SIGTERM without running atexit: the model flushes its
    traces (and query log) at the server's shutdown. Spans held in MLflow's batch (a batch
    larger than the requests, an interval longer than the test) reach the tracking store
    only through that flush."""
    import sqlite3

    root, uri = logged
    experiment = mlflow.MlflowClient(uri).create_experiment("stopped-server")
    body = {"dataframe_split": {"columns": ["query"], "data": [["green tea brewing"]]},
            "params": PARAMS}
    port, requests = free_port(), 6
    log_path = tmp_path / "queries.db"
    args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/rag@champion",
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    env = subprocess_env(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_ID=experiment,
                         MLFLOW_ASYNC_TRACE_LOGGING_MAX_SPAN_BATCH_SIZE="1000",
                         MLFLOW_ASYNC_TRACE_LOGGING_MAX_INTERVAL_MILLIS="600000",
                         **{QUERY_LOG_ENV: str(log_path)})
    serve_log = tmp_path / "serve.log"
    with server_process(args, health_url=f"http://127.0.0.1:{port}/ping", log_path=serve_log,
                        cwd=root, env=env) as proc:
        for _ in range(requests):
            status, answer = post_json(f"http://127.0.0.1:{port}/invocations", body)
            assert status == 200, answer
        assert _traces(uri, experiment) == []  # all held in the batch
        os.killpg(proc.pid, signal.SIGTERM)  # as a process manager stops it
        _wait_for_stop(serve_log)
    _wait_for_traces(uri, experiment, count=requests)
    traces = _traces(uri, experiment)
    assert len(traces) == requests
    # a one-query request: one span per trace, the retrieve span
    assert {tuple(s.name for s in t.data.spans) for t in traces} == {("retrieve",)}
    with sqlite3.connect(log_path) as db:
        assert db.execute("SELECT count(*) FROM queries").fetchone()[0] == requests


@pytest.mark.slow
def test_every_served_request_is_traced_over_otlp_to_a_tracking_server(
    logged: tuple[Path, str], tmp_path: Path,
) -> None:
    """The recommended setting for every request traced (docs/serving.md, Tracing): spans
    exported over OTLP to the tracking server's /v1/traces; each request's trace is stored."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    root, uri = logged
    experiment = mlflow.MlflowClient(uri).create_experiment("served-over-otlp")
    tracking_port, port, requests = free_port(), free_port(), 20
    tracking = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                "--host", "127.0.0.1", "--port", str(tracking_port), "--workers", "1"]
    serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/rag@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    otlp = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{tracking_port}/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"x-mlflow-experiment-id={experiment}"}
    with server_process(tracking, health_url=f"http://127.0.0.1:{tracking_port}/health",
                        log_path=tmp_path / "tracking.log", cwd=root, env=subprocess_env(),
                        timeout=300):
        with server_process(serve, health_url=f"http://127.0.0.1:{port}/ping",
                            log_path=tmp_path / "serve.log", cwd=root,
                            env=subprocess_env(MLFLOW_TRACKING_URI=uri, **otlp)) as proc:
            for i in range(requests):
                body = {"dataframe_split": {"columns": ["query"],
                                            "data": [[f"green tea brewing {i}"]]},
                        "params": PARAMS}
                status, answer = post_json(f"http://127.0.0.1:{port}/invocations", body)
                assert status == 200, answer
            os.killpg(proc.pid, signal.SIGTERM)  # the shutdown flush exports the last batch
            # not proc.wait(): proc is the `mlflow models serve` parent, which exits at once;
            # uvicorn, its child, is still shutting down (and flushing) when it does
            _wait_for_stop(tmp_path / "serve.log")
        _wait_for_traces(uri, experiment, count=requests)
    traces = _traces(uri, experiment)
    assert len(traces) == requests
    assert {tuple(s.name for s in t.data.spans) for t in traces} == {("retrieve",)}
    assert "cannot build its OTLP exporter" not in (tmp_path / "serve.log").read_text()
