"""Scenario tests of the CLI's small frictions (issue 17, items 10-15), each driving
`mlflow-rag` as a user does, on a store that already holds data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from tests import helpers_mlflow
from tests.helpers_mlflow import CORPUS, write_corpus_files

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """`mlflow-rag ARGS` in a child process, as a user runs it (this worktree's code), in
    ``env`` (the whole environment) when given, else in this process's."""
    child_env = {**(env if env is not None else os.environ), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], cwd=cwd,
                          env=child_env, capture_output=True, text=True, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def run(*args: str) -> tuple[int, str]:
    """In process (fast); the output has stdout and stderr, JSON is on stdout alone."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def run_json(*args: str) -> object:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def md_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six Markdown files ingested by the CLI (tfidf, small chunks: several per document)."""
    root = tmp_path_factory.mktemp("md")
    corpus = write_corpus_files(root / "corpus")
    cli("ingest", str(corpus), "--store", str(root / "store"), "--embedder", "tfidf",
        "--chunk-size", "20", "--no-track")
    return root / "store"


# --------------------------------------------------------------------------- item 12


def test_search_hits_show_the_document_id_and_the_title(md_store: Path) -> None:
    proc = cli("search", "green tea", "--store", str(md_store), "--mode", "bm25", "-k", "1")
    first = proc.stdout.splitlines()[0]
    assert "tea.md" in first and "Green tea" in first, first  # the id to `show`, then the title
    assert first.index("tea.md") < first.index("Green tea")


def test_list_shows_document_ids_with_a_filter_a_limit_and_json(md_store: Path) -> None:
    code, out = run("list", "--store", str(md_store))
    assert code == 0, out
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert sorted(listed[:len(CORPUS)]) == sorted(f"{name}.md" for name in CORPUS)

    docs = run_json("list", "--store", str(md_store), "--filter", '{"title": "Green tea"}',
                    "--json")
    assert [d["id"] for d in docs] == ["tea.md"] and docs[0]["metadata"]["title"] == "Green tea"

    assert len(run_json("list", "--store", str(md_store), "--limit", "2", "--json")) == 2

    code, out = run("list", "--store", str(md_store), "--filter", '{"title": {"$regex": 1}}')
    assert code == 1 and out.count("\n") == 1 and "Unknown filter operator '$regex'" in out


def test_list_says_when_the_limit_cut_the_listing(md_store: Path) -> None:
    proc = cli("list", "--store", str(md_store), "--limit", "2")
    assert len(proc.stdout.splitlines()) == 2
    assert "--limit" in proc.stderr  # more documents match than were shown


def test_show_accepts_a_chunk_id(md_store: Path) -> None:
    chunk_id = run_json("search", "matcha sencha", "--store", str(md_store), "--mode", "bm25",
                        "-k", "1", "--json")[0]["chunk_id"]
    code, out = run("show", chunk_id, "--store", str(md_store))
    assert code == 0, out
    assert "tea.md" in out and "Sencha and matcha" in out
    assert "Green tea is brewed" not in out  # that chunk only, not the whole document
    shown = run_json("show", chunk_id, "--store", str(md_store), "--json")
    assert shown["id"] == chunk_id and shown["document_id"] == "tea.md"

    code, out = run("show", "tea.md#99", "--store", str(md_store))
    assert code == 1 and out.count("\n") == 1
    assert "no document or chunk with id 'tea.md#99'" in out


def test_per_document_groups_hits_by_document(md_store: Path) -> None:
    groups = run_json("search", "green tea matcha honey", "--store", str(md_store), "--mode", "bm25",
                      "-k", "2", "--per-document", "--json")
    ids = [g["document_id"] for g in groups]
    assert len(ids) == 2 and len(set(ids)) == 2 and ids[0] == "tea.md"
    tea = groups[0]
    assert len(tea["hits"]) >= 2 and {h["document_id"] for h in tea["hits"]} == {"tea.md"}
    assert tea["score"] == max(h["score"] for h in tea["hits"]) >= groups[1]["score"]

    code, out = run("search", "green tea matcha honey", "--store", str(md_store), "--mode", "bm25",
                    "-k", "2", "--per-document")
    assert code == 0, out
    headers = [line for line in out.splitlines() if not line.startswith(" ")]
    assert len(headers) == 2 and "tea.md" in headers[0]


# --------------------------------------------------------------------------- item 11


def _clean_env(**extra: str) -> dict[str, str]:
    """A user's shell: no MLflow variables exported."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_EXPERIMENT", "MLFLOW_RUN",
                                "MLFLOW_LOGGING_LEVEL"))}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


PRINT_BOTH = ("import mlflow; from mlflow_rag.tracking import resolve_tracking_uri; "
              "print(resolve_tracking_uri(None)); print(mlflow.get_tracking_uri())")


@pytest.mark.parametrize("old_file_store", [False, True])
def test_the_default_tracking_uri_is_mlflows_own(tmp_path: Path, old_file_store: bool) -> None:
    if old_file_store:  # MLflow keeps using ./mlruns where it already holds experiments
        (tmp_path / "mlruns" / "0").mkdir(parents=True)
        (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    proc = subprocess.run([sys.executable, "-c", PRINT_BOTH], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, check=True)
    ours, mlflows = proc.stdout.split()
    assert ours == mlflows
    assert ("mlruns" if old_file_store else "mlflow.db") in ours


def test_mlflow_and_mlflow_rag_see_the_same_runs_without_exporting_anything(
    tmp_path: Path,
) -> None:
    corpus = write_corpus_files(tmp_path / "corpus")
    env = _clean_env()
    cli("ingest", str(corpus), "--store", "store", "--embedder", "tfidf", cwd=tmp_path, env=env)
    # what `mlflow ui` / `mlflow models serve` read with nothing set: MLflow's own default
    code = ("import mlflow\n"
            "runs = mlflow.search_runs(search_all_experiments=True)\n"
            "names = {e.experiment_id: e.name for e in mlflow.search_experiments()}\n"
            "for _, r in runs.iterrows():\n"
            "    print(names[r['experiment_id']], r['tags.mlflow_rag.run_type'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.split("\n")[:1] == ["mlflow-rag ingest"], proc.stdout
    assert not (tmp_path / "mlruns.db").exists()


def test_every_command_defaults_to_one_experiment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_rag import eval_tracking, tracking_session

    assert eval_tracking.DEFAULT_EVAL_EXPERIMENT == tracking_session.DEFAULT_EXPERIMENT == "mlflow-rag"
    help_text = "\n".join(
        CliRunner().invoke(main, [name, "--help"]).output
        for name in ("ingest", "import-legacy", "log-model", "evaluate")
    )
    assert "mlflow-rag-eval" not in help_text and "[default: Default]" not in help_text
    assert "sqlite:///mlruns.db" not in help_text
    mlproject = (REPO / "MLproject").read_text(encoding="utf-8")
    assert "mlflow-rag-eval" not in mlproject


def test_runs_in_the_old_default_database_are_pointed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow_rag.tracking import legacy_tracking_note

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert legacy_tracking_note(None) is None  # nothing old here
    (tmp_path / "mlruns.db").write_bytes(b"")
    note = legacy_tracking_note(None)
    assert note and "mlflow ui --backend-store-uri sqlite:///mlruns.db" in note
    assert legacy_tracking_note("sqlite:///elsewhere.db") is None  # the user chose
    (tmp_path / "mlflow.db").write_bytes(b"")
    assert legacy_tracking_note(None) is None  # already moved on


# --------------------------------------------------------------------------- item 15

# What MLflow prints on its own: INFO lines, warnings, progress bars, registry chatter.
MLFLOW_NOISE = ("INFO mlflow", "WARNING mlflow", "Warning", "warnings.warn", "Downloading artifacts",
                "Successfully registered", "Created version", "Validating input example")


@pytest.mark.slow  # two tracked commands, one logging a model: ~35 s on a quiet machine
def test_tracked_runs_and_model_versions_are_named_described_and_tagged(tmp_path: Path) -> None:
    corpus = write_corpus_files(tmp_path / "corpus")
    env = _clean_env()
    ingest = cli("ingest", str(corpus), "--store", "notes", "--embedder", "tfidf", "--json",
                 cwd=tmp_path, env=env)
    report = json.loads(ingest.stdout)
    assert report["documents_new"] == len(CORPUS) and report["run_id"]
    logged = cli("log-model", "--store", "notes", "--register", "notes-retriever",
                 "--alias", "champion", cwd=tmp_path, env=env)
    for proc in (ingest, logged):  # the CLI's own lines only
        noise = [line for line in proc.stderr.splitlines() if any(n in line for n in MLFLOW_NOISE)]
        assert not noise, proc.stderr

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(report["run_id"])
    tags = run.data.tags
    store_id = tags["mlflow_rag.store_id"]
    assert "notes" in run.info.run_name and f"{len(CORPUS)} new" in run.info.run_name
    assert tags["mlflow_rag.embedder"] == "tfidf"
    assert tags["mlflow_rag.documents"] == str(len(CORPUS))
    assert store_id in tags["mlflow.note.content"]  # the run's description in the UI

    version = client.get_model_version_by_alias("notes-retriever", "champion")
    assert store_id in version.description and report["run_id"] in version.description
    assert version.tags["mlflow_rag.store_id"] == store_id
    assert version.tags["mlflow_rag.embedder"] == "tfidf"
    assert version.tags["mlflow_rag.documents"] == str(len(CORPUS))
    assert version.tags["mlflow_rag.ingest_run_id"] == report["run_id"]
    model_run = client.get_run(version.run_id)
    assert "notes" in model_run.info.run_name
    assert model_run.data.tags["mlflow_rag.ingest_run_id"] == report["run_id"]
    assert report["run_id"] in model_run.data.tags["mlflow.note.content"]


def test_ingest_json_without_tracking(tmp_path: Path) -> None:
    corpus = write_corpus_files(tmp_path / "corpus")
    proc = cli("ingest", str(corpus), "--store", str(tmp_path / "s"), "--embedder", "tfidf",
               "--json", "--no-track")
    report = json.loads(proc.stdout)
    assert report["documents_new"] == len(CORPUS) and report["chunks"] >= len(CORPUS)
    assert report["embedder"] == "tfidf" and report["run_id"] is None
    assert report["failures"] == []


def test_the_tfidf_fit_shows_progress(tmp_path: Path) -> None:
    corpus = write_corpus_files(tmp_path / "corpus")
    proc = cli("ingest", str(corpus), "--store", str(tmp_path / "s"), "--embedder", "tfidf",
               "--no-track", env=_clean_env(MLFLOW_RAG_PROGRESS="1"))
    assert "tfidf fit" in proc.stderr, proc.stderr


def test_multi_page_pdf_chunks_match_chunk_page_filters(tmp_path: Path) -> None:
    from tests.fixtures_loaders import make_pdf

    pages = ["Volcanoes erupt with basalt lava on page one.",
             "Volcanoes also throw ash clouds on page two.",
             "Glaciers carve valleys on page three."]
    (tmp_path / "pdfs").mkdir()
    (tmp_path / "pdfs" / "earth.pdf").write_bytes(make_pdf(pages))
    (tmp_path / "pdfs" / "tea.txt").write_text("Green tea and volcanoes have nothing in common.")
    store = str(tmp_path / "s")
    cli("ingest", str(tmp_path / "pdfs"), "--store", store, "--embedder", "tfidf", "--no-track")
    # the whole document is one chunk across the three pages
    hits = run_json("search", "volcanoes", "--store", store, "--mode", "bm25", "--json",
                    "--filter", '{"chunk.page": 2}')
    assert len(hits) == 1 and hits[0]["chunk_metadata"]["page_start"] == 1
    assert hits[0]["chunk_metadata"]["page_end"] == 3
    for spec, found in [('{"chunk.page": 4}', 0), ('{"chunk.page": {"$in": [3, 9]}}', 1),
                        ('{"chunk.page": {"$gte": 3}}', 1), ('{"chunk.page": {"$lt": 1}}', 0)]:
        hits = run_json("search", "volcanoes", "--store", store, "--mode", "bm25", "--json",
                        "--filter", spec)
        assert len(hits) == found, spec
    docs = run_json("list", "--store", store, "--json", "--filter", '{"chunk.page": 3}')
    assert [d["id"] for d in docs] == ["earth.pdf"]


tracking_template = helpers_mlflow.tracking_template  # shared fixtures: a private tracking store
tracking_uri = helpers_mlflow.tracking_uri

TINY_GRID = {"name": "tiny", "ks": [1, 3, 5], "metric": "ndcg_at_5",
             "grid": {"embedder": "tfidf", "chunk_size": 64, "mode": ["bm25", "dense"], "k": 5}}


def test_evaluate_json_and_child_store_paths_outlive_the_command(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from mlflow_rag.store.store import Store
    from tests.test_harness import write_beir

    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    beir = write_beir(tmp_path / "tiny")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(TINY_GRID), encoding="utf-8")
    result = CliRunner().invoke(main, ["evaluate", str(beir), "--variants", str(grid), "--json",
                                       "--tracking-uri", tracking_uri])  # no --work-dir
    assert result.exit_code == 0, result.output
    noise = [line for line in result.stderr.splitlines() if any(n in line for n in MLFLOW_NOISE)]
    assert not noise, result.stderr
    out = json.loads(result.stdout)
    assert out["metric"] == "ndcg_at_5" and out["best"]["variant"] in ("bm25", "dense-tfidf")
    assert {v["variant"] for v in out["variants"]} == {"bm25", "dense-tfidf"}
    assert out["parent_run_id"] and set(out["child_run_ids"]) == {"bm25", "dense-tfidf"}

    # the notebook's register-the-best step: the child run's store path, after the command
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(out["parent_run_id"]).data.metrics
    assert parent["corpus_failures"] == parent["relevant_ids_missing"] == 0  # a clean corpus
    assert out["corpus"]["relevant_ids_missing"] == []
    for run_id in out["child_run_ids"].values():
        path = Path(client.get_run(run_id).data.tags["mlflow_rag.store_path"])
        assert path.is_dir(), path
        with Store.open(path, read_only=True) as store:
            assert store.stats().documents > 0
    assert str(tmp_path / "cache") in str(path)  # kept under the cache, not in a temp folder


# --------------------------------------------------------------------------- item 10

BM25_GRID = {"name": "lexical", "ks": [1, 3], "metric": "ndcg_at_3",
             "grid": {"chunk_size": 64, "mode": ["bm25"], "k": 3}}


def _questions(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = ["query,relevant_ids"] + [f"{query},{ids}" for query, ids in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_evaluate_reports_corpus_failures_and_relevant_ids_missing_from_the_corpus(
    tmp_path: Path,
) -> None:
    corpus = write_corpus_files(tmp_path / "corpus")
    (corpus / "broken.txt").write_bytes(b"\x00\x01binary\x00" * 50)  # fails to load
    questions = _questions(tmp_path / "questions.csv", [
        ("green tea brewing", "tea.md"),
        ("mainframe COBOL migration", "cobol.md|ghost.md"),
        ("dragons and wizards", "ghost.md|phantom.md"),  # none of it is in the corpus
    ])
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(BM25_GRID), encoding="utf-8")
    args = ["evaluate", str(questions), "--corpus", str(corpus), "--variants", str(grid),
            "--no-track", "--work-dir", str(tmp_path / "w")]
    proc = cli(*args)
    assert "broken.txt" in proc.stderr and "1 corpus item failed to load" in proc.stderr
    assert "2 relevant ids are not in the corpus" in proc.stderr
    assert "ghost.md" in proc.stderr and "phantom.md" in proc.stderr
    assert "1 of 3 queries has no relevant document in the corpus" in proc.stderr

    out = json.loads(cli(*args, "--json").stdout)
    problems = out["corpus"]
    assert [f["source_path"].endswith("broken.txt") for f in problems["failures"]] == [True]
    assert problems["relevant_ids_missing"] == ["ghost.md", "phantom.md"]
    assert len(problems["queries_without_relevant_documents"]) == 1


def test_evaluate_takes_text_columns_for_a_csv_corpus(tmp_path: Path) -> None:
    from mlflow_rag.store.store import Store

    corpus = tmp_path / "talks.csv"
    corpus.write_text(
        "id,title,abstract,internal\n"
        "t1,Tea,Green tea is brewed below boiling,reviewer notes about volcanoes\n"
        "t2,Mainframes,COBOL mainframes move to the cloud,reviewer notes about bees\n",
        encoding="utf-8")
    questions = _questions(tmp_path / "q.csv", [("green tea", "t1"), ("cobol cloud", "t2")])
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(BM25_GRID), encoding="utf-8")
    out = json.loads(cli("evaluate", str(questions), "--corpus", str(corpus), "--variants",
                         str(grid), "--no-track", "--work-dir", str(tmp_path / "w"),
                         "--text-columns", "title,abstract", "--id-column", "id",
                         "--json").stdout)
    assert out["corpus"]["relevant_ids_missing"] == [] and out["best"]["value"] == 1.0
    with Store.open(out["best"]["store_path"], read_only=True) as store:
        text = " ".join(c.text for c in store.get_document("t1").chunks)
    assert "Green tea" in text and "reviewer notes" not in text

    bad = cli("evaluate", str(questions), "--corpus", str(corpus), "--variants", str(grid),
              "--no-track", "--text-columns", "nope", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr


# --------------------------------------------------------------------------- item 14


def test_a_tracked_ingest_that_changed_nothing_refers_to_the_bundle_it_would_copy(
    tracking_uri: str, tmp_path: Path
) -> None:
    import mlflow

    from mlflow_rag.store.store import Store
    from mlflow_rag.tracking import download_bundle

    corpus = write_corpus_files(tmp_path / "corpus")
    store = str(tmp_path / "store")

    def ingest() -> str:
        result = CliRunner().invoke(main, ["ingest", str(corpus), "--store", store, "--embedder",
                                           "tfidf", "--json", "--tracking-uri", tracking_uri])
        assert result.exit_code == 0, result.output
        return str(json.loads(result.stdout)["run_id"])

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)

    def bundle_files(run_id: str) -> list[str]:
        return [f.path for f in client.list_artifacts(run_id, "store")]

    first = ingest()
    assert "store/manifest.json" in bundle_files(first)
    second = ingest()  # nothing changed
    assert bundle_files(second) == []  # the store was not copied again
    tags = client.get_run(second).data.tags
    assert tags["mlflow_rag.bundle_run_id"] == first
    assert first in tags["mlflow.note.content"]
    third = ingest()  # still nothing: refers to the run that holds the bundle, not to `second`
    assert client.get_run(third).data.tags["mlflow_rag.bundle_run_id"] == first
    with Store.open(download_bundle(third, tmp_path / "dl", tracking_uri=tracking_uri),
                    immutable=True, verify_files=True) as bundle:
        assert bundle.stats().documents == len(CORPUS)

    (corpus / "tea.md").write_text("# Green tea\n\nBrewed cooler than black tea.\n")
    changed = ingest()
    assert "store/manifest.json" in bundle_files(changed)
    assert "mlflow_rag.bundle_run_id" not in client.get_run(changed).data.tags
