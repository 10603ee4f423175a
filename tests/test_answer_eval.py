"""Scenarios of `mlflow-rag evaluate-answers` through the CLI, on a store that already holds the
speakers data (ingested by the CLI, tfidf, offline), checked on a real tracking store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mlflow_rag.cli import main
from tests import helpers_mlflow
from tests.chat_server import ChatServer

tracking_template = helpers_mlflow.tracking_template  # shared fixtures
tracking_uri = helpers_mlflow.tracking_uri

REPO = Path(__file__).resolve().parent.parent
QA = REPO / "evaluations" / "speakers_qa.jsonl"
SCORES = {"exact_match", "token_f1", "citation_precision", "citation_recall", "recall_at_5",
          "ndcg_at_5"}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def speakers_store(tmp_path: Path, shared_data: Path) -> str:
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    if not csv.is_file():
        pytest.skip(f"{csv} is absent")
    location = str(tmp_path / "speakers")
    result = run("ingest", str(csv), "--store", location, "--embedder", "tfidf", "--no-track")
    assert result.exit_code == 0, result.output
    return location


def _first(n: int, tmp_path: Path) -> Path:
    path = tmp_path / f"first-{n}.jsonl"
    path.write_text("".join(QA.read_text(encoding="utf-8").splitlines(keepends=True)[:n]),
                    encoding="utf-8")
    return path


def test_extractive_scores_as_child_runs_with_traces(speakers_store: str,
                                                     tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    result = run("evaluate-answers", "--dataset", str(QA), "--store", speakers_store,
                 "--experiment", "answers", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["questions"] == 20
    (variant,) = out["variants"]
    assert variant["variant"] == "extractive"
    assert set(variant) - {"variant", "run_id", "usage"} == SCORES
    # The figures reported in docs/answers.md: the extractive answerer is deterministic.
    assert variant["recall_at_5"] == 1.0
    assert variant["exact_match"] == 0.0
    assert 0.1 < variant["token_f1"] < 0.4
    assert variant["citation_recall"] >= 0.8

    client = MlflowClient(tracking_uri)
    child = client.get_run(variant["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == out["run_id"]
    assert child.data.params["generator"] == "extractive"
    assert child.data.metrics["token_f1/mean"] == pytest.approx(variant["token_f1"], abs=1e-4)
    traces = client.search_traces(locations=[out["experiment_id"]],
                                  run_id=variant["run_id"], max_results=50)
    assert len(traces) == 20
    # Each question's trace holds answering's own spans and the scorers' assessments.
    spans = {span.span_type for span in traces[0].data.spans}
    assert {"CHAIN", "RETRIEVER", "LLM"} <= spans
    names = {a.name for a in traces[0].info.assessments}
    assert {"token_f1", "citation_precision", "recall_at_5"} <= names
    assert client.get_run(out["run_id"]).data.params["n_questions"] == "20"


def test_each_child_run_logs_tokens_cost_and_latency_per_stage(
        speakers_store: str, tracking_uri: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    with ChatServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        result = run("evaluate-answers", "--dataset", str(_first(2, tmp_path)), "--store",
                     speakers_store, "--generators", "extractive,openai:gpt-4o-mini",
                     "--json")  # a model of the price table: the cost is not 0
    assert result.exit_code == 0, result.output
    extractive, chat = json.loads(result.stdout)["variants"]
    client = MlflowClient(tracking_uri)
    for variant in (extractive, chat):
        metrics = client.get_run(variant["run_id"]).data.metrics
        usage = variant["usage"]
        for name in ("input_tokens", "output_tokens", "cost_usd"):
            assert metrics[f"{name}/sum"] == pytest.approx(usage[f"{name}/sum"], abs=1e-6)
            # two questions: MLflow's checking call of predict_fn is not counted twice
            assert usage[f"{name}/mean"] == pytest.approx(usage[f"{name}/sum"] / 2, abs=1e-6)
        for stage in ("embed", "retrieve", "generate", "answer"):
            assert metrics[f"{stage}_ms/mean"] >= 0 and f"{stage}_ms/p95" in metrics
    assert chat["usage"]["input_tokens/sum"] > 0 and chat["usage"]["output_tokens/sum"] > 0
    assert chat["usage"]["cost_usd/sum"] > 0
    assert extractive["usage"]["cost_usd/sum"] == 0.0


GRID = """name: answers-small
grid:
  chunker: recursive
  chunk_size: [128, 256]
  embedder: tfidf
  mode: [bm25, hybrid]
  k: [10, 20]
"""


def test_a_variants_grid_crossed_with_generators_is_one_child_run_each(
        tracking_uri: str, tmp_path: Path, shared_data: Path) -> None:
    from mlflow.tracking import MlflowClient

    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    if not csv.is_file():
        pytest.skip(f"{csv} is absent")
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID, encoding="utf-8")
    work = tmp_path / "work"
    args = ["evaluate-answers", "--dataset", str(_first(2, tmp_path)), "--variants", str(grid),
            "--corpus", str(csv), "--work-dir", str(work)]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # 2 chunkings x (bm25, hybrid with tfidf) x extractive; named by the grid's labels. The
    # grid's two k answer alike (an answer reads the evaluation's --k chunks): one run for both.
    names = [v["variant"] for v in out["variants"]]
    assert len(names) == 4 and all(n.startswith("extractive [") for n in names)
    assert any("bm25" in n for n in names) and any("hybrid-tfidf" in n for n in names)
    client = MlflowClient(tracking_uri)
    params = [client.get_run(v["run_id"]).data.params for v in out["variants"]]
    assert {(p["chunk_size"], p["mode"]) for p in params} == {
        ("128", "bm25"), ("128", "hybrid"), ("256", "bm25"), ("256", "hybrid")}
    assert all(p["k"] == "5" and p["retrieval"].startswith("chunker=recursive") for p in params)
    for variant in out["variants"]:
        assert set(variant) - {"variant", "run_id", "usage"} == SCORES
        assert variant["recall_at_5"] > 0 and variant["usage"]["input_tokens/sum"] > 0
    # the harness's stores: one per chunking, under the work dir
    stores = {p.parent.name for p in work.rglob("metadata.db")}
    assert len(stores) == 2 and all("recursive" in name for name in stores)

    bad_grid = tmp_path / "bad.yaml"
    bad_grid.write_text(GRID.replace("recursive", "sentencez"), encoding="utf-8")
    experiments = [e.experiment_id for e in client.search_experiments()]
    before = len(client.search_runs(experiments))
    for bad_args, message in [
        (["--variants", str(bad_grid), "--corpus", str(csv)],
         "Unknown chunker 'sentencez'; choose from ["),
        (["--variants", str(grid)], "--variants needs --corpus SOURCE"),
        (["--variants", str(grid), "--corpus", str(csv), "--mode", "bm25"], "drop --mode"),
        ([], "give --store STORE, or --variants FILE with --corpus SOURCE"),
    ]:
        bad = run("evaluate-answers", "--dataset", str(QA), *bad_args)
        assert bad.exit_code != 0 and message in bad.output, bad.output
        assert len([line for line in bad.output.strip().splitlines()
                    if line.startswith("Error") or line.startswith("error")]) == 1
    assert len(client.search_runs(experiments)) == before  # no run was made


def test_bad_inputs_are_one_line_errors_and_log_no_run(speakers_store: str, tracking_uri: str,
                                                       tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    bad = run("evaluate-answers", "--dataset", str(QA), "--store", speakers_store,
              "--generators", "extractive,bogus")
    assert bad.exit_code != 0
    assert "Unknown generator 'bogus'" in bad.output and "extractive" in bad.output
    broken = tmp_path / "qa.jsonl"
    broken.write_text('{"id": "a", "question": "q?"}\n')
    bad = run("evaluate-answers", "--dataset", str(broken), "--store", speakers_store)
    assert bad.exit_code != 0
    assert "qa.jsonl:1: missing fields ['reference_answer', 'relevant_ids']" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert MlflowClient(tracking_uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri).search_experiments()]) == []


@pytest.mark.slow
def test_llm_judges_run_against_a_local_chat_server(speakers_store: str, tracking_uri: str,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    two = _first(2, tmp_path)
    with ChatServer() as server:
        # A judge asks for {"result", "rationale"} as JSON; the server gives one verdict.
        server.reply = lambda body: json.dumps({"result": "yes", "rationale": "supported"})
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        result = run("evaluate-answers", "--dataset", str(two), "--store", speakers_store,
                     "--judge", "openai:/judge-model", "--json")
    assert result.exit_code == 0, result.output
    (variant,) = json.loads(result.stdout)["variants"]
    judged = {"retrieval_groundedness", "relevance_to_query", "retrieval_sufficiency",
              "correctness"}
    assert {name: variant[name] for name in judged} == dict.fromkeys(judged, 1.0)
    assert set(variant) >= SCORES
    # 2 questions x 4 judges, each a chat request for the judge model with the passages
    # of the question's RETRIEVER span (text only: no PII column reaches a judge either).
    assert len(server.requests) == 8
    assert {r["model"] for r in server.requests} == {"judge-model"}
    sent = json.dumps(server.requests)
    assert "port & mend" in sent and "@" not in sent.replace("json_schema", "")


@pytest.mark.slow
def test_prompt_x_generator_variants_are_child_runs(speakers_store: str, tracking_uri: str,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.genai.register_prompt(name="qa", template="Q: {{question}}\n{{context}}")
    mlflow.genai.register_prompt(name="qa", template="Use:\n{{context}}\nfor {{question}}")
    with ChatServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        bad = run("evaluate-answers", "--dataset", str(_first(2, tmp_path)), "--store",
                  speakers_store, "--generators", "openai:chat", "--prompts", "prompts:/qa/9")
        assert bad.exit_code != 0 and "no prompt prompts:/qa/9" in bad.output
        assert "versions [1, 2]" in bad.output and not server.requests
        result = run("evaluate-answers", "--dataset", str(_first(2, tmp_path)), "--store",
                     speakers_store, "--generators", "extractive,openai:chat",
                     "--prompts", "prompts:/qa/1,prompts:/qa/2", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # extractive reads no prompt: one variant; the chat generator: one per prompt.
    assert [v["variant"] for v in out["variants"]] == [
        "extractive", "openai:chat prompts:/qa/1", "openai:chat prompts:/qa/2"]
    # 2 questions x 2 prompts, plus the one call by which mlflow.genai.evaluate first
    # checks a predict_fn: each prompt's template reached the server with both questions.
    users = [r["messages"][-1]["content"] for r in server.requests]
    assert len(users) == 6
    for prefix in ("Q: ", "Use:"):
        asked = [u for u in users if u.startswith(prefix)]
        assert len(asked) == 3
        assert {("legacy modernization" in u, "Terraform" in u) for u in asked} == {
            (True, False), (False, True)}
    client = MlflowClient(tracking_uri)
    prompts = {client.get_run(v["run_id"]).data.params["prompt"] for v in out["variants"]}
    assert prompts == {"", "prompts:/qa/1", "prompts:/qa/2"}
    for variant in out["variants"]:
        assert set(variant) - {"variant", "run_id", "usage"} == SCORES
    # The chat server cites the first passage it is given: a real citation.
    assert out["variants"][1]["citation_precision"] > 0


def test_grid_variants_that_differ_only_in_k_answer_once() -> None:
    from mlflow_rag.evaluation.answer_variants import grid_answer_variants
    from mlflow_rag.evaluation.variants import parse_grid

    grid = parse_grid({"grid": {"chunker": "recursive", "embedder": "tfidf",
                                "mode": ["bm25", "hybrid"], "k": [10, 20, 30]}})
    assert len(grid.variants) == 6
    variants = grid_answer_variants(grid.variants, ["extractive"])
    # the first of each (the grid's order), one per mode
    assert sorted((v.mode, v.retrieval.k) for v in variants if v.retrieval) == [
        ("bm25", 10), ("hybrid", 10)]
