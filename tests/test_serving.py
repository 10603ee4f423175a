"""Real servers on 127.0.0.1: `mlflow models serve` of the champion, and `mlflow server` that an
ingest logs to over HTTP. Every server is started here and stopped here (its process group)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest

from mlflow_rag.serving import OUTPUT_COLUMNS, QUERY_LOG_ENV
from mlflow_rag.store.store import Store
from mlflow_rag.tracking import (
    TAG_RUN_TYPE,
    TAG_STORE_ID,
    download_bundle,
    log_ingest_run,
    log_model,
)
from tests import helpers_mlflow
from tests.helpers_mlflow import (
    CORPUS,
    PII_EMAIL,
    build_store,
    copy_tracking_store,
    free_port,
    ingest_report,
    log_champion,
    post_json,
    server_process,
    subprocess_env,
    write_corpus_files,
)

pytestmark = pytest.mark.slow

tracking_template = helpers_mlflow.tracking_template  # a shared fixture

SECRET = "confidential question from alice.private@example.org about green tea"


@pytest.fixture(autouse=True)
def _restore_tracking_uri() -> Iterator[None]:
    """Logging to a server points MLflow (process-wide) at it; later tests must not follow."""
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


@dataclass(frozen=True)
class Champion:
    root: Path
    uri: str
    info: Any


@pytest.fixture(scope="module")
def champion(tracking_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Champion:
    root = tmp_path_factory.mktemp("serving")
    uri, info, _ = log_champion(root, tracking_template)
    return Champion(root=root, uri=uri, info=info)


@contextmanager
def model_server(champion: Champion, log_dir: Path, *, workers: int = 1,
                 model: str = "models:/rag@champion", **env: str) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model,
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", str(workers)]
    with server_process(
        args, health_url=f"http://127.0.0.1:{port}/ping", log_path=log_dir / "serve.log",
        cwd=champion.root, env=subprocess_env(MLFLOW_TRACKING_URI=champion.uri, **env),
    ):
        yield f"http://127.0.0.1:{port}"


def request(queries: list[Any], **params: Any) -> dict[str, Any]:
    return {"dataframe_split": {"columns": ["query"], "data": [[q] for q in queries]},
            "params": params}


def test_models_serve_answers_queries_and_rejects_bad_ones_with_400(
    champion: Champion, tmp_path: Path
) -> None:
    with model_server(champion, tmp_path) as url:
        status, body = post_json(f"{url}/invocations",
                                 request(["green tea brewing", "flat bicycle tyre"], k=2))
        assert status == 200, body
        rows = body["predictions"]
        assert len(rows) == 4 and list(rows[0]) == list(OUTPUT_COLUMNS)
        assert [(r["query_index"], r["rank"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
        assert rows[0]["document_id"] == "tea" and rows[2]["document_id"] == "bikes"
        assert "_pii" not in rows[0]["metadata"]

        status, body = post_json(f"{url}/invocations", {
            "dataframe_records": [{"query": "honey bees"}],
            "params": {"k": 1, "mode": "bm25", "filters": '{"country": "Germany"}'},
        })
        assert status == 200 and body["predictions"][0]["document_id"] == "bees"

        bad = [
            (request([""]), "query 0"),
            (request([SECRET], mode="semantic"), "Unknown search mode"),
            (request([SECRET], k=0), "k must be"),
            (request([SECRET], filters="{not json"), "not valid JSON"),
            (request([SECRET], filters='{"country": {"$regex": "U"}}'), "$regex"),
            ({"dataframe_split": {"columns": ["question"], "data": [[SECRET]]}}, "'query' column"),
        ]
        for payload, fragment in bad:
            status, body = post_json(f"{url}/invocations", payload)
            assert status == 400, body
            assert body["error_code"] == "INVALID_PARAMETER_VALUE"
            assert fragment in body["message"]
            text = json.dumps(body)
            assert SECRET not in text and PII_EMAIL not in text and "confidential" not in text


def test_the_plain_request_gets_the_bytes_mlflows_own_parser_and_encoder_write(
    champion: Champion, tmp_path: Path
) -> None:
    """The guard answers the plain table itself (pyfunc_serving); the same table with an index
    goes through MLflow's parser and predictions_to_json: the same status and the same bytes."""
    import httpx

    cases = [(["green tea brewing"], {"k": 3}),
             (["honey bees", "flat bicycle tyre"], {"k": 2, "mode": "bm25"}),
             (["green tea", "bees"], {"k": 2, "output": "nested"}),
             (["tea"], {"k": 2, "filters": '{"country": "Germany"}'}),
             (["zzzz qqqq"], {"k": 2, "mode": "bm25"}),
             (["tea"], {})]
    with model_server(champion, tmp_path) as url, httpx.Client(base_url=url) as client:
        for queries, params in cases:
            plain = request(queries, **params)
            indexed = {**plain, "dataframe_split": {**plain["dataframe_split"],
                                                    "index": list(range(len(queries)))}}
            records = {"dataframe_records": [{"query": q} for q in queries], "params": params}
            stock = client.post("/invocations", json=indexed)
            assert stock.status_code == 200, stock.text
            for body, content_type in ((plain, "application/json"), (records, "application/json"),
                                       (plain, "application/json; charset=UTF-8")):
                fast = client.post("/invocations", content=json.dumps(body),
                                   headers={"content-type": content_type})
                assert (fast.status_code, fast.headers["content-type"], fast.content) == (
                    stock.status_code, stock.headers["content-type"], stock.content)
        refused = client.post("/invocations", content=json.dumps(request(["tea"])),
                              headers={"content-type": "application/json; charset=latin-1"})
        assert refused.status_code == 415  # MLflow's answer, as before


def test_a_served_bm25_only_model_answers_requests_without_a_mode_and_400s_dense(
    champion: Champion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle without a usable embedder (here: no vectors at all) defaults to bm25; asking
    it for dense names the mode and the valid ones."""
    store = build_store(tmp_path / "store", with_vectors=False)
    monkeypatch.chdir(champion.root)  # the new experiment's artifacts go under root/mlruns
    info = log_model(store, experiment="bm25-only", tracking_uri=champion.uri)
    with model_server(champion, tmp_path, model=info.model_uri) as url:
        status, body = post_json(f"{url}/invocations", {
            "dataframe_records": [{"query": "bicycle derailleur"}]})
        assert status == 200, body
        assert body["predictions"][0]["document_id"] == "bikes"
        status, body = post_json(f"{url}/invocations", request([SECRET], mode="dense"))
        assert status == 400, body
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "mode 'dense'" in body["message"] and "['bm25']" in body["message"], body
        assert SECRET not in json.dumps(body)


def test_served_queries_and_hit_texts_stay_out_of_the_tracking_stores_traces(
    champion: Champion, tmp_path: Path
) -> None:
    """Query logging is opt-in; MLflow's traces of served requests must not be a second,
    unpurgeable query log: by default they carry ids, ranks and scores, no text."""
    private = "zebraquartz green tea brewing"
    chunk_text = "brewed with water below boiling"
    database = Path(champion.uri.removeprefix("sqlite:///"))
    with model_server(champion, tmp_path) as url:
        before = _trace_count(database)
        status, body = post_json(f"{url}/invocations", request([private], k=2, mode="hybrid"))
        assert status == 200 and body["predictions"][0]["document_id"] == "tea"
        assert chunk_text in body["predictions"][0]["text"]  # the answer itself has the text
        deadline = time.monotonic() + 60
        while _trace_count(database) == before and time.monotonic() < deadline:
            time.sleep(0.2)  # traces are exported asynchronously
    assert _trace_count(database) > before, "the request left no trace (nothing was checked)"
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    stored += b"".join(p.read_bytes() for p in (champion.root / "mlruns").rglob("*")
                       if p.is_file() and "traces" in p.parts)
    for text in (private, "zebraquartz", chunk_text):
        assert text.encode() not in stored and text.encode("utf-16-le") not in stored, text


def _trace_count(database: Path) -> int:
    conn = sqlite3.connect(database)
    try:
        return int(conn.execute("SELECT count(*) FROM trace_info").fetchone()[0])
    finally:
        conn.close()


def test_two_server_workers_log_every_query_and_never_write_the_bundle(
    champion: Champion, tmp_path: Path
) -> None:
    log_path = tmp_path / "queries.db"
    n = 60
    with model_server(champion, tmp_path, workers=2, **{QUERY_LOG_ENV: str(log_path)}) as url:
        def ask(i: int) -> int:
            status, body = post_json(f"{url}/invocations",
                                     request([f"honey bees {i}"], k=2, mode="hybrid"))
            assert status == 200, body
            return len(body["predictions"])

        with ThreadPoolExecutor(max_workers=16) as pool:
            hits = sum(pool.map(ask, range(n)))
        wait_for_rows(log_path, n)
    conn = sqlite3.connect(log_path)
    try:
        queries = conn.execute("SELECT query_text, metadata FROM queries").fetchall()
        retrievals = conn.execute("SELECT COUNT(*) FROM retrievals").fetchone()[0]
    finally:
        conn.close()
    assert sorted(q for q, _ in queries) == sorted(f"honey bees {i}" for i in range(n))
    assert retrievals == hits
    pids = {json.loads(m)["pid"] for _, m in queries}
    print(f"\nquery log rows written by {len(pids)} worker process(es)")
    assert 1 <= len(pids) <= 2


def logged_count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM queries").fetchone()[0])
    except sqlite3.OperationalError:  # the writer has created the file, not its tables yet
        return 0
    finally:
        conn.close()


def wait_for_rows(path: Path, n: int, *, timeout: float = 60.0) -> int:
    """The query log is written off the request path: rows land shortly after the answers."""
    deadline = time.monotonic() + timeout
    count = logged_count(path) if path.exists() else 0
    while count < n and time.monotonic() < deadline:
        time.sleep(0.1)
        count = logged_count(path) if path.exists() else 0
    return count


def test_a_write_locked_query_log_costs_no_request_and_no_row(
    champion: Champion, tmp_path: Path
) -> None:
    """Another writer (the retention VACUUM the docs recommend) holds the log's write lock:
    requests still answer at once, and their rows arrive once the lock is released."""
    log_path = tmp_path / "queries.db"
    with model_server(champion, tmp_path, **{QUERY_LOG_ENV: str(log_path)}) as url:
        status, body = post_json(f"{url}/invocations", request(["honey bees"], k=1, mode="bm25"))
        assert status == 200, body
        assert wait_for_rows(log_path, 1) == 1
        locker = sqlite3.connect(log_path, isolation_level=None, timeout=60)
        locker.execute("BEGIN IMMEDIATE")
        try:
            for i in range(4):
                # the timeout is a bound, far below the 30 s a blocked log write used to wait
                status, body = post_json(f"{url}/invocations",
                                         request([f"honey bees {i}", f"green tea {i}"], k=1,
                                                 mode="bm25"), timeout=15)
                assert status == 200, body
            assert logged_count(log_path) == 1  # queued in the server, not written yet
        finally:
            locker.execute("COMMIT")
            locker.close()
        assert wait_for_rows(log_path, 9) == 9


def test_an_ingest_logs_to_a_tracking_server_over_http_and_its_bundle_comes_back(
    tracking_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = copy_tracking_store(tracking_template, tmp_path)
    artifacts = tmp_path / "artifacts"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.chdir(tmp_path)
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    with server_process(args, health_url=f"{uri}/health", log_path=tmp_path / "server.log",
                        cwd=tmp_path, env=subprocess_env()):
        sources = write_corpus_files(tmp_path / "docs")
        store_path = tmp_path / "store"
        result = _cli_ingest(sources, store_path, uri, tmp_path)
        if result is None:  # the ingest command is not there: log a store built here
            build_store(store_path)
            with Store.open(store_path) as store:
                run_id = log_ingest_run(ingest_report([str(sources)], store=store), store=store,
                                        experiment="remote", tracking_uri=uri)
        else:
            run_id = result
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        assert run.data.tags[TAG_RUN_TYPE] == "ingest"
        assert run.data.metrics["documents_new"] == len(CORPUS)
        assert list(artifacts.rglob("manifest.json"))  # stored by the server, not by us

        bundle = download_bundle(run_id, tmp_path / "download", tracking_uri=uri)
        with Store.open(bundle, immutable=True, verify_files=True) as downloaded:
            assert downloaded.store_id == run.data.tags[TAG_STORE_ID]
            hits = downloaded.lexical_search("honey bees", k=1)
            assert hits[0].source_path.endswith("bees.md")

        # the same server holds the registry: log, register, alias, load and predict
        info = log_model(store_path, register="remote-rag", alias="champion",
                         experiment="remote", tracking_uri=uri)
        assert str(client.get_model_version_by_alias("remote-rag", "champion").version) == str(
            info.registered_model_version)
        mlflow.set_tracking_uri(uri)  # restored by _restore_tracking_uri
        model = mlflow.pyfunc.load_model("models:/remote-rag@champion")
        frame = model.predict({"query": "honey bees"}, params={"k": 1, "mode": "bm25"})
        mlflow.flush_trace_async_logging()  # the predict's trace goes to this server
        assert frame.iloc[0].source_path.endswith("bees.md")


def _cli_ingest(sources: Path, store: Path, uri: str, cwd: Path) -> str | None:
    """Run the real `mlflow-rag ingest` against the server; None if the command is missing."""
    import re
    import subprocess

    exe = str(helpers_mlflow.VENV_BIN / "mlflow-rag")
    env = subprocess_env(HF_HUB_OFFLINE="1")
    if subprocess.run([exe, "ingest", "--help"], capture_output=True, env=env,
                      timeout=120).returncode != 0:
        return None
    done = subprocess.run(
        [exe, "ingest", str(sources), "--store", str(store), "--embedder", "tfidf",
         "--experiment", "remote", "--tracking-uri", uri],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"logged ingest run (\w+)", done.stderr)
    assert match, done.stderr
    return match.group(1)
