"""Distributed ingestion: documents chunked, embedded and written from Spark partitions
(``local[2,3]``: two cores, a failed task retried) into a PostgreSQL store, with the store's
promises kept: the same documents, chunks and vectors as a single-process ingest, nothing
embedded again on a re-run, nothing duplicated or lost when a task fails after writing and
is retried, and tfidf refused until the store holds a fit (issue 14)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.errors import InvalidInput
from mlflow_rag.ingest import IngestOptions, ingest
from mlflow_rag.ingest_spark import FAIL_ONCE_ENV, ingest_spark
from mlflow_rag.search import Searcher
from mlflow_rag.store.store import Store
from tests.pg_cluster import PgCluster
from tests.spark_session import local_spark

pytestmark = [pytest.mark.spark, pytest.mark.postgres]

TOPICS = ["green tea brewing", "bicycle derailleur gears", "honey bees and wax combs",
          "volcano lava flows", "chess openings and castling", "COBOL mainframe migration"]


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # local[2,3]: two threads, and a failed task is tried up to 3 times (plain local[2] never
    # retries a task)
    yield from local_spark(tmp_path_factory.mktemp("spark"), master="local[2,3]")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(24):
        topic = TOPICS[i % len(TOPICS)]
        (folder / f"note-{i:02d}.md").write_text(
            f"# Note {i} on {topic}\n\n" + " ".join(f"{topic} detail {i}-{j}." for j in range(30))
            + "\n\nA second paragraph about " + topic + f" number {i}.\n")
    return folder


def contents(location: str) -> tuple[dict[str, str], list[str], int]:
    """(document id -> content hash, chunk ids, vectors of the model) of a store."""
    with Store.open(location, read_only=True) as store:
        documents = {row[0]: row[3] for row in store.backend.dump_rows("documents")}
        chunks = sorted(row[0] for row in store.backend.dump_rows("chunks"))
        vectors = store.stats().embeddings
    return documents, chunks, vectors


def test_a_spark_ingest_stores_what_one_process_stores_and_a_rerun_embeds_nothing(
        spark: Any, pg_cluster: PgCluster, corpus: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    options = IngestOptions(embedder="tfidf")
    single = pg_cluster.dsn(pg_cluster.new_database())
    distributed = pg_cluster.dsn(pg_cluster.new_database())
    sample = sorted(corpus.iterdir())[:6]
    for location in (single, distributed):  # the fit: a local ingest of a sample
        with Store.open(location, create=True) as store:
            ingest([str(p) for p in sample], store, options=options, progress=False)
    with Store.open(single) as store:
        ingest([str(corpus)], store, options=IngestOptions(embedder="tfidf", refit="never"),
               progress=False)
    report = ingest_spark([str(corpus)], store=distributed, options=options, spark=spark,
                          partitions=3)
    assert report.documents_new == 18 and report.documents_unchanged == 6
    assert contents(distributed) == contents(single)
    with Store.open(distributed, read_only=True) as store:
        hits = Searcher(store).search("honey bees wax combs", k=3, mode="dense")
        assert all("bees" in hit.text for hit in hits)
    again = ingest_spark([str(corpus)], store=distributed, options=options, spark=spark,
                         partitions=3)
    assert (again.documents_unchanged, again.vectors_embedded, again.documents_new) == (24, 0, 0)


def test_a_task_that_fails_after_writing_is_retried_without_duplicates_or_losses(
        spark: Any, pg_cluster: PgCluster, corpus: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    markers = tmp_path / "failed-once"
    markers.mkdir()
    monkeypatch.setenv(FAIL_ONCE_ENV, str(markers))
    location = pg_cluster.dsn(pg_cluster.new_database())
    with Store.open(location, create=True) as store:
        ingest([str(sorted(corpus.iterdir())[0])], store, options=IngestOptions(embedder="tfidf"),
               progress=False)
    report = ingest_spark([str(corpus)], store=location, options=IngestOptions(embedder="tfidf"),
                          spark=spark, partitions=3)
    failed = sorted(p.name for p in markers.iterdir())
    assert len(failed) == 3, failed  # every partition failed once after its writes committed
    documents, chunks, vectors = contents(location)
    assert len(documents) == 24
    assert len(chunks) == len(set(chunks)) and vectors == len(chunks)
    # the reports are the retries': each found its partition's documents stored by the
    # failed attempt (unchanged, nothing embedded again)
    assert (report.documents_new, report.documents_unchanged, report.vectors_embedded) == (0, 24, 0)


def test_tfidf_without_a_fit_and_a_folder_store_are_refused_in_one_line_writing_nothing(
        spark: Any, pg_cluster: PgCluster, corpus: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    location = pg_cluster.dsn(pg_cluster.new_database())
    with pytest.raises(InvalidInput, match="tfidf is fitted on the whole corpus"):
        ingest_spark([str(corpus)], store=location, options=IngestOptions(embedder="tfidf"),
                     spark=spark)
    assert contents(location)[0] == {}
    result = CliRunner().invoke(main, ["ingest", str(corpus), "--store", str(tmp_path / "s"),
                                       "--engine", "spark", "--embedder", "tfidf", "--no-track"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "needs a store in PostgreSQL" in result.output and str(tmp_path / "s") in result.output


def test_the_cli_ingests_on_spark_and_the_api_takes_a_dataframe_of_documents(
        spark: Any, pg_cluster: PgCluster, corpus: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    location = pg_cluster.dsn(pg_cluster.new_database())
    first = sorted(corpus.iterdir())[0]
    fit = CliRunner().invoke(main, ["ingest", str(first), "--store", location, "--embedder",
                                    "tfidf", "--no-track"])
    assert fit.exit_code == 0, fit.output
    result = CliRunner().invoke(main, ["ingest", str(corpus), "--store", location, "--engine",
                                       "spark", "--embedder", "tfidf", "--no-track", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["documents_new"] == 23 and report["documents_unchanged"] == 1
    frame = spark.createDataFrame(
        [(f"row-{i}", f"{topic} from a dataframe row {i}", json.dumps({"topic": topic}))
         for i, topic in enumerate(TOPICS)], ["id", "text", "metadata"])
    added = ingest_spark(frame, store=location, options=IngestOptions(embedder="tfidf"),
                         spark=spark, partitions=2)
    assert added.documents_new == len(TOPICS)
    with Store.open(location, read_only=True) as store:
        assert store.get_document("row-2").metadata["topic"] == TOPICS[2]
        assert store.stats().documents == 24 + len(TOPICS)
