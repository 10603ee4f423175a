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
        for row in self.conn.execute(
                "SELECT d.id, d.source_path, COUNT(DISTINCT x.query_id) FROM documents d "
                "LEFT JOIN (SELECT c.document_id AS document_id, r.query_id AS query_id "
                "FROM retrievals r JOIN queries q ON q.id = r.query_id "
                "JOIN chunks c ON c.id = r.chunk_id WHERE q.timestamp >= ?) x "
                "ON x.document_id = d.id GROUP BY d.id, d.source_path ORDER BY d.id", (since,)):
            yield row[0], row[1], int(row[2])
