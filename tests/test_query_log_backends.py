"""The served query log on either backend: a PostgreSQL store takes the logs of every replica
(``MLFLOW_RAG_QUERY_LOG=postgresql://...``), and a hit on a chunk deleted from the live store
since it was served keeps its query, not a dangling retrieval."""

from __future__ import annotations

from pathlib import Path

from mlflow_rag.search import Searcher
from mlflow_rag.serving_log import QueryLog
from mlflow_rag.store.store import Store
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
