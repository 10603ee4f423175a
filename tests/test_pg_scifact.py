"""Hybrid search quality on PostgreSQL: nDCG@10 on a slice of SciFact's training claims within
0.01 of the SQLite store it was copied from (issue 13). The full figure:
``python benchmarks/pg_scifact.py`` (benchmarks/RESULTS.md, "PostgreSQL")."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.pg_scifact import compare
from tests.pg_cluster import PgCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

MAX_DOCS = 600  # ~100 claims judged against them; ~1 minute with TF-IDF


def test_hybrid_ndcg_on_postgres_within_001_of_sqlite(
    shared_data: Path, pg_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = shared_data / "scifact-train"
    if not (dataset / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {dataset}")
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    figures = compare(dataset, pg_cluster.dsn(pg_cluster.new_database("scifact")), tmp_path,
                      max_docs=MAX_DOCS, progress=False)
    sqlite, postgres = figures["sqlite"], figures["postgres"]
    print(f"{figures['queries']} claims: hybrid nDCG@10 SQLite {sqlite['hybrid']:.4f} PostgreSQL "
          f"{postgres['hybrid']:.4f}; BM25 SQLite {sqlite['bm25']:.4f} PostgreSQL "
          f"{postgres['bm25']:.4f} (difference {figures['bm25_difference']:+.4f}); top-10 lists "
          f"differing: {figures['top10_lists_differing']}")
    assert figures["queries"] >= 50
    assert sqlite["hybrid"] > 0.3  # the slice is a real retrieval task, not an empty one
    assert abs(figures["hybrid_difference"]) <= 0.01
