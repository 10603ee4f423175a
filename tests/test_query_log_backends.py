"""The served query log on either backend: a PostgreSQL store takes the logs of every replica
(``MLFLOW_RAG_QUERY_LOG=postgresql://...``), and a hit on a chunk deleted from the live store
since it was served keeps its query, not a dangling retrieval."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_rag.errors import DocumentNotFound, InvalidInput
from mlflow_rag.search import Searcher
from mlflow_rag.serving_log import QueryLog, ServedAnswer
from mlflow_rag.store.answer_log import GenerationStats
from mlflow_rag.store.store import Store
from mlflow_rag.store.tables import new_id
from tests.conftest import make_record


def test_served_queries_are_logged_into_the_store_and_hits_on_deleted_chunks_are_dropped(
        store_location: str, tmp_path: Path) -> None:
    with Store.open(store_location, create=True) as store:
        store.write([make_record("kept", ["quantum knitting patterns", "wool and yarn"]),
                     make_record("gone", ["quantum knitting for beginners"])])
        hits = Searcher(store).search("quantum knitting", k=3, mode="bm25")
        assert {h.document_id for h in hits} == {"kept", "gone"}
        store.delete("gone")
    # a SQLite store's served log is a file of its own; a PostgreSQL store logs into itself
    log_location = (str(tmp_path / "queries.db") if not store_location.startswith("postgresql")
                    else store_location)
    log = QueryLog(log_location)
    try:
        log.write("quantum knitting", hits, model_name=None, metadata={"replica": "a"})
        log.write("wool", hits[:1], model_name=None, metadata={"replica": "b"})
        assert log.flush(timeout=60)
        assert log.stats()["written"] == 2 and log.stats()["dropped"] == 0
    finally:
        log.close()
    if not store_location.startswith("postgresql"):
        return  # the SQLite query log file is covered by tests/test_pyfunc.py
    with Store.open(store_location, read_only=True) as store:
        stats = store.stats()
        kept_chunks = {h.chunk_id for h in hits if h.document_id == "kept"}
        rows = store.backend.dump_rows("retrievals")
        assert stats.queries == 2
        assert {row[2] for row in rows} == kept_chunks  # chunk_id column; "gone" dropped



def test_served_answers_and_feedback_on_them_are_logged_into_either_store(
        store_location: str) -> None:
    """The served RAG model's answers are generations rows of the log (here the store's own
    database, SQLite or PostgreSQL), so feedback, report and lineage find them."""
    with Store.open(store_location, create=True) as store:
        store.write([make_record("kept", ["quantum knitting patterns", "wool and yarn"])])
        hits = Searcher(store).search("quantum knitting", k=2, mode="bm25")
    postgres = store_location.startswith("postgresql")
    log = QueryLog(store_location if postgres else str(Path(store_location) / "metadata.db"))
    output_id = new_id()
    stats = GenerationStats(generator="extractive", params={}, prompt_name=None,
                            prompt_version=None, input_tokens=12, output_tokens=5,
                            cost_usd=0.0, embed_ms=0.1, retrieve_ms=0.2, generate_ms=0.3,
                            metadata={})
    try:
        log.write("knitting from bob@example.org?", hits, model_name=None,
                  metadata={"answered": True, "served_answer": True},
                  answer=ServedAnswer(output_id=output_id, stats=stats, trace_id="tr-1",
                                      citations=((hits[0].chunk_id, "kept"),),
                                      answer_text="mail bob@example.org", user_id="u1"))
        stored, trace_id = log.feedback(output_id, kind="thumbs", value=1.0, comment=None,
                                        user_id="u2")  # the queue is written first
        assert trace_id == "tr-1" and stored.kind == "thumbs"
        with pytest.raises(DocumentNotFound, match="'nope'"):
            log.feedback("nope", kind="score", value=1.0, comment=None, user_id=None)
        with pytest.raises(InvalidInput, match=r"thumbs feedback is 1 \(up\) or 0 \(down\), got 3"):
            log.feedback(output_id, kind="thumbs", value=3, comment=None, user_id=None)
    finally:
        log.close()
    with Store.open(store_location, read_only=True) as store:
        record = store.logs.answer_record(output_id)
    assert record.stats.input_tokens == 12 and record.trace_id == "tr-1"
    assert record.citations == ((1, hits[0].chunk_id, "kept"),)
    assert record.answer_text == "mail <email>" and record.user_id == "u1"
    assert [(f.kind, f.value, f.user_id) for f in record.feedback] == [("thumbs", 1.0, "u2")]


def test_log_model_live_on_a_folder_store_is_one_line_naming_the_store_and_changes_nothing(
        tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mlflow_rag.cli import main
    from tests.helpers_mlflow import build_store

    root = build_store(tmp_path / "store")

    def files() -> list[tuple[str, int]]:  # SQLite's -wal/-shm come and go with readers
        return sorted((p.name, p.stat().st_size) for p in root.rglob("*")
                      if p.is_file() and not p.name.endswith(("-wal", "-shm")))

    before = files()
    result = CliRunner().invoke(main, ["log-model", "--store", str(root), "--live",
                                       "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"])
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1, message
    assert "--live needs a store in a database" in message and str(root) in message
    assert files() == before
