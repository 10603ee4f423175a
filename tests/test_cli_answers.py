"""Scenarios of `mlflow-rag ask` and `mlflow-rag feedback` through the CLI, on a store that
already holds documents and logged searches (ingested by the CLI itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mlflow_rag.cli import main
from mlflow_rag.store.store import Store
from tests import helpers_mlflow
from tests.chat_server import ChatServer
from tests.helpers_mlflow import write_corpus_files

tracking_template = helpers_mlflow.tracking_template  # shared fixtures
tracking_uri = helpers_mlflow.tracking_uri

QUESTION = "What does legacy modernization keep?"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def store(tmp_path: Path, store_location: str) -> str:
    """The corpus ingested by the CLI, and one logged search: once per backend."""
    corpus = write_corpus_files(tmp_path / "corpus")
    location = store_location
    result = run("ingest", str(corpus), "--store", location, "--embedder", "tfidf", "--no-track")
    assert result.exit_code == 0, result.output
    assert run("search", "green tea", "--store", location, "--log-query").exit_code == 0
    return location


def _counts(location: str) -> tuple[int, int]:
    with Store.open(location, read_only=True) as opened:
        return opened.stats().queries, opened.stats().documents


def test_ask_answers_with_citations_and_records_it(store: str) -> None:
    result = run("ask", QUESTION, "--store", store, "--no-track", "--json", "-k", "3")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["answer"] and "business rules" in shown["answer"]
    assert shown["citations"][0]["document_id"] == "cobol.md"
    assert shown["generator"] == "extractive" and shown["trace_id"] is None
    assert set(shown["latency_ms"]) == {"embed", "retrieve", "generate"}
    with Store.open(store, read_only=True) as opened:
        record = opened.logs.answer_record(shown["output_id"])
        assert record.query_id == shown["query_id"] and record.answer_text is None
        assert opened.stats().queries == 2  # the logged search, then the answer's query
    text = run("ask", QUESTION, "--store", store, "--no-track")
    assert text.exit_code == 0 and "Sources:" in text.stdout and "output id: " in text.stdout


def test_feedback_through_the_cli(store: str) -> None:
    shown = json.loads(run("ask", QUESTION, "--store", store, "--no-track", "--json").stdout)
    done = run("feedback", shown["output_id"], "--store", store, "--thumbs", "down",
               "--comment", "wrong document", "--no-track")
    assert done.exit_code == 0 and "recorded feedback" in done.stdout
    with Store.open(store, read_only=True) as opened:
        stored = opened.logs.answer_record(shown["output_id"]).feedback
    assert [(f.kind, f.value, f.comment) for f in stored] == [("thumbs", 0.0, "wrong document")]
    missing = run("feedback", "no-such-id", "--store", store, "--score", "1", "--no-track")
    assert missing.exit_code == 1
    assert missing.output.startswith("error: no answer with output id 'no-such-id' in ")
    assert len(missing.output.strip().splitlines()) == 1
    neither = run("feedback", shown["output_id"], "--store", store, "--no-track")
    assert neither.exit_code == 2 and "exactly one of --score or --thumbs" in neither.output


def test_bad_choices_are_one_line_errors_and_store_nothing(store: str) -> None:
    before = _counts(store)
    cases = {
        ("--generator", "gpt4"): "error: Unknown generator 'gpt4'; choose from "
                                 "['extractive', 'openai:<model>']",
        ("--prompt", "prompts:/qa@prod"): "error: the extractive generator uses no prompt",
        ("--mode", "fuzzy"): "Invalid value for '--mode'",
    }
    for args, expected in cases.items():
        result = run("ask", QUESTION, "--store", store, "--no-track", *args)
        assert result.exit_code in (1, 2) and expected in result.output, result.output
        if result.exit_code == 1:
            assert len(result.output.strip().splitlines()) == 1
    assert _counts(store) == before


def test_a_failing_chat_api_is_one_line_and_stores_nothing(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _counts(store)
    with ChatServer() as server:
        server.always_fail(503)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        # max_retries defaults to 4: five requests, backoff capped; the test sleeps little
        monkeypatch.setattr("mlflow_rag.generate.openai_chat.OpenAIChatGenerator.backoff",
                            lambda self, attempt, headers=None: 0.0)
        result = run("ask", QUESTION, "--store", store, "--no-track", "--generator",
                     "openai:gpt-4o-mini")
        assert server.statuses == [503] * 5
    assert result.exit_code == 1
    assert result.output.strip() == ("error: openai:gpt-4o-mini: the chat request failed after "
                                     "5 attempts (last: HTTP 503)")
    assert _counts(store) == before


def test_tracked_ask_and_feedback_share_one_trace(
    store: str, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    with ChatServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        result = run("ask", QUESTION, "--store", store, "--json", "--generator",
                     "openai:gpt-4o-mini", "--session-id", "chat-1")
        assert result.exit_code == 0, result.output
        bad = run("ask", QUESTION, "--store", store, "--generator", "openai:gpt-4o-mini",
                  "--prompt", "prompts:/nothing@prod")
    shown = json.loads(result.stdout)
    assert shown["prompt"] == "prompts:/mlflow-rag-answer/1" and shown["trace_id"]
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    assert "no prompt prompts:/nothing@prod" in bad.output
    done = run("feedback", shown["output_id"], "--store", store, "--score", "0.5")
    assert done.exit_code == 0 and "(and on its trace)" in done.stdout
    trace = mlflow.get_trace(shown["trace_id"])
    assert trace.info.tags["mlflow_rag.output_id"] == shown["output_id"]
    assert [a.value for a in trace.info.assessments] == [0.5]


def test_generator_options_from_the_cli(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _counts(store)
    bad = {
        ("--generator-option", "colour=1"):
            "error: Unknown option of generator extractive 'colour'; choose from "
            "['max_output_tokens', 'max_sentences']",
        ("--generator-option", "max_sentences=-1"):
            "error: generator option max_sentences must be a non-negative integer, got -1",
        ("--generator", "openai:m", "--generator-option", "price_per_million=[1]"):
            "error: generator option price_per_million must be [input, output] USD per "
            "million tokens, got [1]",
    }
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    for args, expected in bad.items():
        result = run("ask", QUESTION, "--store", store, "--no-track", *args)
        assert result.exit_code == 1 and result.output.strip() == expected, result.output
    assert _counts(store) == before
    with ChatServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        result = run("ask", QUESTION, "--store", store, "--no-track", "--json", "--generator",
                     "openai:llama3", "--generator-option", "price_per_million=[1000, 2000]",
                     "--generator-option", "temperature=0.5")
        assert server.requests[-1]["temperature"] == 0.5
    shown = json.loads(result.stdout)
    expected = (shown["input_tokens"] * 1000 + shown["output_tokens"] * 2000) / 1e6
    assert shown["cost_usd"] == pytest.approx(expected) and expected > 0
