"""The RAG model (`log-model --kind rag`): a ResponsesAgent logged from code with the store's
bundle, registered with an alias, loaded in process and served by `mlflow models serve`.

Everything is real: a SQLite tracking store in tmp, the models-from-code file, the registry,
the scoring server (slow test).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException

from mlflow_rag.cli import main
from mlflow_rag.errors import InvalidInput, PromptError, UnknownChoice
from mlflow_rag.serving import QUERY_LOG_ENV
from mlflow_rag.tracking_model import log_model
from tests import helpers_mlflow
from tests.chat_server import ChatServer
from tests.helpers_mlflow import (
    PII_EMAIL,
    build_store,
    copy_tracking_store,
    free_port,
    post_json,
    server_process,
    subprocess_env,
)

tracking_template = helpers_mlflow.tracking_template  # a shared fixture

SECRET = "confidential question from alice.private@example.org about green tea"


@dataclass(frozen=True)
class Logged:
    root: Path
    uri: str
    store: Path
    info: Any


@pytest.fixture(scope="module")
def logged(tracking_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    root = tmp_path_factory.mktemp("rag-model")
    uri = copy_tracking_store(tracking_template, root)
    store = build_store(root / "store")
    previous = Path.cwd()
    os.chdir(root)  # the artifacts of the new experiment go under root/mlruns
    try:
        info = log_model(store, kind="rag", name="rag", register="qa", alias="champion",
                         experiment="rag", tracking_uri=uri)
    finally:
        os.chdir(previous)
    return Logged(root=root, uri=uri, store=store, info=info)


@pytest.fixture(autouse=True)
def _tracking(logged: Logged, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(logged.root)
    monkeypatch.delenv(QUERY_LOG_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged.uri)
    mlflow.set_tracking_uri(logged.uri)


@pytest.fixture(scope="module")
def champion(logged: Logged) -> Any:
    mlflow.set_tracking_uri(logged.uri)
    return mlflow.pyfunc.load_model("models:/qa@champion")


def ask(question: str, **custom_inputs: Any) -> dict[str, Any]:
    return {"input": [{"role": "user", "content": question}],
            **({"custom_inputs": custom_inputs} if custom_inputs else {})}


def test_the_rag_model_is_a_registered_responses_agent_with_its_generator_in_the_config(
    logged: Logged,
) -> None:
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("qa", "champion")
    assert str(version.version) == str(logged.info.registered_model_version)
    assert "RAG model" in (version.description or "")
    assert "RAG models" in (client.get_registered_model("qa").description or "")
    model = mlflow.models.get_model_info("models:/qa@champion")
    assert model.metadata["task"] == "agent/v1/responses"
    assert model.metadata["mlflow_rag"]["kind"] == "rag"
    config = mlflow.pyfunc.load_model("models:/qa@champion").model_config
    assert config["generator"] == "extractive" and config["prompt"] == ""


def test_predict_answers_with_the_text_its_citations_and_the_output_id(champion: Any) -> None:
    out = champion.predict(ask("how do I fix a flat bicycle tyre?", k=3))
    item = out["output"][0]
    text = item["content"][0]["text"]
    assert "tyre levers" in text and "[bikes#0]" in text
    extra = out["custom_outputs"]
    assert extra["output_id"] == item["id"]
    assert extra["citations"][0] == {"chunk_id": "bikes#0", "document_id": "bikes",
                                     "source_path": "/data/bikes.md", "title": "Bicycle repair"}
    assert extra["generator"] == "extractive" and extra["prompt"] is None
    assert set(extra["latency_ms"]) == {"embed", "retrieve", "generate"}


def test_custom_inputs_carry_k_mode_and_filters(champion: Any) -> None:
    out = champion.predict(ask("honey bees and green tea", mode="bm25", k=2,
                               filters={"country": "Germany"}))
    documents = {c["document_id"] for c in out["custom_outputs"]["citations"]}
    assert documents == {"bees"}
    out = champion.predict(ask("honey bees", filters='{"country": "Japan"}'))
    assert "bees" not in {c["document_id"] for c in out["custom_outputs"]["citations"]}


def test_only_the_last_user_message_is_the_question(champion: Any) -> None:
    out = champion.predict({"input": [
        {"role": "user", "content": "volcano ash clouds"},
        {"role": "assistant", "content": "Explosive eruptions produce ash clouds."},
        {"role": "user", "content": [{"type": "input_text", "text": "chess castling king"}]},
    ]})
    assert out["custom_outputs"]["citations"][0]["document_id"] == "chess"


@pytest.mark.parametrize(("request_body", "fragment"), [
    (ask("   "), "the last user message: query must be a non-empty string"),
    (ask(SECRET, mode="semantic"), "Unknown search mode 'semantic'; choose from"),
    (ask(SECRET, k=0), "k must be"),
    (ask(SECRET, depth=3), "unknown custom_inputs ['depth']; choose from ['k', 'mode', 'filters']"),
    (ask(SECRET, filters=["x"]), "filters must be a JSON object"),
    ({"input": [{"role": "assistant", "content": SECRET}]}, "the request holds no user message"),
])
def test_bad_requests_are_one_line_400s_that_do_not_echo_the_question(
    champion: Any, request_body: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(MlflowException) as caught:
        champion.predict(request_body)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    message = caught.value.message
    assert fragment in message and "\n" not in message
    assert "confidential" not in message and PII_EMAIL not in message


def test_answers_are_written_to_the_query_log_with_their_generation_and_citations(
    logged: Logged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "queries.db"
    monkeypatch.setenv(QUERY_LOG_ENV, str(log_path))
    model = mlflow.pyfunc.load_model("models:/qa@champion")
    out = model.predict({**ask(SECRET, k=2),
                         "context": {"conversation_id": "conv-1", "user_id": "user-1"}})
    query_log = model._model_impl.get_raw_model().answerer.retriever.query_log
    assert query_log.flush(timeout=60)  # written off the request path
    with sqlite3.connect(log_path) as db:
        rows = db.execute("SELECT id, query_text, metadata FROM queries").fetchall()
        retrieved = db.execute("SELECT count(*) FROM retrievals").fetchone()[0]
        generation = db.execute(
            "SELECT id, query_id, generator, input_tokens, output_tokens, cost_usd, embed_ms, "
            "retrieve_ms, generate_ms, answer_text, session_id, user_id, trace_id "
            "FROM generations").fetchall()
        cited = db.execute("SELECT chunk_id, document_id FROM citations ORDER BY rank").fetchall()
    assert len(rows) == 1 and retrieved == 2 and len(generation) == 1
    query_id, text, metadata = rows[0]
    assert PII_EMAIL not in text and "<email>" in text  # redacted like the retriever's
    meta = json.loads(metadata)
    assert meta["answered"] is True and meta["served_answer"] is True and meta["k"] == 2
    assert meta["served_from"] == "bundle" and "output_id" not in meta
    extra = out["custom_outputs"]
    (output_id, gen_query, generator, tokens_in, tokens_out, cost, embed_ms, retrieve_ms,
     generate_ms, answer_text, session_id, user_id, trace_id) = generation[0]
    assert output_id == extra["output_id"] and gen_query == query_id
    assert generator == "extractive" and tokens_in == extra["input_tokens"] > 0
    assert tokens_out == extra["output_tokens"] and cost == 0.0
    assert min(embed_ms, retrieve_ms, generate_ms) >= 0
    assert answer_text is None  # kept only when the model config says keep_answer_text
    assert (session_id, user_id) == ("conv-1", "user-1")
    assert trace_id and trace_id.startswith("tr-")
    assert cited == [(c["chunk_id"], c["document_id"]) for c in extra["citations"]]


def feedback_request(**feedback: Any) -> dict[str, Any]:
    return {"input": [], "custom_inputs": {"feedback": feedback}}


def test_feedback_through_the_served_model_is_stored_beside_the_answer_and_on_its_trace(
    logged: Logged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A served model whose query log is its store's own database: the answer and the
    feedback sent through the model are what `feedback`, `report` and `lineage` see."""
    import shutil

    store = Path(shutil.copytree(logged.store, tmp_path / "store"))
    monkeypatch.setenv(QUERY_LOG_ENV, str(store / "metadata.db"))
    model = mlflow.pyfunc.load_model("models:/qa@champion",
                                     model_config={"keep_answer_text": True})
    out = model.predict(ask(SECRET, k=2))
    output_id = out["custom_outputs"]["output_id"]
    given = model.predict({**feedback_request(output_id=output_id, thumbs="up",
                                              comment=f"right; ask {PII_EMAIL}"),
                           "context": {"user_id": "carol"}})
    extra = given["custom_outputs"]
    assert extra["output_id"] == output_id and extra["kind"] == "thumbs" and extra["value"] == 1
    assert extra["logged_on_trace"] is True and given["output"][0]["id"] == extra["feedback_id"]
    trace = mlflow.get_trace(extra["trace_id"], flush=True)
    assessments = [a for a in trace.info.assessments if a.name == "user_feedback"]
    assert [a.feedback.value for a in assessments] == [True]
    assert assessments[0].source.source_id == "carol"

    bad = [
        (feedback_request(output_id="nope", thumbs="up"),
         "no served answer with output id 'nope' in the query log"),
        (feedback_request(output_id=output_id, thumbs="sideways"),
         "Unknown feedback thumbs 'sideways'; choose from ['down', 'up']"),
        (feedback_request(output_id=output_id, score="high"),
         "feedback score must be a finite number, got 'high'"),
        (feedback_request(output_id=output_id, score=1, thumbs="up"), "exactly one of thumbs"),
        (feedback_request(output_id=output_id, stars=5),
         "unknown feedback keys ['stars']; choose from ['output_id', 'thumbs', 'score', "
         "'comment', 'user_id']"),
        ({"input": [], "custom_inputs": {"feedback": {"output_id": output_id, "score": 1},
                                         "k": 3}}, "got also ['k']"),
    ]
    for body, fragment in bad:
        with pytest.raises(MlflowException) as caught:
            model.predict(body)
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
        assert fragment in caught.value.message and "\n" not in caught.value.message

    runner = CliRunner()
    down = runner.invoke(main, ["feedback", output_id, "--store", str(store), "--thumbs",
                                "down", "--no-track"])
    assert down.exit_code == 0, down.output
    report = runner.invoke(main, ["report", "--store", str(store), "--json", "--no-track"])
    assert report.exit_code == 0, report.output
    figures = json.loads(report.output)
    assert figures["answers"] == 1 and figures["served_answers"] == 1
    assert figures["feedback"]["count"] == 2
    assert figures["tokens"]["input"] == out["custom_outputs"]["input_tokens"]
    lineage = runner.invoke(main, ["lineage", output_id, "--store", str(store), "--json"])
    assert lineage.exit_code == 0, lineage.output
    chain = json.loads(lineage.output)
    assert chain["kind"] == "answer"
    assert chain["answer"]["trace_id"] == extra["trace_id"]
    assert [c["chunk_id"] for c in chain["answer"]["citations"]] == [
        c["chunk_id"] for c in out["custom_outputs"]["citations"]]
    with sqlite3.connect(store / "metadata.db") as db:
        kept, comment = db.execute("SELECT g.answer_text, f.comment FROM generations g JOIN "
                                   "feedback f ON f.generation_id = g.id WHERE f.user_id = "
                                   "'carol'").fetchone()
    assert kept == out["output"][0]["content"][0]["text"]  # opted in: kept (redacted)
    assert PII_EMAIL not in comment and "<email>" in comment


def test_cli_reads_served_answers_from_a_separate_query_log_file_with_query_log(
    logged: Logged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A served model logging into its own file (MLFLOW_RAG_QUERY_LOG, not the store's
    database): `feedback`, `report` and `lineage` see its answers with --query-log FILE; a
    missing file or one that is not a query log is a one-line error naming it, nothing
    stored and nothing created."""
    log_path = tmp_path / "served.db"
    monkeypatch.setenv(QUERY_LOG_ENV, str(log_path))
    model = mlflow.pyfunc.load_model("models:/qa@champion")
    out = model.predict(ask(SECRET, k=2))
    output_id = out["custom_outputs"]["output_id"]
    model.predict({**feedback_request(output_id=output_id, thumbs="up"),
                   "context": {"user_id": "carol"}})  # stored by the server, in the file
    store, runner = logged.store, CliRunner()
    store_db = (store / "metadata.db").read_bytes()

    # without the option, the store's own log does not hold the served answer
    alone = runner.invoke(main, ["lineage", output_id, "--store", str(store)])
    assert alone.exit_code == 1 and "no document, chunk, logged query or answer" in alone.output
    down = runner.invoke(main, ["feedback", output_id, "--store", str(store), "--query-log",
                                str(log_path), "--thumbs", "down", "--comment",
                                f"wrong; ask {PII_EMAIL}", "--no-track"])
    assert down.exit_code == 0, down.output
    assert f"recorded feedback on {output_id} in {log_path}" in down.output
    report = runner.invoke(main, ["report", "--store", str(store), "--query-log", str(log_path),
                                  "--json", "--no-track"])
    assert report.exit_code == 0, report.output
    figures = json.loads(report.output)
    assert figures["answers"] == 1 and figures["served_answers"] == 1
    assert figures["feedback"]["count"] == 2
    assert figures["tokens"]["input"] == out["custom_outputs"]["input_tokens"]
    lineage = runner.invoke(main, ["lineage", output_id, "--store", str(store), "--query-log",
                                   str(log_path), "--json"])
    assert lineage.exit_code == 0, lineage.output
    chain = json.loads(lineage.output)
    assert chain["kind"] == "answer" and chain["answer"]["trace_id"]
    assert [c["chunk_id"] for c in chain["answer"]["citations"]] == [
        c["chunk_id"] for c in out["custom_outputs"]["citations"]]
    assert chain["documents"]  # the cited documents, from the store
    with sqlite3.connect(log_path) as db:
        stored = db.execute("SELECT kind, value, comment FROM feedback ORDER BY timestamp"
                            ).fetchall()
    assert [(k, v) for k, v, _ in stored] == [("thumbs", 1.0), ("thumbs", 0.0)]
    assert PII_EMAIL not in stored[1][2] and "<email>" in stored[1][2]

    not_a_log = tmp_path / "notes.db"
    with sqlite3.connect(not_a_log) as db:
        db.execute("CREATE TABLE notes (x TEXT)")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database at all, just some text " * 50)
    missing = tmp_path / "nope.db"
    calls = [["feedback", output_id, "--store", str(store), "--thumbs", "up", "--no-track"],
             ["report", "--store", str(store), "--no-track"],
             ["lineage", output_id, "--store", str(store)]]
    for bad, fragment in [(missing, "does not exist"), (not_a_log, "is not a query log"),
                          (text_file, "is not a query log")]:
        for call in calls:
            result = runner.invoke(main, [*call, "--query-log", str(bad)])
            assert result.exit_code == 1, result.output
            assert len(result.output.strip().splitlines()) == 1, result.output
            assert str(bad) in result.output and fragment in result.output
    unknown = runner.invoke(main, ["feedback", "nope", "--store", str(store), "--query-log",
                                   str(log_path), "--score", "1", "--no-track"])
    assert unknown.exit_code == 1 and "no answer with output id 'nope'" in unknown.output
    assert not missing.exists()
    with sqlite3.connect(not_a_log) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["notes"]
    with sqlite3.connect(log_path) as db:
        assert db.execute("SELECT count(*) FROM feedback").fetchone()[0] == 2
    assert (store / "metadata.db").read_bytes() == store_db  # the store was only read


def test_a_trace_of_an_answer_holds_ids_but_not_the_question_or_the_answer(
    champion: Any,
) -> None:
    out = champion.predict(ask(SECRET, k=2))
    trace_id = mlflow.get_last_active_trace_id()
    assert trace_id is not None
    trace = mlflow.get_trace(trace_id, flush=True)
    spans = {span.name: span for span in trace.data.spans}
    assert set(spans) == {"answer", "retrieve", "generate"}
    assert spans["answer"].attributes["mlflow_rag.output_id"] == out["custom_outputs"]["output_id"]
    text = trace.to_json()
    assert "confidential" not in text and "green tea is brewed" not in text.lower()


def test_log_model_refuses_bad_kinds_and_generators_before_logging(logged: Logged) -> None:
    with pytest.raises(UnknownChoice, match=r"Unknown model kind 'chat'; choose from \['rag', 'retriever'\]"):
        log_model(logged.store, kind="chat", tracking_uri=logged.uri)
    with pytest.raises(UnknownChoice, match="generator"):
        log_model(logged.store, kind="rag", generator="gpt", tracking_uri=logged.uri)
    with pytest.raises(InvalidInput, match="need --kind rag"):
        log_model(logged.store, generator="extractive", tracking_uri=logged.uri)
    with pytest.raises(PromptError, match="uses no prompt"):
        log_model(logged.store, kind="rag", prompt="prompts:/qa/1", tracking_uri=logged.uri)


def test_cli_log_model_kind_rag_registers_an_alias(logged: Logged) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["log-model", "--store", str(logged.store), "--kind", "rag",
                                  "--generator-option", "max_sentences=1",
                                  "--register", "qa-cli", "--alias", "champion",
                                  "--tracking-uri", logged.uri])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "models:/qa-cli@champion"
    model = mlflow.pyfunc.load_model("models:/qa-cli@champion")
    assert model.model_config["generator_options"] == {"max_sentences": 1}
    bad = runner.invoke(main, ["log-model", "--store", str(logged.store), "--kind", "chat"])
    assert bad.exit_code == 2 and "'chat' is not one of 'retriever', 'rag'" in bad.output


def test_an_openai_rag_model_records_its_prompt_version_and_503s_when_the_chat_api_fails(
    logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ChatServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        info = log_model(logged.store, kind="rag", name="rag-openai", generator="openai:test-model",
                         generator_options={"max_retries": 0}, tracking_uri=logged.uri)
        model = mlflow.pyfunc.load_model(info.model_uri)
        assert model.model_config["prompt"].startswith("prompts:/mlflow-rag-answer/")
        out = model.predict(ask("how do I fix a flat bicycle tyre?", k=2))
        assert out["custom_outputs"]["prompt"] == model.model_config["prompt"]
        assert out["custom_outputs"]["generator"] == "openai:test-model"
        assert out["custom_outputs"]["citations"][0]["document_id"] == "bikes"
        assert out["custom_outputs"]["input_tokens"] > 0
        server.always_fail(500)
        with pytest.raises(MlflowException) as caught:
            model.predict(ask(SECRET))
    assert caught.value.error_code == "TEMPORARILY_UNAVAILABLE"
    assert caught.value.message.startswith("the generator failed: openai:test-model")
    assert "confidential" not in caught.value.message


@pytest.mark.slow
def test_models_serve_answers_a_responses_request_and_400s_bad_ones(
    logged: Logged, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/qa@champion",
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path / "queries.db"
    env = subprocess_env(MLFLOW_TRACKING_URI=logged.uri, **{QUERY_LOG_ENV: str(log_path)})
    with server_process(args, health_url=f"{url}/ping", log_path=tmp_path / "serve.log",
                        cwd=logged.root, env=env):
        status, body = post_json(f"{url}/invocations",
                                 ask("which tools fix a flat bicycle tyre?", k=2, mode="hybrid"))
        assert status == 200, body
        assert "tyre levers" in body["output"][0]["content"][0]["text"]
        output_id = body["custom_outputs"]["output_id"]
        assert output_id == body["output"][0]["id"]
        assert body["custom_outputs"]["citations"][0]["document_id"] == "bikes"
        # feedback over HTTP, then bad feedback: 400s naming the value, nothing stored
        status, given = post_json(f"{url}/invocations",
                                  feedback_request(output_id=output_id, score=4.5,
                                                   comment="good"))
        assert status == 200, given
        assert given["custom_outputs"]["output_id"] == output_id
        assert given["custom_outputs"]["logged_on_trace"] is True  # mlflow.log_feedback
        for payload, fragment in [
            (feedback_request(output_id="nope", score=1), "no served answer with output id 'nope'"),
            (feedback_request(output_id=output_id, thumbs="meh"),
             "Unknown feedback thumbs 'meh'; choose from ['down', 'up']"),
        ]:
            status, refused = post_json(f"{url}/invocations", payload)
            assert status == 400, refused
            assert fragment in refused["message"]
        with sqlite3.connect(log_path) as db:
            generation = db.execute("SELECT id, generator, trace_id FROM generations").fetchall()
            feedback = db.execute("SELECT generation_id, kind, value, comment FROM feedback"
                                  ).fetchall()
        assert [(g[0], g[1]) for g in generation] == [(output_id, "extractive")]
        assert generation[0][2] == given["custom_outputs"]["trace_id"]
        assert feedback == [(output_id, "score", 4.5, "good")]
        bad = [
            (ask(""), "query must be a non-empty string"),
            (ask(SECRET, mode="semantic"), "Unknown search mode 'semantic'"),
            ({"input": SECRET}, "the request is not a Responses API request (bad fields "
                                "['input'])"),
            ({"input": [{"role": "user"}]}, "bad fields"),
            ({"dataframe_split": {"columns": ["query"], "data": [[SECRET]]}}, "bad fields"),
        ]
        for payload, fragment in bad:
            status, body = post_json(f"{url}/invocations", payload)
            assert status == 400, body
            assert fragment in body["message"] and "\n" not in body["message"].strip()
            assert "confidential" not in json.dumps(body)
