"""Ingest and search runs, the CLI's MLflow options and the MLproject, on real tracking stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.store.store import Store
from mlflow_rag.tracking import (
    BUNDLE_ARTIFACT_PATH,
    TAG_GENERATION,
    TAG_PREVIOUS_GENERATION,
    TAG_PREVIOUS_RUN_ID,
    TAG_RUN_TYPE,
    TAG_STORE_ID,
    TrackingError,
    download_bundle,
    log_ingest_run,
    log_search_run,
    resolve_tracking_uri,
)
from mlflow_rag.types import Hit
from tests import helpers_mlflow
from tests.helpers_mlflow import (
    CORPUS,
    PII_EMAIL,
    build_store,
    free_port,
    ingest_report,
    make_corpus_record,
    subprocess_env,
    write_corpus_files,
)

tracking_template = helpers_mlflow.tracking_template  # shared fixtures
tracking_uri = helpers_mlflow.tracking_uri

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- tracking URI


def test_tracking_uri_flag_wins_then_environment_then_sqlite_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_an_unreachable_tracking_server_fails_fast_with_one_actionable_line(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        log_search_run(["q"], [[]], latencies_ms=[1.0], params={}, experiment="x",
                       tracking_uri=uri)
    assert time.monotonic() - started < 10  # MLflow's own client would retry for minutes
    message = str(caught.value)
    assert "cannot reach the MLflow tracking server" in message and uri in message
    assert "--tracking-uri" in message and "\n" not in message


def test_a_sqlite_tracking_store_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'missing' / 'mlruns.db'}"
    with pytest.raises(TrackingError, match="does not exist"):
        log_search_run(["q"], [[]], latencies_ms=[1.0], params={}, experiment="x",
                       tracking_uri=uri)


# --------------------------------------------------------------------------- ingest runs


def test_ingest_run_records_params_metrics_sources_tags_and_the_bundle(
    tracking_uri: str, tmp_path: Path
) -> None:
    sources = write_corpus_files(tmp_path / "docs")
    with Store.open(build_store(tmp_path / "store")) as store:
        report = ingest_report([str(sources)], store=store)
        run_id = log_ingest_run(report, store=store, experiment="ingest", tracking_uri=tracking_uri)
        generation = store.stats().generation
        store_id = store.store_id
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["source_digest"] == report.source_digest
    assert params["loader"] == "markdown"
    assert params["chunker"] == "fixed" and params["chunker.size"] == "200"
    assert params["embedder"] == "tfidf" and params["embedder_version"] == "tfidf-lsa:test"
    assert params["dimension"] == "8" and params["index_type"] == "flat"
    assert metrics["documents_new"] == len(CORPUS) and metrics["chunks"] == 2 * len(CORPUS)
    for name in ("documents_updated", "documents_unchanged", "documents_failed",
                 "vectors_embedded", "vectors_cached", "tokens", "cost_usd"):
        assert name in metrics
    assert metrics["seconds_embed"] == pytest.approx(0.1)
    assert metrics["chunks_per_second"] == pytest.approx(12 / 0.18)
    assert metrics["store_bytes"] > 0
    assert tags[TAG_RUN_TYPE] == "ingest" and tags[TAG_STORE_ID] == store_id
    assert tags[TAG_GENERATION] == str(generation) and tags[TAG_PREVIOUS_GENERATION] == "0"
    assert TAG_PREVIOUS_RUN_ID not in tags

    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "sources"
    assert dataset_input.dataset.digest == report.source_digest[:36]
    assert str(sources) in dataset_input.dataset.source
    assert [t.value for t in dataset_input.tags if t.key == "mlflow.data.context"] == ["ingest"]
    assert dataset_input.dataset.profile  # the table of sources: one row, 6 files

    listed = {a.path for a in client.list_artifacts(run_id, BUNDLE_ARTIFACT_PATH)}
    assert {"store/manifest.json", "store/metadata.db", "store/index"} <= listed
    report_json = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/ingest_report.json"))
    assert report_json["source_digest"] == report.source_digest

    bundle = download_bundle(run_id, tmp_path / "download", tracking_uri=tracking_uri)
    with Store.open(bundle, immutable=True, verify_files=True) as downloaded:
        assert downloaded.store_id == store_id
        assert downloaded.lexical_search("honey bees", k=1)[0].document_id == "bees"
        assert downloaded.manifest is not None and downloaded.manifest.generation == generation


def test_a_later_ingest_run_names_the_previous_generation_and_run(
    tracking_uri: str, tmp_path: Path
) -> None:
    other = build_store(tmp_path / "other")  # another store in the same experiment
    with Store.open(build_store(tmp_path / "store")) as store, Store.open(other) as other_store:
        first = log_ingest_run(ingest_report(["a"], store=store), store=store,
                               experiment="ingest", tracking_uri=tracking_uri)
        log_ingest_run(ingest_report(["b"], store=other_store), store=other_store,
                       experiment="ingest", tracking_uri=tracking_uri)
        first_generation = mlflow.MlflowClient().get_run(first).data.tags[TAG_GENERATION]
        store.write([make_corpus_record("extra", ["Sourdough bread needs a lively starter.",
                                                  "Bake the loaf in a hot Dutch oven."])])
        second = log_ingest_run(ingest_report(["a"], store=store, documents_new=1),
                                store=store, experiment="ingest", tracking_uri=tracking_uri)
    tags = mlflow.MlflowClient().get_run(second).data.tags
    assert tags[TAG_PREVIOUS_RUN_ID] == first
    assert tags[TAG_PREVIOUS_GENERATION] == first_generation
    assert int(tags[TAG_GENERATION]) > int(first_generation)


def test_failed_sources_are_logged_as_a_table(tracking_uri: str, tmp_path: Path) -> None:
    from mlflow_rag.types import LoadFailure

    with Store.open(build_store(tmp_path / "store")) as store:
        report = ingest_report(["docs"], store=store, documents_failed=1,
                               failures=(LoadFailure("docs/broken.pdf", "not a PDF"),))
        run_id = log_ingest_run(report, store=store, experiment="ingest", tracking_uri=tracking_uri)
    table = mlflow.artifacts.load_dict(f"runs:/{run_id}/failures.json")
    assert table["columns"] == ["source_path", "reason"]
    assert table["data"] == [["docs/broken.pdf", "not a PDF"]]
    assert mlflow.MlflowClient().get_run(run_id).data.metrics["documents_failed"] == 1


def test_unknown_model_config_keys_are_refused(tracking_uri: str, tmp_path: Path) -> None:
    from mlflow_rag.errors import InvalidInput
    from mlflow_rag.tracking import log_model

    with pytest.raises(InvalidInput, match=r"unknown model_config keys \['pii'\]"):
        log_model(build_store(tmp_path / "store"), model_config={"pii": True},
                  tracking_uri=tracking_uri)


def test_inside_mlflow_run_the_project_run_receives_the_logs(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlflow run` starts the run, logs the -P values as params and sets MLFLOW_RUN_ID."""
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("project")
    project_run = client.create_run(experiment_id).info.run_id
    client.log_param(project_run, "embedder", "tfidf")  # same value as ours
    client.log_param(project_run, "chunker", "auto")  # a different value
    monkeypatch.setenv("MLFLOW_RUN_ID", project_run)
    with Store.open(build_store(tmp_path / "store")) as store:
        run_id = log_ingest_run(ingest_report(["a"], store=store), store=store,
                                experiment="another-name", tracking_uri=tracking_uri)
    assert run_id == project_run
    params = client.get_run(run_id).data.params
    assert params["chunker"] == "auto" and params["mlflow_rag.chunker"] == "fixed"
    assert params["embedder"] == "tfidf" and "mlflow_rag.embedder" not in params


# --------------------------------------------------------------------------- search runs


def _hits(store: Store, query: str, k: int = 2) -> list[Hit]:
    return store.lexical_search(query, k=k)


def test_search_run_logs_the_hits_table_latencies_and_params(
    tracking_uri: str, tmp_path: Path
) -> None:
    queries = [f"green tea for {PII_EMAIL}", "honey bees", "zzzz unknown"]
    with Store.open(build_store(tmp_path / "store"), read_only=True) as store:
        hits = [_hits(store, q) for q in queries]
    run_id = log_search_run(
        queries, hits, latencies_ms=[10.0, 20.0, 30.0],
        params={"mode": "bm25", "k": 2, "filters": {"country": "UK"}, "embedder": "tfidf"},
        experiment="search", tracking_uri=tracking_uri,
    )
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.params == {"mode": "bm25", "k": "2", "filters": '{"country": "UK"}',
                               "embedder": "tfidf"}
    assert run.data.metrics["latency_p50_ms"] == 20.0
    assert run.data.metrics["latency_p95_ms"] == pytest.approx(29.0)
    assert run.data.metrics["latency_mean_ms"] == 20.0
    assert run.data.tags[TAG_RUN_TYPE] == "search"
    table = mlflow.load_table("hits.json", run_ids=[run_id])
    assert not hits[2] and all(hits[:2])
    assert len(table) == len(hits[0]) + len(hits[1]) + 1  # a query without hits keeps one row
    assert set(table["query"]) == {"green tea for <email>", "honey bees", "zzzz unknown"}
    assert table[table["query"] == "honey bees"].iloc[0]["document_id"] == "bees"
    assert PII_EMAIL not in table.to_json()


def test_with_a_run_active_the_logged_run_is_its_child(tracking_uri: str, tmp_path: Path) -> None:
    mlflow.set_experiment("parent")
    with mlflow.start_run() as parent:
        child = log_search_run(["q"], [[]], latencies_ms=[1.0], params={"mode": "bm25"},
                               experiment="ignored-inside-a-run", tracking_uri=tracking_uri)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # still the parent's
    run = mlflow.MlflowClient().get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.experiment_id == parent.info.experiment_id


def test_search_run_refuses_lists_of_different_lengths(tracking_uri: str) -> None:
    with pytest.raises(ValueError, match="one of each per query"):
        log_search_run(["a", "b"], [[]], latencies_ms=[1.0], params={}, experiment="x",
                       tracking_uri=tracking_uri)


# --------------------------------------------------------------------------- CLI


def test_cli_search_with_experiment_logs_a_retrieval_run(tracking_uri: str, tmp_path: Path) -> None:
    store = build_store(tmp_path / "store")
    result = CliRunner().invoke(main, [
        "search", "honey bees", "--store", str(store), "--mode", "bm25", "-k", "2", "--json",
        "--experiment", "cli-search", "--tracking-uri", tracking_uri,
    ])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["document_id"] == "bees"
    experiment = mlflow.get_experiment_by_name("cli-search")
    (run,) = mlflow.MlflowClient().search_runs([experiment.experiment_id])
    assert run.data.params["mode"] == "bm25" and run.data.params["k"] == "2"
    assert run.data.tags[TAG_RUN_TYPE] == "search" and TAG_STORE_ID in run.data.tags
    assert f"logged search run {run.info.run_id}" in result.stderr


def test_cli_search_without_experiment_does_not_import_mlflow(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store")
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mlflow_rag.cli import main\n"
        f"r = CliRunner().invoke(main, ['search', 'honey bees', '--store', {str(store)!r}, "
        "'--mode', 'bm25'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=subprocess_env(),
                   timeout=120)


def test_cli_unreachable_tracking_server_is_a_one_line_error(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store")
    result = CliRunner().invoke(main, [
        "search", "honey bees", "--store", str(store), "--mode", "bm25", "--experiment", "x",
        "--tracking-uri", f"http://127.0.0.1:{free_port()}",
    ])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the MLflow tracking server")


def test_cli_log_model_prints_the_model_uri_and_the_alias_uri(
    tracking_uri: str, tmp_path: Path
) -> None:
    store = build_store(tmp_path / "store")
    result = CliRunner().invoke(main, [
        "log-model", "--store", str(store), "--register", "rag-cli", "--alias", "champion",
        "--experiment", "cli-model", "--tracking-uri", tracking_uri,
    ])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("models:/m-")
    assert lines[1:] == ["models:/rag-cli/1", "models:/rag-cli@champion"]
    model = mlflow.pyfunc.load_model("models:/rag-cli@champion")
    assert model.predict({"query": "honey bees"}, params={"k": 1}).iloc[0].document_id == "bees"


@pytest.mark.slow
def test_a_killed_log_model_leaves_no_copy_in_tmpdir_and_the_next_run_removes_its_copy(
    tracking_uri: str, tmp_path: Path
) -> None:
    """A bundle is a full copy of the store's text: a killed log-model must not leave it in
    $TMPDIR for good. It works inside STORE/.scratch, and the next run removes what a killed
    one left there."""
    store = build_store(tmp_path / "store")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    scratch = store / ".scratch"

    def copies() -> list[Path]:
        return [*tmpdir.rglob("metadata.db"), *scratch.rglob("metadata.db")]

    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow_rag.cli", "log-model", "--store", str(store),
         "--experiment", "killed", "--tracking-uri", tracking_uri],
        env=subprocess_env(TMPDIR=str(tmpdir)), cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not copies() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # polling for the moment the copy exists, then kill -9
    proc.kill()
    proc.wait(timeout=30)
    assert copies(), "log-model ended before its bundle copy was seen: nothing was killed"
    assert not list(tmpdir.rglob("metadata.db")), "a copy of the store was left in $TMPDIR"
    assert list(scratch.rglob("metadata.db"))  # left by the killed run, inside the store

    from mlflow_rag.tracking import log_model

    info = log_model(store, experiment="again", tracking_uri=tracking_uri)
    assert info.model_uri
    assert not scratch.exists() or not any(scratch.iterdir())  # the killed run's copy is gone


def test_cli_alias_without_register_is_refused(tracking_uri: str, tmp_path: Path) -> None:
    store = build_store(tmp_path / "store")
    result = CliRunner().invoke(main, ["log-model", "--store", str(store), "--alias", "champion",
                                       "--tracking-uri", tracking_uri])
    assert result.exit_code == 1
    assert "--alias needs --register" in result.stderr


# --------------------------------------------------------------------------- MLproject


def _entry_point_command(name: str, params: dict[str, Any]) -> str:
    from mlflow.projects import _project_spec

    return str(_project_spec.load_project(str(REPO)).get_entry_point(name)
               .compute_command(params, None))


def test_mlproject_entry_points_call_the_cli_with_quoted_params() -> None:
    command = _entry_point_command("ingest", {"source": "my docs", "store": "/s"})
    assert "mlflow-rag ingest 'my docs' --store /s --embedder minilm" in command
    command = _entry_point_command(
        "search", {"query": "what's new?", "store": "/s", "filters": '{"country": "UK"}'}
    )
    assert "opt+=(--filter '{\"country\": \"UK\"}')" in command
    assert "mlflow-rag search 'what'\"'\"'s new?' --store /s -k 5 --mode hybrid" in command
    command = _entry_point_command("log_model", {"store": "/s", "register": "rag",
                                                 "alias": "champion"})
    assert "mlflow-rag log-model --store /s --name retriever" in command
    command = _entry_point_command("evaluate", {"dataset": "d", "max_queries": "50"})
    assert "mlflow-rag evaluate d --experiment mlflow-rag" in command


@pytest.mark.parametrize(
    ("entry_point", "params", "expected"),
    [
        ("ingest", {"source": "d", "chunker": "fixed", "chunk_size": "128"},
         ["--chunker", "fixed", "--chunk-size", "128"]),
        ("ingest", {"source": "d", "id_prefix": "corpus2/"}, ["--id-prefix", "corpus2/"]),
        ("ingest", {"source": "d"}, []),
        ("search", {"query": "q", "store": "/s", "filters": '{"a": 1}'}, ["--filter", '{"a": 1}']),
        ("search", {"query": "q", "store": "/s"}, []),
        ("log_model", {"store": "/s", "register": "rag", "alias": "champion"},
         ["--register", "rag", "--alias", "champion"]),
        ("log_model", {"store": "/s"}, []),
        ("evaluate", {"dataset": "d", "max_queries": "50", "variants": "grid.yaml", "split": "dev"},
         ["--variants", "grid.yaml", "--split", "dev", "--max-queries", "50"]),
        ("evaluate", {"dataset": "d"}, []),
    ],
)
def test_mlproject_optional_params_are_passed_only_when_given(
    entry_point: str, params: dict[str, Any], expected: list[str]
) -> None:
    """Run the command through bash with `mlflow-rag` replaced by a function printing its
    arguments: the shell quoting and the optional-argument arrays must give exactly these."""
    command = _entry_point_command(entry_point, params)
    script = 'mlflow-rag() { printf "%s\\n" "$@"; }\n' + command
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    args = out.stdout.splitlines()
    tail = args[len(args) - len(expected):] if expected else []
    assert tail == expected
    if not expected:
        assert not any(a in args for a in ("--chunker", "--chunk-size", "--filter", "--register",
                                           "--alias", "--variants", "--split", "--max-queries"))


def _ingest_available() -> str:
    result = subprocess.run([str(helpers_mlflow.VENV_BIN / "mlflow-rag"), "ingest", "--help"],
                            capture_output=True, text=True, env=subprocess_env(), timeout=120)
    return "" if result.returncode == 0 else f"`mlflow-rag ingest` is not available: {result.stderr}"


@pytest.mark.slow
def test_mlflow_run_ingest_then_search_entry_points(tracking_uri: str, tmp_path: Path) -> None:
    reason = _ingest_available()
    if reason:
        pytest.skip(reason)
    sources = write_corpus_files(tmp_path / "docs")
    store = tmp_path / "store"
    env = subprocess_env(MLFLOW_TRACKING_URI=tracking_uri, HF_HUB_OFFLINE="1")
    mlflow_cli = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
                  "--experiment-name", "project"]
    subprocess.run(
        [*mlflow_cli, "-e", "ingest", "-P", f"source={sources}", "-P", f"store={store}",
         "-P", "embedder=tfidf"],
        check=True, cwd=tmp_path, env=env, timeout=600,
    )
    subprocess.run(
        [*mlflow_cli, "-e", "search", "-P", "query=honey bees", "-P", f"store={store}",
         "-P", "mode=bm25", "-P", "k=2", "-P", 'filters={"title": "Beekeeping"}'],
        check=True, cwd=tmp_path, env=env, timeout=600,
    )
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("project")
    runs = {r.data.tags.get(TAG_RUN_TYPE): r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"ingest", "search"}
    ingest_run = runs["ingest"]
    assert ingest_run.data.tags["mlflow.project.entryPoint"] == "ingest"
    assert ingest_run.data.metrics["documents_new"] == len(CORPUS)
    assert ingest_run.data.params["embedder"] == "tfidf"
    assert {a.path for a in client.list_artifacts(ingest_run.info.run_id, "store")} >= {
        "store/manifest.json", "store/metadata.db"}
    # a search entry point over the bundle the ingest run logged (a `path` param downloads it)
    subprocess.run(
        [*mlflow_cli, "-e", "search", "-P", "query=green tea",
         "-P", f"store=runs:/{ingest_run.info.run_id}/store", "-P", "mode=hybrid", "-P", "k=1"],
        check=True, cwd=tmp_path, env=env, timeout=600,
    )
    searches = [r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get(TAG_RUN_TYPE) == "search"]
    from_bundle = next(r for r in searches if r.data.params["mode"] == "hybrid")
    table = mlflow.artifacts.load_dict(f"runs:/{from_bundle.info.run_id}/hits.json")
    assert table["data"][0][table["columns"].index("document_id")] == "tea.md"
    search_run = runs["search"]
    assert search_run.data.params["mode"] == "bm25"
    table = mlflow.artifacts.load_dict(f"runs:/{search_run.info.run_id}/hits.json")
    column = table["columns"].index("document_id")
    assert {row[column] for row in table["data"]} == {"bees.md"}  # ids are relative paths
    assert os.path.isdir(store)


@pytest.mark.parametrize(
    ("entry_point", "params"),
    [
        ("ingest", {"source": "docs", "store": "/s", "chunker": "fixed", "chunk_size": "128"}),
        ("search", {"query": "q", "store": "/s", "k": "3", "mode": "bm25", "filters": '{"a": 1}'}),
        ("log_model", {"store": "/s", "register": "rag", "alias": "champion"}),
        ("evaluate", {"dataset": "d", "variants": "grid.yaml", "split": "dev", "max_queries": "5"}),
    ],
)
def test_mlproject_commands_parse_with_the_cli(entry_point: str, params: dict[str, Any]) -> None:
    """The entry points and the CLI must not drift apart: click parses what MLproject sends."""
    command = _entry_point_command(entry_point, params)
    script = 'mlflow-rag() { printf "%s\\0" "$@"; }\n' + command
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True)
    args = out.stdout.decode().split("\0")[:-1]
    name = args[0]
    assert name in main.commands, f"the CLI has no {name!r} command"
    context = main.commands[name].make_context(name, args[1:])
    assert context.params  # parsed without a usage error
