"""The SQL of ``mlflow-rag report`` in SQLite (read-only aggregates of the query log and the
answer tables), mixed into :class:`~mlflow_rag.store.sqlite.backend.SqliteBackend`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any


class SqliteMonitoring:
    """Backend methods a report reads; each a generator, so a large log streams."""

    @property
    def conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def monitoring_query_rows(self, since: str) -> Iterator[tuple[str, str, str, str, int]]:
        # Counted per query through idx_retrievals_query: no join holds every retrieval.
        for row in self.conn.execute(
                "SELECT q.id, q.timestamp, q.query_text, q.metadata, "
                "(SELECT COUNT(*) FROM retrievals r WHERE r.query_id = q.id) "
                "FROM queries q WHERE q.timestamp >= ? ORDER BY q.timestamp", (since,)):
            yield row[0], row[1], row[2], row[3], int(row[4])

    def monitoring_generation_rows(self, since: str) -> Iterator[tuple[Any, ...]]:
        for row in self.conn.execute(
                "SELECT id, query_id, timestamp, generator, input_tokens, output_tokens, "
                "cost_usd, embed_ms, retrieve_ms, generate_ms FROM generations "
                "WHERE timestamp >= ? ORDER BY timestamp", (since,)):
            yield tuple(row)

    def monitoring_feedback_rows(self, since: str) -> Iterator[tuple[str, str, str, float]]:
        for row in self.conn.execute(
                "SELECT g.query_id, f.timestamp, f.kind, f.value FROM feedback f "
                "JOIN generations g ON g.id = f.generation_id WHERE f.timestamp >= ? "
                "ORDER BY f.timestamp", (since,)):
            yield row[0], row[1], row[2], float(row[3])

    def monitoring_document_rows(self, since: str) -> Iterator[tuple[str, str, int]]:
        # Counted per document before the join: joining every retrieval to the documents
        # first made SQLite materialise them all (4.6 s against 1.1 s at 100K queries).
        for row in self.conn.execute(
                "SELECT d.id, d.source_path, COALESCE(x.n, 0) FROM documents d LEFT JOIN "
                "(SELECT c.document_id AS document_id, COUNT(DISTINCT r.query_id) AS n "
                "FROM retrievals r JOIN chunks c ON c.id = r.chunk_id "
                "JOIN queries q ON q.id = r.query_id WHERE q.timestamp >= ? "
                "GROUP BY c.document_id) x ON x.document_id = d.id ORDER BY d.id", (since,)):
            yield row[0], row[1], int(row[2])
