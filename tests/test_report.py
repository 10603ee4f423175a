"""`mlflow-rag report` through the CLI on a store that already holds data (the speakers CSV,
logged searches, answers and feedback, all made by the CLI), once per backend; the numbers
are checked against what was done. And the pure summary on hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mlflow_rag.cli import main
from mlflow_rag.monitoring import summarize
from mlflow_rag.store.monitoring_rows import MonitoringRows
from mlflow_rag.store.store import Store
from tests import helpers_mlflow

tracking_template = helpers_mlflow.tracking_template  # shared fixtures
tracking_uri = helpers_mlflow.tracking_uri

EMPTY_MESSAGE = "no queries, answers or feedback logged"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def speakers(store_location: str, shared_data: Path) -> str:
    """The speakers CSV ingested with tfidf, and nothing logged yet."""
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    ok("ingest", str(csv), "--store", store_location, "--embedder", "tfidf", "--no-track")
    return store_location


def ask(store: str, question: str) -> str:
    shown = json.loads(ok("ask", question, "--store", store, "--no-track", "--json").stdout)
    return str(shown["output_id"])


def test_report_counts_what_was_done(speakers: str) -> None:
    store = speakers
    # 3 logged searches (one finds nothing), 2 answers, 3 feedbacks.
    for query in ("legacy modernization", "cloud architecture"):
        ok("search", query, "--store", store, "--log-query")
    ok("search", "zzzqqq", "--store", store, "--mode", "bm25", "--log-query")
    first = ask(store, "who speaks about legacy modernization?")
    second = ask(store, "who speaks about agile teams? write to bob@example.com")
    ok("feedback", first, "--store", store, "--thumbs", "up", "--no-track")
    ok("feedback", first, "--store", store, "--score", "4", "--no-track")
    ok("feedback", second, "--store", store, "--thumbs", "down", "--no-track")

    report = json.loads(ok("report", "--store", store, "--json", "--no-track").stdout)
    assert (report["queries"], report["answers"], report["zero_hit_queries"]) == (5, 2, 1)
    assert report["zero_hit_rate"] == pytest.approx(0.2)
    assert sum(day["queries"] for day in report["volume_per_day"]) == 5
    assert sum(day["answers"] for day in report["volume_per_day"]) == 2
    assert {s: report["latency_ms"][s]["count"] for s in ("embed", "retrieve", "generate",
                                                           "answer")} == dict.fromkeys(
        ("embed", "retrieve", "generate", "answer"), 2)
    assert report["latency_ms"]["answer"]["p50"] <= report["latency_ms"]["answer"]["p99"]
    assert report["generators"] == {"extractive": 2} and report["cost_usd"] == 0
    assert report["tokens"]["input"] > 0 and report["tokens"]["output"] > 0
    docs = report["documents"]
    assert docs["total"] == 13 and docs["retrieved"] + docs["never_retrieved"] == 13
    assert docs["retrieved"] > 0 and all(1 <= d["queries"] <= 4 for d in docs["most_retrieved"])
    feedback = report["feedback"]
    assert (feedback["count"], feedback["thumbs_up"], feedback["thumbs_down"],
            feedback["scores"], feedback["mean_score"]) == (3, 1, 1, 1, 4.0)
    failing = {q["query"]: (q["zero_hits"], q["thumbs_down"]) for q in report["failing_queries"]}
    # the question as stored: redacted before it was logged
    assert failing == {"zzzqqq": (1, 0), "who speaks about agile teams? write to <email>": (0, 1)}
    assert "bob@example.com" not in json.dumps(report) and report["run_id"] is None

    text = ok("report", "--store", store, "--no-track").stdout
    assert "queries: 5  answers: 2  zero hits: 1 (20.0%)" in text
    assert "feedback: 3 (thumbs up 1, down 1; scores 1, mean 4.0)" in text
    assert json.loads(ok("report", "--store", store, "--json", "--no-track", "--days", "1")
                      .stdout)["queries"] == 5
    later = ok("report", "--store", store, "--no-track", "--since", "2099-01-01").stdout
    assert EMPTY_MESSAGE + " in this period" in later


def test_an_empty_log_or_store_is_a_message_and_bad_input_one_line(
        speakers: str, tmp_path: Path) -> None:
    text = ok("report", "--store", speakers)  # nothing logged: no run either
    assert EMPTY_MESSAGE in text.stdout and "report run" not in text.stdout
    assert json.loads(ok("report", "--store", speakers, "--json", "--no-track").stdout)[
        "queries"] == 0
    for args, message in {
        ("--since", "yesterday"): "error: --since must be an ISO date or date-time such as "
                                  "2026-12-01 or 2026-12-01T08:00:00+00:00, got 'yesterday'",
        ("--days", "-1"): "error: --days must be a non-negative number, got -1.0",
        ("--days", "1", "--since", "2026-01-01"): "error: give --since or --days, not both",
    }.items():
        bad = run("report", "--store", speakers, "--no-track", *args)
        assert bad.exit_code == 1 and bad.output.strip() == message, bad.output
    with Store.open(speakers, read_only=True) as opened:
        assert opened.stats().documents == 13  # a report reads; nothing is lost
    missing = run("report", "--store", str(tmp_path / "nowhere"), "--no-track")
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1


def test_the_report_is_logged_as_a_run_with_plots(tracking_uri: str, tmp_path: Path,
                                                   shared_data: Path) -> None:
    import mlflow

    store = str(tmp_path / "store")
    ok("ingest", str(shared_data / "chatboti" / "sample_speakers.csv"), "--store", store,
       "--embedder", "tfidf", "--no-track")
    ok("feedback", ask(store, "who speaks about legacy modernization?"), "--store", store,
       "--thumbs", "up", "--no-track")
    out = ok("report", "--store", store, "--tracking-uri", tracking_uri).stdout
    run_id = out.strip().splitlines()[-1].removeprefix("report run ")
    logged = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    assert logged.data.tags["mlflow_rag.run_type"] == "report"
    assert logged.data.metrics["queries"] == 1 and logged.data.metrics["thumbs_up"] == 1
    assert "answer_ms_p95" in logged.data.metrics
    files = {a.path for a in mlflow.MlflowClient(tracking_uri).list_artifacts(run_id, "report")}
    assert {"report/report.json", "report/volume_per_day.json", "report/volume_per_day.png",
            "report/latency_percentiles.png", "report/feedback_per_day.png"} <= files


def test_summarize_on_hand_made_rows() -> None:
    queries = [("q1", "2026-12-01T10:00:00+00:00", "a", '{"latency_ms": 10}', 3),
               ("q2", "2026-12-01T11:00:00+00:00", "b", "{}", 0),
               ("q3", "2026-12-02T09:00:00+00:00", "b", "{}", 0),
               ("q4", "2026-12-02T09:30:00+00:00", "c", '{"latency_ms": 30}', 2),
               # answered by the served RAG model: recorded in the query's metadata only
               ("q5", "2026-12-03T08:00:00+00:00", "d", json.dumps({
                   "answered": True, "output_id": "o5", "generator": "extractive",
                   "input_tokens": 50, "output_tokens": 7, "cost_usd": 0.0,
                   "latency_ms": {"embed": 2.0, "retrieve": 3.0, "generate": 1.0}}), 4)]
    generations = [("g1", "q4", "2026-12-02T09:30:00+00:00", "openai:gpt-4o-mini", 100, 20,
                    0.5, 1.0, 2.0, 100.0),
                   ("g2", "q1", "2026-12-01T10:00:00+00:00", "extractive", None, None, None,
                    1.0, None, 3.0)]
    feedback = [("q4", "2026-12-02T10:00:00+00:00", "thumbs", 0.0),
                ("q4", "2026-12-02T10:01:00+00:00", "thumbs", 0.0),
                ("q1", "2026-12-03T10:00:00+00:00", "score", 2.0)]
    documents = [("d1", "a.md", 3), ("d2", "b.md", 0), ("d3", "c.md", 5)]
    report = summarize(MonitoringRows(iter(queries), iter(generations), iter(feedback),
                                      iter(documents)), top=2)
    assert report["volume_per_day"] == [
        {"day": "2026-12-01", "queries": 2, "answers": 1, "zero_hit": 1},
        {"day": "2026-12-02", "queries": 2, "answers": 1, "zero_hit": 1},
        {"day": "2026-12-03", "queries": 1, "answers": 1, "zero_hit": 0}]
    assert (report["answers"], report["served_answers"]) == (3, 1)
    assert report["generators"] == {"extractive": 2, "openai:gpt-4o-mini": 1}
    assert report["tokens"] == {"input": 150, "output": 27}
    assert report["zero_hit_rate"] == 0.4 and report["cost_usd"] == 0.5
    assert report["latency_ms"]["search"] == {"count": 2.0, "p50": 20.0, "p90": 28.0,
                                              "p95": 29.0, "p99": 29.8, "max": 30.0}
    assert report["latency_ms"]["retrieve"]["count"] == 2  # a missing stage is not a zero
    assert report["latency_ms"]["answer"]["count"] == 2
    assert report["latency_ms"]["answer"]["max"] == 103.0
    assert report["failing_queries"] == [{"query": "b", "zero_hits": 2, "thumbs_down": 0},
                                         {"query": "c", "zero_hits": 0, "thumbs_down": 2}]
    assert report["documents"]["most_retrieved"][0]["document_id"] == "d3"
    assert report["documents"]["never_retrieved_ids"] == ["d2"]
    assert report["feedback"]["per_day"][-1] == {"day": "2026-12-03", "thumbs_up": 0,
                                                 "thumbs_down": 0, "scores": 1,
                                                 "mean_score": 2.0}
