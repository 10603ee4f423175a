"""Helpers of the MLflow tests: small real stores (tfidf vectors) and real server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mlflow_rag.store.checks import content_hash
from mlflow_rag.store.store import Store
from mlflow_rag.types import ChunkRecord, DocumentRecord, IngestReport, VectorBatch

VENV_BIN = Path(sys.executable).parent

# Small corpus with distinct topics, so that a query has one obvious best document.
CORPUS: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "cobol": ("Legacy modernization", [
        "Migrating COBOL mainframe applications to Java services on the cloud.",
        "Legacy modernization keeps business rules while replacing the mainframe.",
    ], {"country": "UK", "year": 2021}),
    "tea": ("Green tea", [
        "Green tea is brewed with water below boiling to avoid bitterness.",
        "Sencha and matcha are Japanese green teas rich in catechins.",
    ], {"country": "Japan", "year": 2019}),
    "bikes": ("Bicycle repair", [
        "Fixing a flat bicycle tyre needs tyre levers, a patch and a pump.",
        "Adjust the derailleur so the chain shifts cleanly between gears.",
    ], {"country": "Germany", "year": 2023}),
    "bees": ("Beekeeping", [
        "Honey bees build wax combs and store honey for the winter.",
        "A beekeeper inspects the hive for the queen and brood every week.",
    ], {"country": "Germany", "year": 2018}),
    "volcano": ("Volcanoes", [
        "Basaltic lava flows from shield volcanoes such as those on Hawaii.",
        "Explosive eruptions produce ash clouds that disrupt air traffic.",
    ], {"country": "Iceland", "year": 2010}),
    "chess": ("Chess openings", [
        "The Sicilian Defence answers the king pawn opening with the c-pawn.",
        "Castling early protects the king and connects the rooks.",
    ], {"country": "Russia", "year": 2015}),
}
PII_EMAIL = "alice.private@example.org"


def make_corpus_record(doc_id: str, chunks: Sequence[str], *, metadata: dict[str, Any] | None = None,
                       vectors: Any = None) -> DocumentRecord:
    """A Markdown-like document with one paragraph chunk per text (tfidf vectors if given)."""
    raw = "\n\n".join(chunks)
    records, start = [], 0
    for i, text in enumerate(chunks):
        records.append(ChunkRecord(
            id=f"{doc_id}#{i}", chunk_index=i, chunk_type="paragraph", text=text,
            start_char=start, end_char=start + len(text), token_count=len(text.split()),
            text_hash=content_hash(text), metadata={"position": i},
        ))
        start += len(text) + 2
    return DocumentRecord(
        id=doc_id, source_path=f"/data/{doc_id}.md", source_type="markdown",
        content_hash=content_hash(raw), raw_text=raw, chunks=tuple(records),
        vectors=(VectorBatch("tfidf", vectors),) if vectors is not None else (),
        metadata=metadata or {},
    )


def build_store(root: Path, *, corpus: dict[str, tuple[str, list[str], dict[str, Any]]] | None = None,
                with_vectors: bool = True) -> Path:
    """A store at ``root`` with the corpus; tfidf vectors (embedder "tfidf") unless told not.

    The ``cobol`` document carries a PII-tagged e-mail (``_pii``), hidden unless asked for.
    """
    from mlflow_rag.embed.registry import get_embedder

    corpus = corpus or CORPUS
    texts = [t for _, chunks, _ in corpus.values() for t in chunks]
    with Store.open(root, create=True) as store:
        embedder: Any = None
        if with_vectors:
            embedder = get_embedder("tfidf", dimension=8)
            embedder.fit(texts)
            store.ensure_model("tfidf", embedder.dimension, embedder="tfidf",
                               model_version=embedder.version)
            embedder.save(store.model_dir("tfidf"))
        records = []
        for doc_id, (title, chunks, metadata) in corpus.items():
            meta: dict[str, Any] = {"title": title, **metadata}
            if doc_id == "cobol":
                meta["_pii"] = {"owner_email": PII_EMAIL}
            vectors = embedder.embed(chunks).vectors if embedder is not None else None
            records.append(make_corpus_record(doc_id, chunks, metadata=meta, vectors=vectors))
        store.write(records)
    return root


def ingest_report(sources: Sequence[str], *, store: Store, **overrides: Any) -> IngestReport:
    """A report as the ingest pipeline makes one, describing the store built above."""
    stats = store.stats()
    values: dict[str, Any] = {
        "sources": tuple(sources), "source_digest": content_hash("|".join(sources)),
        "loader": "markdown", "chunker": {"name": "fixed", "size": 200, "overlap": 20},
        "embedder": "tfidf", "embedder_version": "tfidf-lsa:test", "dimension": 8,
        "index": {"kind": "flat", "params": {}},
        "documents_new": stats.documents, "chunks": stats.chunks,
        "vectors_embedded": stats.embeddings, "tokens": 123, "cost_usd": 0.0,
        "seconds": {"load": 0.01, "chunk": 0.02, "embed": 0.1, "store": 0.05},
        "store_generation": stats.generation, "store_bytes": stats.bytes_on_disk,
    }
    values.update(overrides)
    return IngestReport(**values)


# --------------------------------------------------------------------------- tracking stores


_TEMPLATE: Path | None = None


@pytest.fixture(scope="session")
def tracking_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite tracking database, made once: migrating a new one costs
    seconds, copying this one costs nothing."""
    from mlflow.tracking import MlflowClient

    global _TEMPLATE
    # Each test module imports this fixture under its own name, which makes pytest treat it
    # as one fixture per module; the cache makes it one database per session all the same.
    if _TEMPLATE is not None and _TEMPLATE.is_file():
        return _TEMPLATE
    directory = tmp_path_factory.mktemp("mlflow-template")
    path = directory / "mlruns.db"
    previous = Path.cwd()
    os.chdir(directory)  # the Default experiment's artifact root is taken from the cwd
    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
        client.search_experiments()
        client.search_registered_models()
    finally:
        os.chdir(previous)
    _TEMPLATE = path
    return path


@pytest.fixture
def tracking_uri(tracking_template: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private SQLite tracking store in tmp_path; the cwd is tmp_path too, so artifacts of
    new experiments land there, never in the repository."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    uri = copy_tracking_store(tracking_template, tmp_path)
    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
                "MLFLOW_RAG_QUERY_LOG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)  # later tests must not write into this tmp store


def write_query_rows(path: str, n: int, tag: str) -> None:
    """Target of a spawned process: ``n`` queries through the serving query log."""
    from mlflow_rag.serving import QueryLog

    log = QueryLog(path)
    for i in range(n):
        log.write(f"{tag} {i}", [], model_name=None, metadata={"i": i})
    log.close()


def copy_tracking_store(template: Path, directory: Path) -> str:
    target = directory / "mlruns.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def log_champion(root: Path, template: Path, *, register: str = "rag") -> tuple[str, Any, Path]:
    """A store in ``root``, logged as a model registered as ``register`` with alias champion,
    in a SQLite tracking store of its own. Returns (tracking URI, ModelInfo, store path)."""
    from mlflow_rag.tracking import log_model

    uri = copy_tracking_store(template, root)
    store = build_store(root / "store")
    previous = Path.cwd()
    os.chdir(root)  # the artifacts of the new experiment go under root/mlruns
    try:
        info = log_model(store, register=register, alias="champion", experiment="retriever",
                         tracking_uri=uri)
    finally:
        os.chdir(previous)
    return uri, info, store


def write_corpus_files(directory: Path) -> Path:
    """The corpus as Markdown files (a source for `mlflow-rag ingest`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for doc_id, (title, chunks, _) in CORPUS.items():
        text = f"# {title}\n\n" + "\n\n".join(chunks) + "\n"
        (directory / f"{doc_id}.md").write_text(text, encoding="utf-8")
    return directory


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child: this venv's bin first (mlflow runs `uvicorn`, `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(key, None)
    env.update(extra)
    return env


@contextlib.contextmanager
def server_process(args: Sequence[str], *, health_url: str, log_path: Path, cwd: Path,
                   env: dict[str, str], timeout: float = 120.0) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server in its own process group, poll ``health_url`` until it answers, and stop
    the whole group (the CLI and the uvicorn workers it spawned) on exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_until_up(health_url, proc, log_path, timeout=timeout)
            yield proc
        finally:
            stop_process_group(proc)


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log_path: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(delay)  # polling back-off, not a guess of how long start-up takes
        delay = min(delay * 2, 0.5)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{log_path.read_text(errors='replace')[-4000:]}")


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            # Servers here hold nothing unsaved (every request commits), so a short grace
            # period is enough; uvicorn would otherwise wait on idle keep-alive connections.
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # uvicorn workers may outlive the parent for a moment; the group id is ours alone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def post_json(url: str, payload: Any, *, timeout: float = 60.0) -> tuple[int, Any]:
    import json

    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", errors="replace")
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body
