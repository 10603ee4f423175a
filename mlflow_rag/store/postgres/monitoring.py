"""The SQL of ``mlflow-rag report`` in PostgreSQL (read-only aggregates of the query log and
the answer tables), mixed into :class:`~mlflow_rag.store.postgres.backend.PostgresBackend`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mlflow_rag.store.postgres import guard


@guard.guarded  # its methods fail as the backend's do: one line when the server is gone
class PostgresMonitoring:
    """Backend methods a report reads. The query log streams through a server-side cursor;
    the other statements' rows are few (answers, feedback) or one per document."""

    @property
    def conn(self) -> Any:
        raise NotImplementedError

    def monitoring_query_rows(self, since: str) -> Iterator[tuple[str, str, str, str, int]]:
        # A server-side cursor (the report reads in a transaction): the log streams in
        # batches instead of arriving whole (peak RSS 159 -> 100 MB at 100K queries).
        with self.conn.cursor(name="mlflow_rag_report_queries") as cur:
            cur.itersize = 2000
            cur.execute(
                "SELECT q.id, q.timestamp, q.query_text, q.metadata, "
                "(SELECT COUNT(*) FROM retrievals r WHERE r.query_id = q.id) "
                "FROM queries q WHERE q.timestamp >= %s ORDER BY q.timestamp", (since,))
            for r in cur:
                yield r[0], r[1], r[2], r[3], int(r[4])

    def monitoring_generation_rows(self, since: str) -> Iterator[tuple[Any, ...]]:
        rows = self.conn.execute(
            "SELECT id, query_id, timestamp, generator, input_tokens, output_tokens, "
            "cost_usd, embed_ms, retrieve_ms, generate_ms FROM generations "
            "WHERE timestamp >= %s ORDER BY timestamp", (since,)).fetchall()
        return iter([tuple(r) for r in rows])

    def monitoring_feedback_rows(self, since: str) -> Iterator[tuple[str, str, str, float]]:
        rows = self.conn.execute(
            "SELECT g.query_id, f.timestamp, f.kind, f.value FROM feedback f "
            "JOIN generations g ON g.id = f.generation_id WHERE f.timestamp >= %s "
            "ORDER BY f.timestamp", (since,)).fetchall()
        return iter([(r[0], r[1], r[2], float(r[3])) for r in rows])

    def monitoring_document_rows(self, since: str) -> Iterator[tuple[str, str, int]]:
        # Counted per document before the join, as in SQLite (where the other order was 4x
        # slower at 100K queries).
        rows = self.conn.execute(
            "SELECT d.id, d.source_path, COALESCE(x.n, 0) FROM documents d LEFT JOIN "
            "(SELECT c.document_id AS document_id, COUNT(DISTINCT r.query_id) AS n "
            "FROM retrievals r JOIN chunks c ON c.id = r.chunk_id "
            "JOIN queries q ON q.id = r.query_id WHERE q.timestamp >= %s "
            "GROUP BY c.document_id) x ON x.document_id = d.id ORDER BY d.id",
            (since,)).fetchall()
        return iter([(r[0], r[1], int(r[2])) for r in rows])
